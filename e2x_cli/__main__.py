"""``python -m e2x_cli ...`` is ``e2x ...``."""

import sys

from .main import main

sys.exit(main())
