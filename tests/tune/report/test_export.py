"""Export end to end on a tiny digits study: CLI, fresh-process load, ONNX parity, evaluate CLI, errors, atomicity.

The study is written the way the sweep writes it (trials told with the metrics run_trial
returned, the config as a user attribute, the seed point enqueued), without starting Ray.
"""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from compress.onnx_export import onnx_session, run_onnx
from search_spaces import SEED_CONFIG
from trainables.config import TrialConfig
from trainables.trial import TrialContext, build_trial_model, run_trial
from tune.report import export as export_module
from tune.run import main as run_main
from tune.study import CONFIG_ATTR, make_storage
from tune.sweep import SweepSettings, write_settings

REPO = Path(__file__).resolve().parents[3]
OBJECTIVES = (("val_auroc", "max"), ("params", "min"), ("latency_ms", "min"))
BASE = {"pretrain.epochs": 1, "finetune.epochs": 1, "finetune.method": "full", "data.train_limit": 128,
        "eval.latency_repeats": 1, "eval.latency_rounds": 1, "eval.latency_warmup": 1,
        "eval.latency_pause_s": 0.0, "run.device": "cpu"}
COMPRESSED = {**SEED_CONFIG, "compress.tau_heads": 0.8, "compress.tau_mlp": 0.8, "compress.tau_svd": 0.8,
              "tokens.r_max": 0.5, "tokens.alpha": 1.0}
NAME = "tiny"


