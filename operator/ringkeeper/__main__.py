"""`python -m ringkeeper ...` runs the same command as the console script."""

import sys

from .cli.main import main

sys.exit(main())
