"""python -m trainables.data {download, digits, check}: the data commands (trainables.data.cli)."""

import sys

from trainables.data.cli import main

sys.exit(main())
