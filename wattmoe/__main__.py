"""`python -m wattmoe` runs the CLI."""

from __future__ import annotations

import sys

from wattmoe.cli import main

sys.exit(main())
