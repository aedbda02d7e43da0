"""Suite-wide environment (offline, no telemetry, no downloads) and the one digits sweep that
several modules read.

`digits_sweep` runs `python tune/run.py` once per session: 4 tiny compress_only digits trials,
2 at once, W&B offline, with dummy W&B and Hugging Face tokens in its environment. The
end-to-end sweep tests (tests/tune/test_sweep.py) check its study and reports, the secret
hygiene tests (tests/test_hygiene.py) search everything it wrote for the tokens, and the
job-flow test (tests/tune/test_cluster.py) reuses its stage cache. One sweep instead of three
saves a Ray start, two Ray Train stages and the W&B runs each time (see docs/testing.md).

Every module is checked for Ray processes it leaves behind (`no_ray_process_left_behind`): only
the suite's own, whose session folders lie under the temporary folders this session made
(tests/_ray_guard.py), never another run's on the same machine.
"""

import os
import shutil
import sys
import time
from types import SimpleNamespace

import psutil
import pytest

from _digits_sweep import SWEEP_SECRETS, TINY_SWEEP, run_cli
from _ray_guard import ray_processes, ray_tmp_dir, register_root

# Set before any test imports ray, wandb or huggingface_hub.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Object-store clients in every process the suite starts (Ray's included) never look for real
# credentials: with none, the AWS SDK would ask the EC2 metadata address, which is not a test host.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

LEFT_BEHIND_GRACE_S = 15  # what ray.shutdown() and a head's teardown may take to finish


@pytest.fixture(scope="session", autouse=True)
def ray_folders_of_this_session(tmp_path_factory):
    """Count Ray processes under pytest's basetemp (`ray.init(_temp_dir=tmp_path)`) as the suite's, and
    give a Ray that a test starts without a RAY_TMPDIR of its own a registered one (removed at the end)."""
    register_root(tmp_path_factory.getbasetemp())
    default, saved = ray_tmp_dir("vsd"), os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(default)
    yield
    if saved is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = saved
    shutil.rmtree(default, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def no_ray_connection_left_behind():
    """Fail a module that leaves this test process connected to Ray, and disconnect it.

    A later module's `ray.init` would otherwise fail ("Maybe you called ray.init twice") far from
    the module that caused it.
    """
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("this module left the test process connected to Ray (disconnected now)")


@pytest.fixture(scope="module", autouse=True)
def no_ray_process_left_behind():
    """Fail a module that leaves an orphaned Ray process of its own running, and kill it.

    Started by this session (tests/_ray_guard.py), during the module, and orphaned (its parent gone,
    adopted by init): a Ray the module forgot to shut down, or an agent its raylet's teardown
    missed. One such dashboard agent spun a core for the rest of the session and made later
    tests up to 4x slower. Session fixtures' own Ray processes are children of this process
    until they shut down. Another run's Ray on the same machine is never touched.
    """
    before = set(ray_processes())
    yield
    deadline = time.monotonic() + LEFT_BEHIND_GRACE_S
    while True:
        left = {pid: line for pid, (ppid, line) in ray_processes().items() if ppid == 1 and pid not in before}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for pid in left:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, f"this module left Ray processes running (killed now): {sorted(left.items())}"


S3_BUCKET = "vitsweep-results"
S3_ENV = {"AWS_ACCESS_KEY_ID": "vitsweep-test", "AWS_SECRET_ACCESS_KEY": "vitsweep-test",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """Run an S3 API server (moto) on a free loopback port with the bucket `vitsweep-results`.

    Yields (endpoint "127.0.0.1:PORT", bucket, uri(prefix) -> an s3:// URI carrying the endpoint in
    its query). While it runs, this process's environment holds dummy credentials and
    AWS_ENDPOINT_URL, so every process started meanwhile (the CLI, Ray's raylets and workers)
    reaches it. A test takes a prefix of its own; the server forgets everything when it stops.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    saved = {key: os.environ.get(key) for key in (*S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=f"http://{endpoint}")
    boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
    try:
        yield SimpleNamespace(
            endpoint=endpoint, bucket=S3_BUCKET,
            uri=lambda prefix: f"s3://{S3_BUCKET}/{prefix}?endpoint_override={endpoint}&scheme=http")
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def digits_sweep(tmp_path_factory):
    """Run the session's 4-trial digits sweep (name "four"); yield its process, results root, Ray tmp dir."""
    results = tmp_path_factory.mktemp("digits-sweep")
    ray_tmp = ray_tmp_dir("vss")
    env = {**os.environ, **SWEEP_SECRETS, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0",
           "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = run_cli(env, "--results-dir", str(results), "--name", "four", "--num-samples", "4",
                   "--max-concurrent", "2", "--wandb", *TINY_SWEEP)
    yield SimpleNamespace(proc=proc, results=results, ray_tmp=ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
