"""A local run with missing data or unreadable weights stops before Ray starts: exit 2, one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainables.config import TrialConfig
from trainables.data.inputs import MissingInputError, check_inputs, check_weights
from trainables.model import backbone_config

REPO = Path(__file__).resolve().parents[2]
RUN = str(REPO / "tune" / "run.py")


def _local_cli(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, RUN, "--results-dir", str(tmp_path), *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=env)


def _corrupt_weights(directory: Path, backbone: str = "digits-vit") -> Path:
    backbone_config(backbone).save_pretrained(directory)
    (directory / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    return directory


@pytest.mark.slow  # runs the CLI in a process of its own
def test_missing_pcam_folder_exits_2_before_ray(tmp_path):
    proc = _local_cli(tmp_path, "--preset", "pcam-local", "--set", "data.root=/nonexistent/pcam")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "/nonexistent/pcam" in last
    assert "Traceback" not in proc.stderr and "Started a local Ray" not in proc.stdout + proc.stderr
    assert not (tmp_path / "train").exists() and not any(tmp_path.glob("pcam-local-*"))


@pytest.mark.slow  # runs the CLI in a process of its own
def test_unreadable_weights_exit_2_naming_the_file(tmp_path):
    weights = _corrupt_weights(tmp_path / "w")
    proc = _local_cli(tmp_path, "--set", f"model.weights={weights}")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and str(weights / "model.safetensors") in last
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # runs the CLI in a process of its own
def test_missing_weights_directory_exits_2(tmp_path):
    proc = _local_cli(tmp_path, "--set", "model.weights=/nonexistent/weights")
    assert proc.returncode == 2 and "/nonexistent/weights" in proc.stderr.strip().splitlines()[-1]


def test_weights_of_another_architecture_are_refused(tmp_path):
    weights = _corrupt_weights(tmp_path / "w", backbone="digits-vit")
    with pytest.raises(MissingInputError, match="hidden_size"):
        check_weights(str(weights), "dinov3-vits16")


def test_a_hugging_face_id_is_left_to_the_trial():
    check_weights("facebook/dinov3-vits16-pretrain-lvd1689m", "dinov3-vits16")


def test_trial_check_names_the_missing_split(tmp_path):
    cfg = TrialConfig.from_flat({"data.dataset": "pcam"})
    with pytest.raises(MissingInputError, match="camelyonpatch_level_2_split_train_x.h5"):
        check_inputs(cfg, str(tmp_path))
