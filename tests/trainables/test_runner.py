"""How a stage runs on Ray Train: the poll interval (0.5 s unless the user's environment says
otherwise) and what its controller process has to import."""

import os
import subprocess
import sys

import pytest

from trainables.runner import TRAIN_POLL_ENV, set_train_poll_default


def test_poll_interval_defaults_to_half_a_second(monkeypatch):
    monkeypatch.delenv(TRAIN_POLL_ENV, raising=False)
    assert set_train_poll_default() == "0.5"
    assert os.environ[TRAIN_POLL_ENV] == "0.5"


def test_poll_interval_set_by_the_user_wins(monkeypatch):
    monkeypatch.setenv(TRAIN_POLL_ENV, "3")
    assert set_train_poll_default() == "3"
    assert os.environ[TRAIN_POLL_ENV] == "3"


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_train_controller_unpickles_the_run_without_transformers_or_trainables(tmp_path, monkeypatch):
    """Ray Train's controller process unpickles the run's context (train_loop_config and
    callbacks) before any worker starts: it must not have to import transformers, scikit-learn or
    trainables' config (torch it imports anyway, for Ray's own TorchConfig)."""
    import ray.cloudpickle
    from ray.train.torch import TorchTrainer

    from trainables.job import TrainJob
    from trainables.runner import run_on_ray

    captured = {}

    def capture(trainer):
        captured["context"] = trainer.train_run_context
        raise _Stop

    monkeypatch.setattr(TorchTrainer, "fit", capture)
    with pytest.raises(_Stop):
        run_on_ray(TrainJob("finetune", {"run.device": "cpu"}, str(tmp_path)), run_name="finetune-0123",
                   storage_path=str(tmp_path / "train"))
    blob = tmp_path / "context.pkl"
    blob.write_bytes(ray.cloudpickle.dumps(captured["context"]))
    code = ("import pickle, sys; context = pickle.load(open(sys.argv[1], 'rb')); "
            "print(sorted(m for m in ('transformers', 'sklearn', 'trainables.config', 'trainables.job') if m in sys.modules)); "
            "print(type(context.train_loop_config['job']).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "bytes"]
