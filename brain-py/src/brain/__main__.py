"""``python -m brain`` is the ``brain`` command."""

import sys

from .cli import main

sys.exit(main())
