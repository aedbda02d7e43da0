"""Secret hygiene: W&B and Hugging Face tokens set in a sweep's environment appear in none of
its outputs; dashboards are documented to stay on 127.0.0.1; cluster.yaml carries no keys.

The sweep is the session's tiny digits run through `python tune/run.py --wandb` (W&B offline,
4 trials, `digits_sweep` in tests/conftest.py), started with the tokens in its environment; the
end-to-end sweep tests read the same run. Every file under its results root is searched: raw
bytes, plus the decoded contents of Parquet, SQLite and gzip files (which may compress or page
their text), and Ray's own session logs.
"""

import gzip
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from _digits_sweep import SWEEP_SECRETS

REPO = Path(__file__).resolve().parents[1]
SECRETS = SWEEP_SECRETS


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
def sweep(digits_sweep):
    """The session's digits sweep, run with the dummy tokens set: (process, results root, Ray tmp)."""
    return digits_sweep.proc, digits_sweep.results, digits_sweep.ray_tmp


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_with_tokens_in_its_environment_completes(sweep):
    proc, _, _ = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.ray
@pytest.mark.slow
def test_search_covered_every_kind_of_output(sweep):
    # The search below means something only if these were written.
    sweep_dir = sweep[1] / "four"
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
