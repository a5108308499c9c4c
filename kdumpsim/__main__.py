"""`python -m kdumpsim` is `kdumpsim`."""

import sys

from kdumpsim.cli import main

sys.exit(main())
