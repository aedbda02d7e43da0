"""The cluster journey: dashboard packages, Ray's token auth, and the README's `ray job submit` flow.

The slow tests start one head with `ray start --head` (2 CPUs, token auth on, its own temp
dir, ports and token file) and stop it, and only the processes it started, at the end.
"""

import ast
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from _digits_sweep import TINY_SWEEP
from _ray_guard import ray_tmp_dir

import tune.run
from tune.cluster import (
    CLUSTER_INSTALL, DASHBOARD_MODULES, RayAccessError, missing_dashboard_modules, token_source,
)

REPO = Path(__file__).resolve().parents[2]
README_SUBMIT = "ray job submit --address http://127.0.0.1:8265 --working-dir . --"
TINY = TINY_SWEEP  # the session sweep's settings (tests/conftest.py), so its pretrain is a cache hit
JOB_FINETUNE_LR = 1.7e-3  # not the sweep's: the job trains a fine-tune of its own
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_dashboard_module_list_matches_rays_own_check():
    spec = importlib.util.find_spec("ray.dashboard")
    rays = _imported_modules(Path(spec.submodule_search_locations[0]) / "optional_deps.py")
    assert rays, "ray/dashboard/optional_deps.py imports nothing: Ray changed its check"
    uncovered = {m for m in rays if not any(m == ours or m.startswith(ours + ".") for ours in DASHBOARD_MODULES)}
    assert not uncovered, f"Ray's dashboard also needs {sorted(uncovered)}: add them to DASHBOARD_MODULES"
    assert set(DASHBOARD_MODULES) <= rays


def test_dashboard_check_agrees_with_ray():
    from ray._private.utils import get_dashboard_dependency_error

    assert (missing_dashboard_modules() == []) == (get_dashboard_dependency_error() is None)


