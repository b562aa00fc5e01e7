"""``python -m pullwake``: the same command line as the ``pullwake`` script."""

import sys

from .cli import main

sys.exit(main())
