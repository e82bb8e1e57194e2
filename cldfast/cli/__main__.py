"""`python -m cldfast.cli` is the `cldfast` command."""
from . import main

raise SystemExit(main())
