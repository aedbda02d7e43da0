"""The leak guard (tests/conftest.py) counts only Ray processes whose folders this session made."""

import shutil
import subprocess
import sys

from _ray_guard import ray_processes, ray_tmp_dir


def _ray_lookalike(session_dir: str) -> subprocess.Popen:
    """Start an idle process whose command line reads like a raylet's in Ray's package folder."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "/site-packages/ray/core/src/ray/raylet/raylet", f"--session_dir={session_dir}"])


def test_the_guard_counts_this_sessions_ray_processes_and_not_another_runs(tmp_path):
    folder = ray_tmp_dir("vsg")
    ours = _ray_lookalike(f"{folder}/ray/session_1")
    theirs = _ray_lookalike("/tmp/ray/session_2")  # Ray's default folder: another run's
    beside = _ray_lookalike(f"{tmp_path.parent}x/ray/session_3")  # a sibling whose name extends ours
    try:
        found = ray_processes()
        assert ours.pid in found
        assert theirs.pid not in found and beside.pid not in found
    finally:
        for proc in (ours, theirs, beside):
            proc.kill()
            proc.wait()
        shutil.rmtree(folder)
