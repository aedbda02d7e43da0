"""The cheap parameters: thresholds, head / MLP importance and allocation, SVD space, token pruning, quantization.

The fine-tune method, LoRA rank and prehab lambda come from the preset, so every trial
after the first hits the fine-tune (and prehab) cache: the fastest sweep there is.
Its rows are the default space's.
"""

from search_spaces import default

TABLE = default.TABLE.only((
    "compress.tau_heads", "compress.tau_mlp", "compress.importance", "compress.allocation",
    "compress.tau_svd", "compress.svd_space",
    "tokens.enabled", "tokens.r_max", "tokens.alpha", "compress.quant", "tokens.fuse",
))

space = TABLE.suggest
