"""The seed configuration every sweep evaluates first, as a reference point."""

from types import MappingProxyType

# The hand-tuned starting point: energy thresholds for heads / MLP / SVD, no token
# pruning, no prehab. The fine-tune method is not part of it; the preset supplies it.
SEED_CONFIG = MappingProxyType(
    {
        "compress.tau_heads": 0.89,
        "compress.tau_mlp": 0.975,
        "compress.tau_svd": 0.975,
        "compress.svd_space": "raw",
        "tokens.r_max": 0.0,
        "tokens.alpha": 1.0,
        "prehab.lambda": 0.0,
    }
)
