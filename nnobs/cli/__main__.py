"""python -m nnobs.cli: the nnobs command."""

import sys

from nnobs.cli.main import main

sys.exit(main())
