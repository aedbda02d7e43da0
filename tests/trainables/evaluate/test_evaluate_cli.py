"""`python -m trainables.evaluate` (trainables.evaluate.cli): the TTA it prints and writes is the one it applied,
and its intervals are the sweep's (trainables.evaluate.bootstrap.metric_intervals)."""

import json

import pytest
import torch

from compress import save_compressed
from trainables.config import TrialConfig
from trainables.evaluate.bootstrap import metric_intervals
import trainables.evaluate.cli as evaluate_cli
from trainables.evaluate.evaluation import Predictions
import trainables.evaluate.evaluation as evaluate
from trainables.model import build_classifier


@pytest.fixture
def export_with(tmp_path, write_h5):
    """Return make(tta): an export folder of a tiny random classifier whose trial ran eval.tta=tta,
    and a PCam-layout folder with 16 valid images."""
    data = tmp_path / "data"
    write_h5(data, "valid", n=16, size=32)

    def make(tta: str):
        folder = tmp_path / f"export-{tta}"
        torch.manual_seed(0)
        save_compressed(build_classifier("digits-vit", 2), folder)
        flat = TrialConfig.from_flat({"eval.tta": tta, "run.device": "cpu"}).to_flat()
        (folder / "config.json").write_text(json.dumps(flat))
        return folder, data

    return make


@pytest.fixture
def applied(monkeypatch):
    """Record the TTA mode of every tta_probs call (eval.tta = none predicts without it)."""
    modes = []
    real = evaluate.tta_probs

    def spy(model, x, transforms):
        modes.append(transforms)
        return real(model, x, transforms)

    monkeypatch.setattr(evaluate, "tta_probs", spy)
    return modes


@pytest.mark.parametrize("trial_tta, flags, expected", [
    ("none", [], "none"),                    # was printed 'TTA on' and written true: bool("none")
    ("dihedral", [], "dihedral"),
    ("dihedral", ["--no-tta"], "none"),      # the README's flag: was 'unrecognized arguments'
    ("dihedral", ["--tta", "none"], "none"),
    ("none", ["--tta", "flips"], "flips"),
])
def test_the_printed_and_written_tta_is_the_one_applied(export_with, applied, tmp_path, capsys,
                                                         trial_tta, flags, expected):
    model, data = export_with(trial_tta)
    target = tmp_path / "valid.json"
    assert evaluate_cli.main(["--model", str(model), "--data", str(data), "--split", "valid", "--resamples", "20",
                              "--json", str(target), *flags]) == 0
    assert set(applied) == (set() if expected == "none" else {expected})
    assert f"TTA {expected}, cpu" in capsys.readouterr().out.splitlines()[0]
    assert json.loads(target.read_text())["tta"] == expected


def test_tta_and_no_tta_together_exit_2(export_with, capsys):
    model, data = export_with("none")
    with pytest.raises(SystemExit) as caught:
        evaluate_cli.main(["--model", str(model), "--data", str(data), "--split", "valid",
                           "--tta", "flips", "--no-tta"])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err.splitlines()[-1]


def test_an_int8_export_on_cuda_exits_2_in_one_line(tmp_path, write_h5, capsys, monkeypatch):
    from compress import quantize_model
    import trainables.train.sessions

    monkeypatch.setattr(trainables.train.sessions, "pick_device", lambda requested: torch.device("cuda"))  # a GPU box

    write_h5(tmp_path / "data", "valid", n=4, size=32)
    folder = tmp_path / "export-int8"
    save_compressed(quantize_model(build_classifier("digits-vit", 2), "int8"), folder)
    (folder / "config.json").write_text(json.dumps(TrialConfig.from_flat({"run.device": "cpu"}).to_flat()))
    with pytest.raises(SystemExit) as caught:
        evaluate_cli.main(["--model", str(folder), "--data", str(tmp_path / "data"), "--split", "valid",
                           "--device", "cuda"])
    assert caught.value.code == 2
    assert "compress.quant=int8 cannot run on cuda" in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_intervals_are_metric_intervals_of_the_scored_probabilities(export_with, tmp_path, monkeypatch):
    scored = []
    real = evaluate_cli.split_probabilities

    def spy(*args):
        scored.append(real(*args))
        return scored[-1]

    monkeypatch.setattr(evaluate_cli, "split_probabilities", spy)
    model, data = export_with("none")
    target = tmp_path / "valid.json"
    assert evaluate_cli.main(["--model", str(model), "--data", str(data), "--split", "valid", "--resamples", "30",
                              "--json", str(target)]) == 0
    written = json.loads(target.read_text())
    predictions = Predictions.of(*scored[0])
    expected = metric_intervals(predictions.labels, predictions.probs, resamples=30,
                                metrics=evaluate_cli.INTERVAL_METRICS)
    assert {key: written[f"val_{key}"] for key in expected} == expected
    assert set(expected) == {f"{name}_{end}" for name in evaluate_cli.INTERVAL_METRICS for end in ("lo", "hi")}


@pytest.mark.slow
def test_python_m_trainables_evaluate_runs_the_cli():
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "trainables.evaluate", "--help"], capture_output=True, text=True,
                           check=True, timeout=120).stdout
    assert shown.startswith("usage: python -m trainables.evaluate")
