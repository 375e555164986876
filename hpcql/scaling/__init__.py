"""Scaling studies: runner (hpcql scale), tables and plots, alpha-beta projection."""