def _tell(study, config, metrics, *, enqueued=False):
    values = [metrics[name] for name, _ in OBJECTIVES]
    attrs = {k: v for k, v in metrics.items() if k not in dict(OBJECTIVES)}
    study.add_trial(optuna.trial.create_trial(
        values=values, user_attrs={**attrs, CONFIG_ATTR: dict(config)},
        system_attrs={"fixed_params": dict(config)} if enqueued else {}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished tiny sweep: trial 0 the reference, 1 compressed (heads, MLP, SVD, tokens)."""
    results = tmp_path_factory.mktemp("results")
    settings = SweepSettings(name=NAME, results_dir=str(results), storage_url=None, preset="digits",
                             space="default", sampler="tpe", seed=0, objectives=OBJECTIVES, num_samples=4,
                             max_concurrent=1, trial_resources={"cpu": 1}, max_failures=0, base=BASE)
    write_settings(settings)
    study = optuna.create_study(study_name=NAME, storage=make_storage(None, results, NAME),
                                directions=["maximize", "minimize", "minimize"])
    study.set_metric_names([name for name, _ in OBJECTIVES])
    context = TrialContext(results_dir=str(results), show_progress=False)
    measured = {}
    for number, (config, enqueued) in enumerate(((dict(SEED_CONFIG), True), (COMPRESSED, False))):
        measured[number] = run_trial({**BASE, **config}, context)
        _tell(study, config, measured[number], enqueued=enqueued)
    return settings, measured, context


def _export(settings, *extra):
    return run_main(["--export", NAME, "--results-dir", settings.results_dir, *extra])


@pytest.fixture(scope="module")
def exported(sweep, tmp_path_factory):
    settings, _, _ = sweep
    out = tmp_path_factory.mktemp("export") / "trial-1"
    assert _export(settings, "--trial", "1", "--out", str(out), "--onnx") == 0
    return out


LOAD = """
import sys, torch
from compress import load_compressed
logits = load_compressed(sys.argv[1])(torch.load(sys.argv[2]))
assert "trainables" not in sys.modules and "tune" not in sys.modules, sorted(sys.modules)
torch.save(logits.detach(), sys.argv[3])
"""


@pytest.mark.slow
def test_exported_model_loads_in_a_fresh_process_without_trainables_to_the_sweeps_logits(sweep, exported,
                                                                                        tmp_path):
    settings, _, context = sweep
    in_sweep = build_trial_model({**BASE, **COMPRESSED}, context)
    assert in_sweep.tokens is not None and all(in_sweep.stages.hits.values())  # rebuilt from the cache
    pixels = export_module._validation_pixels(in_sweep.cfg, in_sweep.data_root)
    torch.save(pixels, tmp_path / "pixels.pt")
    subprocess.run([sys.executable, "-c", LOAD, str(exported), str(tmp_path / "pixels.pt"),
                    str(tmp_path / "logits.pt")], check=True, cwd=REPO, timeout=300)
    temperature = sweep[1][1]["val_temperature"]  # the export divides the logits by the trial's temperature
    with torch.no_grad():
        expected = in_sweep.model.eval()(pixels) / temperature
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-6)

    # The folder carries what the issue lists, with the sweep's numbers and the ONNX check.
    assert {p.name for p in exported.iterdir()} == {"model.safetensors", "structure.json", "config.json",
                                                    "metrics.json", "README.md", "model.onnx"}
    metrics = json.loads((exported / "metrics.json").read_text())
    assert metrics["objectives"]["val_auroc"] == sweep[1][1]["val_auroc"]
    assert metrics["sweep_metrics"]["gflops"] == sweep[1][1]["gflops"]
    assert metrics["onnx"]["max_abs_diff"] <= 1e-4 and metrics["onnx"]["parity_images"] == 16
    assert metrics["onnx"]["ort_latency_ms"] > 0 and metrics["onnx"]["torch_latency_ms"] > 0
    structure = json.loads((exported / "structure.json").read_text())
    assert structure["token_pruning"]["schedule"] == in_sweep.tokens["schedule"]
    assert [layer["num_heads"] for layer in structure["layers"]] == [d.kept for d in in_sweep.report.heads]
    exported_config = json.loads((exported / "config.json").read_text())
    assert exported_config == json.loads(json.dumps(in_sweep.cfg.to_flat()))  # tuples are JSON lists
    assert TrialConfig.from_flat(exported_config) == in_sweep.cfg
    session = onnx_session(exported / "model.onnx")
    for batch in (1, 5):  # the batch dimension is dynamic
        assert run_onnx(session, pixels[:batch]).shape == (batch, 2)
    # The ONNX graph carries the temperature: its logits are the calibrated ones.
    assert metrics["temperature"] == temperature and structure["temperature"] == temperature
    assert torch.allclose(torch.from_numpy(run_onnx(session, pixels)), expected, rtol=0, atol=1e-4)
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n") and metrics["data_fingerprint"] in card
    assert f"temperature T = {temperature:.4g}" in card and "calibrated=False" in card


@pytest.mark.slow
def test_evaluate_cli_on_the_export_reproduces_the_sweeps_validation_metrics(sweep, exported, tmp_path):
    from trainables.evaluate.cli import main as evaluate_main

    settings, measured, _ = sweep
    target = tmp_path / "valid.json"
    data = Path(settings.results_dir) / "data" / "digits"
    assert evaluate_main(["--model", str(exported), "--data", str(data), "--split", "valid",
                          "--json", str(target), "--resamples", "200"]) == 0
    scored = json.loads(target.read_text())
    for name in ("val_auroc", "val_auprc", "val_accuracy", "val_sens_at_95spec", "val_ece"):
        assert scored[name] == measured[1][name]
        assert scored[f"{name}_lo"] <= scored[name] <= scored[f"{name}_hi"]
    # The raw probabilities as the sweep scored them, then after the export's temperature (fitted on valid).
    assert scored["temperature"] == measured[1]["val_temperature"]
    assert scored["val_nll_cal"] < scored["val_nll"] == pytest.approx(measured[1]["val_nll"])


@pytest.fixture
def listed_sweep(tmp_path):
    """A sweep whose study lists trials without any model behind them: 0 COMPLETE, 1 FAIL, 2 RUNNING."""
    settings = SweepSettings(name=NAME, results_dir=str(tmp_path), storage_url=None, preset="digits",
                             space="default", sampler="tpe", seed=0, objectives=OBJECTIVES, num_samples=3,
                             max_concurrent=1, trial_resources={"cpu": 1}, max_failures=0, base=BASE)
    write_settings(settings)
    study = optuna.create_study(study_name=NAME, storage=make_storage(None, tmp_path, NAME),
                                directions=["maximize", "minimize", "minimize"])
    study.set_metric_names([name for name, _ in OBJECTIVES])
    study.add_trial(optuna.trial.create_trial(values=[0.9, 1000.0, 1.0], system_attrs={"fixed_params": {}}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    study.ask()
    return settings


@pytest.mark.parametrize("trial, message", [("1", "trial 1 of sweep 'tiny' is FAIL, not COMPLETE"),
                                            ("2", "trial 2 of sweep 'tiny' is RUNNING, not COMPLETE"),
                                            ("42", "sweep 'tiny' has no trial 42 (its trials: 0..2)"),
                                            ("best", "--trial must be a trial number")])
def test_a_trial_that_is_not_complete_or_does_not_exist_exits_2_with_one_line(listed_sweep, tmp_path, capsys,
                                                                             trial, message):
    with pytest.raises(SystemExit) as caught:
        _export(listed_sweep, "--trial", trial, "--out", str(tmp_path / "out"))
    assert caught.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_export_without_a_trial_or_with_export_flags_alone_exits_2(listed_sweep, capsys):
    with pytest.raises(SystemExit) as caught:
        _export(listed_sweep)
    assert caught.value.code == 2 and "--export needs --trial" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        run_main(["--trial", "3", "--onnx"])
    assert caught.value.code == 2 and "--trial, --onnx: only valid with --export NAME" in capsys.readouterr().err


def _unwritable_outs(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    outs = [tmp_path / "notes.txt" / "trial-0"]
    return outs + ([Path("/proc/x")] if sys.platform.startswith("linux") else [])


def test_an_unwritable_out_exits_2_naming_it_before_the_trial_is_rebuilt(listed_sweep, tmp_path, capsys,
                                                                         monkeypatch):
    def rebuild(*args, **kwargs):
        raise AssertionError("the export rebuilt the trial before checking --out")

    monkeypatch.setattr("trainables.trial.build_trial_model", rebuild)
    for out in _unwritable_outs(tmp_path):
        with pytest.raises(SystemExit) as caught:
            _export(listed_sweep, "--trial", "0", "--out", str(out))
        line = capsys.readouterr().err.splitlines()[-1]
        assert caught.value.code == 2 and f"cannot write the export folder {out}: " in line, line
        assert line.endswith("; pass another --out")


def test_an_unwritable_json_exits_2_naming_it_before_scoring(tmp_path, capsys):
    from trainables.evaluate.cli import main as evaluate_main

    for target in _unwritable_outs(tmp_path):
        with pytest.raises(SystemExit) as caught:  # the model is missing too: the --json check comes first
            evaluate_main(["--model", str(tmp_path / "none"), "--data", str(tmp_path), "--split", "valid",
                           "--json", str(target / "valid.json")])
        line = capsys.readouterr().err.splitlines()[-1]
        assert caught.value.code == 2 and f"--json: {target / 'valid.json'}: " in line, line


@pytest.mark.slow
def test_an_interrupted_export_leaves_nothing_at_the_destination(sweep, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("injected failure while writing the model card")

    monkeypatch.setattr(export_module, "_write_model_card", fail)
    with pytest.raises(RuntimeError, match="injected"):
        _export(sweep[0], "--trial", "reference", "--out", str(tmp_path / "ref"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_reference_exports_to_the_default_folder_and_refuses_to_overwrite(sweep, capsys):
    settings = sweep[0]
    assert _export(settings, "--trial", "reference") == 0
    folder = Path(settings.results_dir) / NAME / "export" / "trial-0"
    assert json.loads((folder / "metrics.json").read_text())["role"] == "reference"
    with pytest.raises(SystemExit) as caught:
        _export(settings, "--trial", "reference")
    assert caught.value.code == 2 and "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_the_exported_temperature_lowers_the_digits_references_validation_nll(sweep, tmp_path):
    from compress import load_compressed
    from trainables.evaluate.evaluation import split_probabilities
    from trainables.evaluate.metrics import classification_metrics, temperature_scale

    settings, measured, _ = sweep
    assert _export(settings, "--trial", "reference", "--out", str(tmp_path / "ref")) == 0
    cfg = TrialConfig.from_flat(json.loads((tmp_path / "ref" / "config.json").read_text()))
    root = str(Path(settings.results_dir) / "data" / "digits")
    scored = {}
    for calibrated in (True, False):
        model = load_compressed(tmp_path / "ref", calibrated=calibrated)
        scored[calibrated] = split_probabilities(model, cfg, root, "valid", torch.device("cpu"))
    (labels, calibrated), (_, raw) = scored[True], scored[False]
    temperature = measured[0]["val_temperature"]
    assert classification_metrics(labels, raw)["nll"] == pytest.approx(measured[0]["val_nll"], abs=1e-6)
    assert classification_metrics(labels, calibrated)["nll"] < measured[0]["val_nll"]
    # load_compressed reproduces the calibrated probabilities the sweep's temperature gives.
    assert torch.allclose(calibrated, torch.from_numpy(temperature_scale(raw.numpy(), temperature)), atol=1e-5)


def test_a_trial_recorded_before_calibration_gets_its_temperature_from_its_stored_predictions(tmp_path):
    import numpy as np

    from trainables.cache import StageCache
    from trainables.evaluate.evaluation import Predictions
    from trainables.evaluate.metrics import fit_temperature
    from tune.report.summary import trial_temperature

    settings = SweepSettings(name=NAME, results_dir=str(tmp_path), storage_url=None, preset="digits",
                             space="default", sampler="tpe", seed=0, objectives=OBJECTIVES, num_samples=1,
                             max_concurrent=1, trial_resources={"cpu": 1}, max_failures=0, base=BASE)
    rng = np.random.default_rng(0)
    stored = Predictions(labels=np.repeat([0, 1], 50), probs=rng.uniform(size=100).astype(np.float32))
    StageCache(str(tmp_path)).get_or_compute("outcome", "0123abcd", stored.save)
    old = optuna.trial.create_trial(values=[0.9, 1.0, 1.0], user_attrs={"outcome_key": "0123abcd"})
    assert trial_temperature(settings, old) == pytest.approx(fit_temperature(stored.labels, stored.probs))
    assert trial_temperature(settings, optuna.trial.create_trial(values=[0.9, 1.0, 1.0])) is None
    recorded = optuna.trial.create_trial(values=[0.9, 1.0, 1.0], user_attrs={"val_temperature": 1.7})
    assert trial_temperature(settings, recorded) == 1.7


@pytest.mark.slow
def test_final_eval_reports_test_ece_before_and_after_each_trials_temperature(sweep):
    from tune.report.summary import final_eval

    settings, measured, _ = sweep
    study = optuna.load_study(study_name=NAME, storage=make_storage(None, Path(settings.results_dir), NAME))
    frame = final_eval(settings, study)
    for _, row in frame.iterrows():
        assert row["temperature"] == measured[int(row["number"])]["val_temperature"]
        assert 0.0 <= row["test_ece_cal"] <= 1.0 and row["test_ece_cal"] != row["test_ece"]
    text = (settings.local_dir / "final_eval.md").read_text()
    assert "test_ece_cal" in text and "fitted on the validation split" in text


@pytest.fixture(scope="module")
def int8_exported(sweep, tmp_path_factory):
    """A second study in the same results (its stages cache hits): the reference and an int8 trial, exported with ONNX."""
    settings, measured, context = sweep
    name = "tiny-int8"
    write_settings(SweepSettings(**{**settings.__dict__, "name": name}))
    study = optuna.create_study(study_name=name, storage=make_storage(None, settings.results_dir, name),
                                directions=["maximize", "minimize", "minimize"])
    study.set_metric_names([metric for metric, _ in OBJECTIVES])
    int8 = run_trial({**BASE, **INT8}, context)
    _tell(study, dict(SEED_CONFIG), measured[0], enqueued=True)
    _tell(study, INT8, int8)
    out = tmp_path_factory.mktemp("export-int8") / "trial-1"
    assert run_main(["--export", name, "--results-dir", settings.results_dir, "--trial", "1", "--out", str(out),
                     "--onnx"]) == 0
    return out, int8


INT8 = {**COMPRESSED, "compress.quant": "int8"}


@pytest.mark.slow
def test_an_int8_export_loads_in_a_fresh_process_and_scores_the_trials_auroc(sweep, int8_exported, tmp_path):
    from trainables.evaluate.cli import main as evaluate_main

    settings, _, context = sweep
    exported, measured = int8_exported
    in_sweep = build_trial_model({**BASE, **INT8}, context)
    pixels = export_module._validation_pixels(in_sweep.cfg, in_sweep.data_root)
    torch.save(pixels, tmp_path / "pixels.pt")
    subprocess.run([sys.executable, "-c", LOAD, str(exported), str(tmp_path / "pixels.pt"),
                    str(tmp_path / "logits.pt")], check=True, cwd=REPO, timeout=300)
    from compress import TemperatureScaled

    structure = json.loads((exported / "structure.json").read_text())
    deployed = TemperatureScaled(in_sweep.model, structure["temperature"]).eval()  # as load_compressed returns it
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "logits.pt"), deployed(pixels))  # int8 weights as stored
    assert structure["quant"] == "int8"
    onnx = json.loads((exported / "metrics.json").read_text())["onnx"]
    assert onnx["quant"] == "int8" and 0 < onnx["max_abs_diff"] <= onnx["tolerance"]
    target = tmp_path / "valid.json"
    assert evaluate_main(["--model", str(exported), "--data", str(Path(settings.results_dir) / "data" / "digits"),
                          "--split", "valid", "--json", str(target), "--resamples", "50"]) == 0
    assert json.loads(target.read_text())["val_auroc"] == measured["val_auroc"]


def test_a_bf16_trial_with_onnx_exits_2_before_it_is_rebuilt(listed_sweep, tmp_path, capsys):
    study = optuna.load_study(study_name=NAME, storage=make_storage(None, tmp_path, NAME))
    study.add_trial(optuna.trial.create_trial(values=[0.9, 1000.0, 1.0],
                                              user_attrs={CONFIG_ATTR: {"compress.quant": "bf16"}}))
    with pytest.raises(SystemExit) as caught:
        _export(listed_sweep, "--trial", "3", "--out", str(tmp_path / "out"), "--onnx")
    assert caught.value.code == 2
    assert "--onnx: trial 3 is compress.quant=bf16" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "out").exists()
