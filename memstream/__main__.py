"""`python -m memstream ...`: see memstream/cli.py."""

import sys

from .cli import main

sys.exit(main())