def test_a_missing_parent_package_counts_as_missing(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert [m for m in missing_dashboard_modules() if m.startswith("opentelemetry")] == [
        "opentelemetry", "opentelemetry.exporter.prometheus", "opentelemetry.proto"]


def test_ray_dashboard_without_its_packages_exits_2_with_the_install_command(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "aiohttp" else real(name, *args))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        tune.run.main(["--ray-dashboard", "--num-samples", "2", "--results-dir", str(results)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "aiohttp" in line and CLUSTER_INSTALL in line
    assert not results.exists()


def test_attach_refused_by_the_cluster_exits_2_before_writing(monkeypatch, tmp_path, capsys):
    def refuse(address):
        raise RayAccessError(f"the Ray cluster at {address} (RAY_ADDRESS) requires its token")

    monkeypatch.setattr("tune.cluster.check_cluster_access", refuse)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        tune.run.main(["--num-samples", "2", "--results-dir", str(results)])
    assert exit_info.value.code == 2
    assert "10.0.0.1:6379 (RAY_ADDRESS) requires its token" in capsys.readouterr().err
    assert not results.exists()


@pytest.mark.parametrize(("env", "expected"), [
    ({"RAY_AUTH_TOKEN": "t", "RAY_AUTH_TOKEN_PATH": "/x"}, "RAY_AUTH_TOKEN"),
    ({"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": "/x"}, "RAY_AUTH_TOKEN_PATH=/x"),
    ({}, "~/.ray/auth_token"),
])
def test_token_source_follows_rays_order(monkeypatch, env, expected):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert token_source() == expected


def test_readme_submits_the_command_this_module_runs():
    assert README_SUBMIT in (REPO / "README.md").read_text()


# --- a real head with token authentication -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _started_by(token_path: str) -> list[psutil.Process]:
    """The head and all it started: processes whose environment carries this head's token path,
    and their descendants. The raylet starts its dashboard and runtime-env agents without that
    variable; left behind, the orphaned dashboard agent spins a core and slows every later test."""
    found = {}
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("RAY_AUTH_TOKEN_PATH") == token_path:
                found.update((each.pid, each) for each in [proc, *proc.children(recursive=True)])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return list(found.values())


def _get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def head():
    # The README's test install includes the cluster extra, so a missing dashboard is a broken install.
    if missing_dashboard_modules():
        pytest.fail(f"the Jobs API needs Ray's dashboard: {CLUSTER_INSTALL}")
    root = ray_tmp_dir("vsj")
    token_path = root / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    ports = {name: _free_port() for name in (
        "port", "dashboard-port", "node-manager-port", "object-manager-port", "ray-client-server-port",
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port")}
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
           "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
           # On a busy machine the dashboard agent can take longer to start than the
           # raylet waits by default, and the raylet then exits, taking the head with it.
           "RAY_agent_register_timeout_ms": "180000",
           # The job's `python` is the interpreter running these tests.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "WANDB_API_KEY"):
        env.pop(key, None)
    log = open(root / "head.log", "w")
    command = [*RAY_CLI, "start", "--head", "--block", "--num-cpus", "2", "--temp-dir", str(root / "ray"),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               *[arg for name, port in ports.items() for arg in (f"--{name}", str(port))]]
    proc = subprocess.Popen(command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, body = _get(f"{dashboard}/api/authentication_mode")
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not serve its dashboard: {(root / 'head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        def state() -> str:
            alive = "running" if proc.poll() is None else f"exited with {proc.returncode}"
            return f"head {alive}; its log ends: {(root / 'head.log').read_text()[-1500:]}"

        yield {"dashboard": dashboard, "gcs": f"127.0.0.1:{ports['port']}", "env": env, "root": root,
               "token_path": token_path, "auth_mode": json.loads(body)["authentication_mode"],
               "state": state}
    finally:
        # What `ray stop` does, limited to this head: SIGTERM to all its processes at once,
        # SIGKILL to those still there 5 s later (the results are checked by then).
        started = _started_by(str(token_path))
        for each in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                each.terminate()
        _, alive = psutil.wait_procs(started, timeout=5)
        for each in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                each.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.ray
def test_head_enforces_token_auth(head):
    assert head["auth_mode"] == "token"
    status, _ = _get(f"{head['dashboard']}/api/jobs/")
    assert status == 401


@pytest.mark.slow
@pytest.mark.ray
def test_readme_job_submit_runs_a_two_trial_sweep(head, digits_sweep):
    # On the session sweep's results root its pretrain is a cache hit; the job's own fine-tune
    # learning rate keys a fine-tune of its own, so the job still trains through Ray Train.
    # --no-retime: the session sweep checks the re-timing pass; this test is about the job path.
    results = digits_sweep.results
    command = [*RAY_CLI, *README_SUBMIT.split()[1:], "python", "tune/run.py",
               "--results-dir", str(results), "--name", "job-flow", "--num-samples", "2", "--no-retime", *TINY,
               "--set", f"finetune.lr={JOB_FINETUNE_LR}"]
    command[command.index("http://127.0.0.1:8265")] = head["dashboard"]
    for _ in range(6):
        out = subprocess.run(command, cwd=REPO, env=head["env"], capture_output=True, text=True, timeout=480)
        # A fresh head answers 500 "No available agent" (nothing submitted) until its
        # dashboard agent registers, which can take longer than Ray's 10 s on a busy machine.
        if "No available agent" not in out.stdout + out.stderr:
            break
        time.sleep(5)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:] + head["state"]()
    assert "succeeded" in out.stdout
    sweep = results / "job-flow"
    with sqlite3.connect(sweep / "optuna.db") as db:
        states = [state for (state,) in db.execute("SELECT state FROM trials ORDER BY number")]
    assert states == ["COMPLETE", "COMPLETE"]
    assert "val_auroc" in (sweep / "pareto.md").read_text()
    import optuna

    study = optuna.load_study(study_name="job-flow", storage=f"sqlite:///{sweep / 'optuna.db'}")
    first = study.trials[0].user_attrs
    assert (first["cache_hit_pretrain"], first["cache_hit_finetune"]) == (True, False), first


def _run_cli(head, tmp_path, **env_changes) -> subprocess.CompletedProcess:
    env = {**head["env"], "RAY_ADDRESS": head["gcs"]}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, str(REPO / "tune" / "run.py"), "--results-dir",
                           str(tmp_path / "results"), "--num-samples", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.ray
def test_attach_with_no_token_is_one_line_and_exit_2(head, tmp_path):
    home = tmp_path / "home"  # no ~/.ray/auth_token there
    home.mkdir()
    out = _run_cli(head, tmp_path, RAY_AUTH_TOKEN_PATH=None, HOME=str(home))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    (line,) = [line for line in out.stderr.splitlines() if "error:" in line]
    assert "no token found in ~/.ray/auth_token" in line and head["gcs"] in line
    assert not (tmp_path / "results").exists()


def _probe(head, **env_changes) -> str:
    env = {**head["env"], **{k: v for k, v in env_changes.items() if v is not None}}
    for key in [k for k, v in env_changes.items() if v is None]:
        env.pop(key, None)
    code = ("import sys\nfrom tune.cluster import RayAccessError, check_cluster_access\n"
            "try:\n    check_cluster_access(sys.argv[1])\n    print('accepted')\n"
            "except RayAccessError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code, head["gcs"]], env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.slow
@pytest.mark.ray
def test_access_check_names_the_fix(head, tmp_path):
    accepted = _probe(head)
    assert accepted == "accepted", accepted + head["state"]()
    no_mode = _probe(head, RAY_AUTH_MODE=None)
    assert "requires its token: set RAY_AUTH_MODE=token" in no_mode, no_mode
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    rejected = _probe(head, RAY_AUTH_TOKEN_PATH=str(wrong))
    assert f"rejected the token from RAY_AUTH_TOKEN_PATH={wrong}" in rejected, rejected
