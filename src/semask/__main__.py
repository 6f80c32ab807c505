"""`python -m semask ...` (also what `torchrun -m semask train ...` runs)."""

import sys

from .cli import main

sys.exit(main())
