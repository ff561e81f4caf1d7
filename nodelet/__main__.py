"""``python -m nodelet``."""

import sys

from nodelet.cli import main

sys.exit(main())
