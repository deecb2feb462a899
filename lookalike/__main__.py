"""`python -m lookalike` is the `lookalike` command."""

import sys

from lookalike.cli import main

sys.exit(main())
