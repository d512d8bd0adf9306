"""``python -m search.cli``: what the ``search`` command runs."""

import sys

from search.cli import main

sys.exit(main())
