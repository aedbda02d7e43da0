"""A single fixed point: the seed configuration, e.g. to measure run-to-run noise.

Each value is a one-choice categorical, so Optuna records it as a parameter and
optuna-dashboard shows it; the fine-tune method comes from the preset.
"""

from search_spaces._seed import SEED_CONFIG
from search_spaces._table import Param, Table, categorical

TABLE = Table(tuple(Param(name, categorical(value), value) for name, value in SEED_CONFIG.items()))

space = TABLE.suggest
