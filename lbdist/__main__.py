"""`python -m lbdist ...`: the same command line as `lbdist ...`."""
import sys

from .cli import main

sys.exit(main())
