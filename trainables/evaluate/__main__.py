"""python -m trainables.evaluate MODEL_DIR: score an exported model (trainables.evaluate.evaluation.main)."""

import sys

from trainables.evaluate.evaluation import main

sys.exit(main())
