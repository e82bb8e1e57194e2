"""`python -m cldfast` is the `cldfast` command (and what torchrun starts)."""
from .cli import main

raise SystemExit(main())
