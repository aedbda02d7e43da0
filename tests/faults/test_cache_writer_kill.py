"""A cache writer SIGKILLed while publishing a fine-tune entry: nobody loads the partial entry,
and the trial waiting for it recomputes it.

Two trials with the same configuration run as separate processes on the shared results
root. The writer takes the fine-tune's lease and is frozen (SIGSTOP) until the second
trial is waiting on that lease; then it resumes, finishes training, writes the entry's
files and manifest into its staging folder and is killed at the rename that would publish
it. The waiting trial must see the owner is gone, take over, clear the dead writer's
staging folder and publish a fresh entry.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _faultkit import TINY, wait_for
from trainables.cache import MANIFEST_NAME, StageCache

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

TRIAL = Path(__file__).with_name("_trial_proc.py")
# The fine-tune of test_driver_kill's sweep, computed here on local disk (that sweep's results are on S3).
CONFIG = {**TINY, "finetune.epochs": 2, "finetune.lr": 1e-3}
READER_WAIT_S = 45  # a dead same-host owner should be noticed within one poll (2 s)


def _trial(results: Path, log: Path, *extra: str) -> subprocess.Popen:
    sets = [f"{k}={v}" for k, v in CONFIG.items()]
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, str(TRIAL), str(results), *extra, *sets],
                                stdout=subprocess.PIPE, stderr=handle, text=True)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


@pytest.fixture(scope="module")
def killed_writer(fault_cluster, tmp_path_factory):
    """Run the writer (killed at publish) and the waiting reader; return what they left."""
    results, logs = fault_cluster.results, tmp_path_factory.mktemp("cache-writer-logs")
    finetune_dir = results / "cache" / "finetune"
    known_leases = set(finetune_dir.glob("*.lease"))
    writer = _trial(results, logs / "writer.log", "--kill-at-publish", "finetune")
    reader = None
    try:
        lease = wait_for(lambda: [p for p in finetune_dir.glob("*.lease") if p not in known_leases],
                         180, "the writer's fine-tune lease", writer)[0]
        writer.send_signal(signal.SIGSTOP)
        reader = _trial(results, logs / "reader.log", "--cache-wait-s", str(READER_WAIT_S))
        wait_for(lambda: "waiting for finetune/" in _text(logs / "reader.log"), 120,
                 "the reader to wait on the writer's lease", reader)
        writer.send_signal(signal.SIGCONT)
        writer_rc = writer.wait(timeout=180)
        key = lease.name.removesuffix(".lease")
        entry = finetune_dir / key
        seen_at_death = {"entry_exists": entry.exists(),
                         "get": StageCache(results).get("finetune", key)}
        reader_out, _ = reader.communicate(timeout=READER_WAIT_S + 120)
    finally:
        for proc in (writer, reader):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"writer_rc": writer_rc, "reader_rc": reader.returncode, "reader_out": reader_out,
            "writer_log": _text(logs / "writer.log"), "reader_log": _text(logs / "reader.log"),
            "key": key, "entry": entry, **seen_at_death}


def test_writer_died_at_the_publishing_rename_with_a_full_staging_folder(killed_writer):
    assert killed_writer["writer_rc"] == -signal.SIGKILL
    marker = [line for line in killed_writer["writer_log"].splitlines()
              if line.startswith("KILLED-AT-PUBLISH")]
    assert len(marker) == 1
    files = marker[0].split()[3].split(",")
    assert MANIFEST_NAME in files and "history.json" in files and len(files) > 2


def test_unpublished_entry_is_invisible_to_readers(killed_writer):
    assert not killed_writer["entry_exists"] and killed_writer["get"] is None


def test_waiting_trial_takes_over_the_dead_writers_lease(killed_writer):
    assert killed_writer["reader_rc"] == 0, killed_writer["reader_log"][-3000:]
    assert "breaking stale lease" in killed_writer["reader_log"]


def test_waiting_trial_recomputes_the_entry(killed_writer):
    metrics = json.loads(killed_writer["reader_out"].strip().splitlines()[-1])
    assert metrics["cache_hit_finetune"] is False and metrics["cache_hit_pretrain"] is True


def test_dead_writers_staging_folder_is_removed(killed_writer):
    leftovers = list(killed_writer["entry"].parent.glob(f"{killed_writer['key']}.staging-*"))
    assert leftovers == [] and "left by a dead writer" in killed_writer["reader_log"]


def test_recomputed_entry_verifies_against_its_manifest(fault_cluster, killed_writer):
    path = StageCache(fault_cluster.results).get("finetune", killed_writer["key"])
    assert path is not None and (path / "history.json").is_file()
    assert not (killed_writer["entry"].parent / f"{killed_writer['key']}.lease").exists()
