"""``python -m pytest_heavy.cli``: the ``pytest-heavy`` command without its console script."""

import sys

from . import main

sys.exit(main())
