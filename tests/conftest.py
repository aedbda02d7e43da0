"""Suite-wide environment (offline, no telemetry, no downloads) and the one digits sweep that
several modules read.

`digits_sweep` runs `python tune/run.py` once per session: 4 tiny compress_only digits trials,
2 at once, W&B offline, with dummy W&B and Hugging Face tokens in its environment. The
end-to-end sweep tests (tests/tune/test_sweep.py) check its study and reports, the secret
hygiene tests (tests/test_hygiene.py) search everything it wrote for the tokens, and the
job-flow test (tests/tune/test_cluster.py) reuses its stage cache. One sweep instead of three
saves a Ray start, two Ray Train stages and the W&B runs each time (see README "Tests").
"""

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from _digits_sweep import SWEEP_SECRETS, TINY_SWEEP, run_cli

# Set before any test imports ray, wandb or huggingface_hub.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def digits_sweep(tmp_path_factory):
    """Run the session's 4-trial digits sweep (name "four"); yield its process, results root, Ray tmp dir."""
    results = tmp_path_factory.mktemp("digits-sweep")
    ray_tmp = Path(tempfile.mkdtemp(prefix="vss", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, **SWEEP_SECRETS, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0",
           "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = run_cli(env, "--results-dir", str(results), "--name", "four", "--num-samples", "4",
                   "--max-concurrent", "2", "--wandb", *TINY_SWEEP)
    yield SimpleNamespace(proc=proc, results=results, ray_tmp=ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
