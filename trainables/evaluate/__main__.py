"""python -m trainables.evaluate MODEL_DIR: score an exported model (trainables.evaluate.cli)."""

import sys

from trainables.evaluate.cli import main

sys.exit(main())
