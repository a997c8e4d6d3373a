"""`python -m busseg` runs the CLI (also under torchrun)."""

import sys

from busseg.cli import main

sys.exit(main())
