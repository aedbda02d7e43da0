"""The session's shared digits sweep: its CLI arguments and how tests run `python tune/run.py`.

The fixture itself (`digits_sweep`) is in tests/conftest.py.
"""

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
RUN = str(REPO / "tune" / "run.py")
# Dummy tokens: no file or log the sweep writes may contain them (tests/test_hygiene.py).
SWEEP_SECRETS = {"WANDB_API_KEY": "dummy-wandb-secret-123", "HF_TOKEN": "hf_dummysecret456"}
# One pretrain and one fine-tune epoch on a few hundred digits, cheap latency.
TINY_SWEEP = ["--space", "compress_only", "--set", "pretrain.epochs=1", "--set", "finetune.epochs=1",
              "--set", "data.train_limit=300", "--set", "data.val_limit=120",
              "--set", "eval.latency_repeats=3", "--set", "eval.latency_rounds=1"]


@dataclass
class StartedCli:
    """A `python tune/run.py` process in its own process group, its output going to anonymous
    files: an undrained pipe would stall it while the test awaits another process."""

    proc: subprocess.Popen
    out: IO[str]
    err: IO[str]


def start_cli(env: dict, *args: str, cwd: Path = REPO.parent) -> StartedCli:
    """Start `python tune/run.py ARGS`; finish_cli waits for it."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, RUN, *args], stdout=out, stderr=err, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    return StartedCli(proc, out, err)


def stop_cli(started: StartedCli) -> None:
    """SIGKILL a started CLI's process group (the CLI if still running, and what is left of its Ray)."""
    try:
        os.killpg(started.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    started.proc.wait()


def finish_cli(started: StartedCli, timeout: float = 540) -> subprocess.CompletedProcess:
    """Wait for a started CLI, kill what is left of its process group (its Ray), return its outcome."""
    try:
        started.proc.wait(timeout=timeout)
    finally:
        stop_cli(started)
    texts = []
    for handle in (started.out, started.err):
        handle.seek(0)
        texts.append(handle.read())
        handle.close()
    return subprocess.CompletedProcess(started.proc.args, started.proc.returncode, *texts)


def run_cli(env: dict, *args: str, timeout: float = 540) -> subprocess.CompletedProcess:
    """Run `python tune/run.py ARGS` in its own process group; kill what is left of it (its Ray) after."""
    return finish_cli(start_cli(env, *args), timeout)
