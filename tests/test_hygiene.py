"""Secret hygiene: W&B and Hugging Face tokens set in a sweep's environment appear in none of
its outputs; dashboards are documented to stay on 127.0.0.1; cluster.yaml carries no keys.

The sweep is the session's tiny digits run through `python tune/run.py --wandb` (W&B offline,
4 trials, `digits_sweep` in tests/conftest.py), started with the tokens in its environment; the
end-to-end sweep tests read the same run. Every file under its results root is searched: raw
bytes, plus the decoded contents of Parquet, SQLite and gzip files (which may compress or page
their text), and Ray's own session logs. Each token is looked for as written and as it reads
inside base64 (standard or URL-safe, at any of the three byte alignments) and hex text: Ray
puts configs base64-encoded into command lines and logs, and hex-encoded pickles into logs.
"""

import base64
import gzip
import json
import pickle
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from _digits_sweep import SWEEP_SECRETS

REPO = Path(__file__).resolve().parents[1]
SECRETS = SWEEP_SECRETS


def _encoded_forms(secret: bytes) -> list[bytes]:
    """Return the byte strings that any text holding `secret` contains: the secret itself, its hex, and
    for each alignment of its first byte in a base64 stream the characters that encode only its bits
    (standard and URL-safe alphabets). With the secret at byte offset s of a 3-byte group, characters
    ceil(8s/6) .. floor(8(s+n)/6) - 1 of base64(s zero bytes + secret) depend on the secret alone."""
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret)
        core = encoded[-(-8 * shift // 6):8 * (shift + len(secret)) // 6]
        forms += [core, core.translate(bytes.maketrans(b"+/", b"-_"))]
    return forms


SECRET_FORMS = {name: _encoded_forms(secret.encode()) for name, secret in SECRETS.items()}


def _secrets_in(content: bytes) -> list[str]:
    """Return the names of the secrets `content` holds, as written or encoded."""
    return [name for name, forms in SECRET_FORMS.items() if any(form in content for form in forms)]


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
        hits = _secrets_in(_decoded(path))
        if hits:
            found[str(path.relative_to(root))] = hits
    return found


def test_the_search_finds_a_secret_in_base64_and_hex_at_any_alignment(tmp_path):
    secret = SECRETS["WANDB_API_KEY"]
    config = json.dumps({"env_vars": {"WANDB_API_KEY": secret}}).encode()
    written = {"plain.log": config, "pickle-hex.log": b"state " + pickle.dumps(config).hex().encode()}
    for pad in range(3):  # moves the secret through the three byte alignments of base64
        blob = b" " * pad + config
        written[f"b64-{pad}.log"] = b"--serialized-runtime-env=" + base64.b64encode(blob) + b" --x"
        written[f"urlsafe-{pad}.log"] = b"token " + base64.urlsafe_b64encode(blob)
    written["clean.log"] = base64.b64encode(json.dumps({"env_vars": {"WANDB_MODE": "offline"}}).encode())
    for name, content in written.items():
        (tmp_path / name).write_bytes(content)
    expected = {name: ["WANDB_API_KEY"] for name in written if name != "clean.log"}
    assert _files_holding_secrets(tmp_path) == expected


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
    assert _secrets_in((proc.stdout + proc.stderr).encode()) == []


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
