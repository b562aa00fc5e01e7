"""``python -m pullwake``: the same command line as the ``pullwake`` script."""

import sys

from pullwake.cli.main import main

sys.exit(main())
