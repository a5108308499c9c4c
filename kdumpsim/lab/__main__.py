"""`python -m kdumpsim.lab` (the same as `kdumpsim lab`); see kdumpsim.lab.commands."""

import sys

from kdumpsim.lab.commands import main

sys.exit(main())
