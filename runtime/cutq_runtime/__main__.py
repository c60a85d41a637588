"""Entry point for `python -m cutq_runtime`."""

import sys

from .cli import main

sys.exit(main())
