"""On a cluster the first trial that finds its data missing stops the sweep with one line.

The CLI attaches through RAY_ADDRESS (as `ray job submit` does), so it cannot check the
workers' disks before starting; the trial does, on its node.
"""

from __future__ import annotations

import pytest
from _faultkit import load_study, start_cli, wait_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]


def test_missing_pcam_on_the_workers_stops_the_sweep_with_one_line(fault_cluster, tmp_path):
    missing = "/nonexistent/vitsweep-pcam"
    log = tmp_path / "cli.log"
    proc = start_cli(fault_cluster, "--preset", "pcam-local", "--name", "missing-pcam", "--num-samples", "6",
                     "--results-dir", str(fault_cluster.results), "--set", f"data.root={missing}", log=log)
    rc = wait_cli(proc, 200)
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert rc == 2, text[-2000:]
    assert len(errors) == 1 and missing in errors[0] and "on node" in errors[0]
    study = load_study(fault_cluster.results, "missing-pcam")
    assert len(study.trials) == 1  # stopped after the first trial, not six failures
