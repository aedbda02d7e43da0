"""Fault injection on a real multi-node Ray cluster started on this machine.

`ray.cluster_utils.Cluster` runs a head raylet (no CPUs: it hosts only the drivers and the
GCS) and two worker raylets with 2 CPUs each, so every trial and every Ray Train worker
lands on a worker node that a test can remove. The sweep CLI attaches to the cluster
through RAY_ADDRESS (tune.sweep._init_ray), as `ray job submit` does on a real cluster.

All fault tests share one results root, so the digits backbone is pretrained once; each
scenario fine-tunes its own configuration (a distinct `finetune.lr`), so a fault always
lands in a stage that is really computing, whichever test runs first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from _faultkit import FaultCluster, kill_leftovers, own_processes
from _ray_guard import ray_tmp_dir


_HERE = Path(__file__).resolve().parent
_open: list = []  # the running cluster's teardown, while one runs


@pytest.fixture(scope="session")
def fault_cluster(tmp_path_factory, s3_server):
    """Yield a head + 2 worker raylets; shut them down and kill what they left behind.

    Started after the S3 API server, so every raylet and worker has its endpoint and credentials
    in the environment (tests/conftest.py s3_server): sweeps may keep their results there.

    Session-scoped so all fault modules share it, but shut down as soon as the fault tests are
    over (pytest_runtest_teardown below): an idle 3-raylet cluster would otherwise keep polling
    through the rest of the suite.
    """
    from ray.cluster_utils import Cluster

    ray_tmp = ray_tmp_dir("vsf")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cluster = Cluster(initialize_head=True, shutdown_at_exit=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    started = FaultCluster(cluster, ray_tmp, tmp_path_factory.mktemp("fault-results"))

    def shut_down():
        spawned = own_processes()
        import ray

        ray.shutdown()
        cluster.shutdown()
        kill_leftovers(spawned, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    _open.append(shut_down)
    try:
        started.ensure_workers(2)
        yield started
    finally:
        _shut_down_cluster()


def _shut_down_cluster() -> None:
    while _open:
        _open.pop()()


def pytest_runtest_teardown(item, nextitem):
    """Shut the cluster down after the session's last fault test."""
    if not _open:
        return
    items = item.session.items
    later = items[items.index(item) + 1:] if nextitem is not None else []
    if not any(_HERE in Path(later_item.path).resolve().parents for later_item in later):
        _shut_down_cluster()
