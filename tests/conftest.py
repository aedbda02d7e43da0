"""Suite-wide environment: offline, no telemetry, no downloads; slow suites reported by name."""

import os

# Set before any test imports ray, wandb or huggingface_hub.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
