"""`python -m evq` runs the CLI."""

from .cli import main

raise SystemExit(main())
