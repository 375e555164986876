"""SLURM batch jobs: job-script templates (``hpcql/templates/``), rendering and ``hpcql submit``."""
