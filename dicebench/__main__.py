"""``python -m dicebench``: the ``dicebench`` command."""

import sys

from . import main

sys.exit(main())
