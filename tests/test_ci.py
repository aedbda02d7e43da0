"""`.ci/run` refuses, in one line and before it installs anything, an interpreter other than the lock's Python.

Every case passes `--check`, which stops after the interpreter check, so a check that wrongly
passes ends the test instead of installing the project and running the suite.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The lock's header line: "#    bash requirements/lock.sh  # python 3.11, linux x86_64, ..."
LOCK_PYTHON = re.search(r"^#.*\bpython (\d+\.\d+)\b", (REPO / "requirements" / "lock.txt").read_text(),
                        re.MULTILINE).group(1)


def _check(python: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / ".ci" / "run"), "--check"], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": python})


@pytest.mark.parametrize("version_output, said", [("echo 3.12", "is 3.12"), ("exit 1", "is not a Python")])
def test_ci_refuses_another_python_in_one_line(tmp_path, version_output, said):
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{version_output}\n")
    fake.chmod(0o755)
    proc = _check(str(fake))
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f".ci/run: needs Python {LOCK_PYTHON} (requirements/lock.txt is resolved for it); ")
    assert f"{fake} {said}" in line


@pytest.mark.skipif("%d.%d" % sys.version_info[:2] != LOCK_PYTHON, reason="runs on the lock's Python")
def test_ci_accepts_the_locks_python():
    proc = _check(sys.executable)
    assert proc.returncode == 0 and proc.stdout == f".ci/run: Python {LOCK_PYTHON} at {sys.executable}\n"
