"""Which Ray processes on this machine this test session started.

Every Ray the suite starts keeps its session folder under a temporary folder the suite made
and registered here: a `ray_tmp_dir()` (a CLI run's RAY_TMPDIR, a `ray start --temp-dir`, the
fault cluster's, the suite's default RAY_TMPDIR) or pytest's basetemp (`ray.init(_temp_dir=
tmp_path)`). A Ray process names that folder in its command line, or holds its log files open
there once it has retitled itself ("ray::DashboardAgent"), so a process counts as the suite's
when one of those paths lies under a registered folder. Another test run's or sweep's Ray on
the same machine is never counted. (An environment variable would not do: a retitled agent's
/proc/<pid>/environ reads as zeros.)
"""

import os
import tempfile
from pathlib import Path

import psutil

# A Ray process's command line: a worker or agent retitles itself "ray::Name"; raylet,
# gcs_server and the dashboard run from Ray's package folder.
RAY_PROCESS_MARKS = ("ray::", "/site-packages/ray/")
_ROOTS: list[str] = []


def register_root(folder: str | os.PathLike) -> None:
    """Count Ray processes whose session folder lies under `folder` as this session's."""
    _ROOTS.append(str(Path(folder).resolve()).rstrip(os.sep) + os.sep)


def ray_tmp_dir(prefix: str) -> Path:
    """Return a new, registered folder for a Ray's temporary files (short: Ray's socket paths must
    stay under 108 characters)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    register_root(folder)
    return folder


def _paths_of(proc: psutil.Process, cmdline: str) -> list[str]:
    try:
        return [cmdline, *(f.path for f in proc.open_files())]
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return [cmdline]  # another user's process, or gone


def ray_processes() -> dict[int, tuple[int, str]]:
    """This session's Ray processes: pid -> (parent pid, command line)."""
    found = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or ())
        if not any(mark in line for mark in RAY_PROCESS_MARKS):
            continue
        if any(root in path for path in _paths_of(proc, line) for root in _ROOTS):
            found[proc.info["pid"]] = (proc.info["ppid"], line.split("  ")[0][:100])
    return found
