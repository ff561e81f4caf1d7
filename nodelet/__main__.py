"""``python -m nodelet``."""

import sys

from nodelet.cli.main import main

sys.exit(main())
