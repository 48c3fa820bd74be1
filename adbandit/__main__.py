"""``python -m adbandit``: the ``adbandit`` command."""

import sys

from adbandit.cli import main

sys.exit(main())
