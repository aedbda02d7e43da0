"""Helpers of the fault-injection suite: the cluster handle, CLI runs and what they leave on disk.

The cluster itself is started by the session fixture in conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import psutil
import pytest

from trainables.storage import results_location

REPO = Path(__file__).resolve().parents[2]
RUN = str(REPO / "tune" / "run.py")
WORKER_CPUS = 2

# Tiny digits trials: one pretrain epoch, a few small fine-tune epochs, cheap latency.
TINY = {"pretrain.epochs": 1, "data.train_limit": 128, "data.val_limit": 64,
        "eval.latency_repeats": 3, "eval.latency_warmup": 1,
        "eval.latency_rounds": 1}


def cli_sets(overrides: dict) -> list[str]:
    """Return `--set key=value` arguments for the CLI."""
    args = []
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    return args


@dataclass
class FaultCluster:
    """The running cluster, its address, Ray temp dir and the shared results root."""

    cluster: object              # ray.cluster_utils.Cluster
    ray_tmp: Path
    results: Path

    @property
    def address(self) -> str:
        return self.cluster.address

    def env(self) -> dict[str, str]:
        """Return the environment of a CLI process attached to this cluster."""
        environment = {**os.environ, "RAY_ADDRESS": self.address, "RAY_TMPDIR": str(self.ray_tmp),
                       "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                       "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
        environment.pop("WANDB_API_KEY", None)
        return environment

    def ensure_workers(self, count: int = 2) -> None:
        """Add worker raylets until `count` are up (add_node must run on the main thread)."""
        while len(self.cluster.worker_nodes) < count:
            self.cluster.add_node(num_cpus=WORKER_CPUS)
        self.cluster.wait_for_nodes()

    def processes_on(self, node, marker: str) -> list[psutil.Process]:
        """Return the live processes under `node`'s raylet whose title contains `marker`."""
        raylet = node.all_processes["raylet"][0].process.pid
        found = []
        for proc in psutil.Process(raylet).children(recursive=True):
            try:
                if marker in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.NoSuchProcess:
                continue
        return found

    def node_hosting(self, marker: str):
        """Return the worker node running a process titled `marker` (e.g. RayTrainWorker), or None."""
        for node in self.cluster.worker_nodes:
            if self.processes_on(node, marker):
                return node
        return None

    def worker_logs(self) -> list[Path]:
        """Return every Ray worker log (stdout and stderr) of this cluster's sessions."""
        return sorted(self.ray_tmp.glob("**/logs/worker-*"))


def registered_epoch(run_dir: Path) -> int | None:
    """Return the epoch of the latest checkpoint Train's controller registered for a run, or None."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    return latest.get("metrics", {}).get("epoch")


def log_lines(path: Path) -> list[str]:
    """Return a log file's lines (undecodable bytes replaced)."""
    return path.read_text(errors="replace").splitlines()


def own_processes() -> set[int]:
    try:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def kill_leftovers(pids: set[int], ray_tmp: Path) -> None:
    """SIGKILL processes this suite started (its descendants, or anything using its Ray temp dir)."""
    marker = str(ray_tmp)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            mine = proc.pid in pids or marker in " ".join(proc.info["cmdline"] or ())
            if mine and proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
        except psutil.NoSuchProcess:
            continue


def start_cli(fault_cluster: FaultCluster, *args: str, log: Path,
              env: dict[str, str] | None = None, program: str = RUN) -> subprocess.Popen:
    """Start `python tune/run.py ARGS` (or `program` taking its arguments) attached to the cluster
    (plus `env`), in its own process group."""
    handle = open(log, "w")
    proc = subprocess.Popen([sys.executable, program, *args], stdout=handle, stderr=subprocess.STDOUT,
                            text=True, env={**fault_cluster.env(), **(env or {})}, cwd=fault_cluster.results,
                            start_new_session=True)
    handle.close()
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group a CLI was started in."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_cli(proc: subprocess.Popen, timeout_s: float) -> int:
    """Return the CLI's exit code; kill its group if it outlives `timeout_s`."""
    try:
        return proc.wait(timeout=timeout_s)
    finally:
        kill_group(proc)
        proc.wait()


def load_study(results: Path, name: str, url: str | None = None) -> optuna.Study:
    """Return the sweep's Optuna study from `url`, or from its default SQLite storage under `results`."""
    storage = optuna.storages.RDBStorage(url or f"sqlite:///{results / name / 'optuna.db'}")
    return optuna.load_study(study_name=name, storage=storage)


def count_complete(db: Path) -> int:
    """Return the number of COMPLETE trials in an Optuna SQLite file (0 before it exists)."""
    if not db.is_file():
        return 0
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            return conn.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def tune_failures(results: Path, name: str) -> dict[str, int]:
    """Return {Tune trial id: number of failures Tune retried} from the latest experiment state."""
    states = sorted((results / name / "tune").glob("experiment_state-*.json"))
    if not states:
        return {}
    data = json.loads(states[-1].read_text())
    failures = {}
    for trial_json, metadata_json in data["trial_data"]:
        trial = json.loads(trial_json)
        failures[trial["trial_id"]] = json.loads(metadata_json)["num_failures"]
    return failures


def tune_results(results: Path | str, name: str) -> dict[str, dict]:
    """Return {Tune trial id: its last reported result} from the trials' result.json files
    (`results` a local folder or an object-store URI)."""
    import pyarrow.fs

    location = results_location(str(results))
    selector = pyarrow.fs.FileSelector(location.path(name, "tune"), recursive=True, allow_not_found=True)
    found = {}
    for info in location.fs.get_file_info(selector):
        if info.base_name != "result.json":
            continue
        with location.fs.open_input_stream(info.path) as handle:
            lines = [line for line in handle.read().decode().splitlines() if line.strip()]
        if lines:
            last = json.loads(lines[-1])
            found[last["trial_id"]] = last
    return found


def wait_for(condition, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
             poll_s: float = 0.1):
    """Return condition()'s first truthy value; fail naming `what` on timeout or if `proc` ends."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
