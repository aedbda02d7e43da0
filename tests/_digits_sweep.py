"""The session's shared digits sweep: its CLI arguments and how tests run `python tune/run.py`.

The fixture itself (`digits_sweep`) is in tests/conftest.py.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = str(REPO / "tune" / "run.py")
# Dummy tokens: no file or log the sweep writes may contain them (tests/test_hygiene.py).
SWEEP_SECRETS = {"WANDB_API_KEY": "dummy-wandb-secret-123", "HF_TOKEN": "hf_dummysecret456"}
# One pretrain and one fine-tune epoch on a few hundred digits, cheap latency.
TINY_SWEEP = ["--space", "compress_only", "--set", "pretrain.epochs=1", "--set", "finetune.epochs=1",
              "--set", "data.train_limit=300", "--set", "data.val_limit=120",
              "--set", "eval.latency_repeats=3", "--set", "eval.latency_rounds=1"]


def run_cli(env: dict, *args: str, timeout: float = 540) -> subprocess.CompletedProcess:
    """Run `python tune/run.py ARGS` in its own process group; kill what is left of it (its Ray) after."""
    proc = subprocess.Popen([sys.executable, RUN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO.parent, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
