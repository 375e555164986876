"""`python -m hpcql` entry point."""

from hpcql.cli import main

raise SystemExit(main())
