"""Secret hygiene: W&B and Hugging Face tokens set in a sweep's environment appear in none of
its outputs; dashboards are documented to stay on 127.0.0.1; cluster.yaml carries no keys.

The sweep is a tiny digits run through `python tune/run.py --wandb` (W&B offline), on the
results root tests/test_numerical_faults.py shares. Every file under that root is searched:
raw bytes, plus the decoded contents of Parquet, SQLite and gzip files (which may compress
or page their text), and Ray's own session logs.
"""

import gzip
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUN = str(REPO / "tune" / "run.py")
SECRETS = {"WANDB_API_KEY": "dummy-wandb-secret-123", "HF_TOKEN": "hf_dummysecret456"}
# Same tiny trial as tests/test_numerical_faults.py, so both hit the same cached stages.
TINY = {"pretrain.epochs": 1, "finetune.epochs": 1, "data.train_limit": 200, "data.val_limit": 100,
        "eval.latency_repeats": 2, "eval.latency_rounds": 1, "calib.batches": 2}


def _decoded(path: Path) -> bytes:
    """Return the file's bytes followed by any text hidden from a byte search (compression, pages)."""
    data = path.read_bytes()
    extra = b""
    if data[:4] == b"PAR1":
        extra = pq.read_table(path).to_pandas().to_csv().encode()
        extra += str(pq.read_metadata(path).metadata).encode()
    elif data[:16] == b"SQLite format 3\x00":
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            extra = "\n".join(connection.iterdump()).encode()
    elif data[:2] == b"\x1f\x8b":
        extra = gzip.decompress(data)
    return data + extra


def _files_holding_secrets(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        content = _decoded(path)
        hits = [name for name, secret in SECRETS.items() if secret.encode() in content]
        if hits:
            found[str(path.relative_to(root))] = hits
    return found


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Run a two-trial W&B-offline sweep with dummy tokens set; return (process, results root, Ray tmp)."""
    results = tmp_path_factory.getbasetemp() / "shared-sweep-results"
    ray_tmp = Path(tempfile.mkdtemp(prefix="vsh", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, **SECRETS, "WANDB_MODE": "offline", "RAY_TMPDIR": str(ray_tmp),
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    proc = subprocess.Popen([sys.executable, RUN, "--results-dir", str(results), "--name", "tokens",
                             "--num-samples", "2", "--wandb", *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO.parent, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=420)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever Ray left in the CLI's process group
        except ProcessLookupError:
            pass
    yield subprocess.CompletedProcess(proc.args, proc.returncode, out, err), results, ray_tmp
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_with_tokens_in_its_environment_completes(sweep):
    proc, _, _ = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.ray
@pytest.mark.slow
def test_search_covered_every_kind_of_output(sweep):
    # The search below means something only if these were written.
    sweep_dir = sweep[1] / "tokens"
    for pattern in ("optuna.db", "trials.parquet", "progress.jsonl", "sweep.json", "tune/*/result.json",
                    "wandb/wandb/offline-run-*/*.wandb"):
        assert list(sweep_dir.glob(pattern)), pattern


@pytest.mark.ray
@pytest.mark.slow
def test_no_secret_in_any_file_under_the_results_folder(sweep):
    assert _files_holding_secrets(sweep[1]) == {}


@pytest.mark.ray
@pytest.mark.slow
def test_no_secret_in_the_sweeps_stdout_or_stderr(sweep):
    proc = sweep[0]
    assert not [name for name, secret in SECRETS.items() if secret in proc.stdout + proc.stderr]


@pytest.mark.ray
@pytest.mark.slow
def test_no_secret_in_rays_session_logs(sweep):
    # Ray logs every runtime_env it creates; W&B's callback would put the key in one.
    assert _files_holding_secrets(sweep[2]) == {}


@pytest.mark.ray
@pytest.mark.slow
def test_printed_dashboard_command_binds_to_localhost(sweep):
    line = next(line for line in sweep[0].stdout.splitlines() if line.startswith("dashboard:"))
    assert "--host 127.0.0.1" in line


def _keys(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}"
            yield from _keys(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item, prefix)


def test_cluster_yaml_has_no_credential_keys():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    words = ("key", "secret", "token", "password", "credential")
    # file_mounts' keys are paths on the nodes (the Ray token file is copied there from the
    # user's machine, never written in this file), so only configuration keys are checked.
    keys = [k for k in _keys(config) if not k.startswith("file_mounts.")]
    assert [k for k in keys if any(w in k.rsplit(".", 1)[-1].lower() for w in words)] == []
    assert all(str(local).startswith(("~", ".")) for local in config["file_mounts"].values())


def test_cluster_yaml_auth_names_only_the_ssh_user():
    assert set(yaml.safe_load((REPO / "cluster.yaml").read_text())["auth"]) == {"ssh_user"}


def test_readme_binds_both_dashboards_to_localhost_and_forwards_them_over_ssh():
    readme = " ".join((REPO / "README.md").read_text().split())  # line wrapping aside
    assert "optuna-dashboard sqlite:///" in readme and "--host 127.0.0.1" in readme
    assert "Both dashboards bind to 127.0.0.1" in readme
    assert "ssh -L 8080:127.0.0.1:8080" in readme
    assert "ray dashboard cluster.yaml" in readme
