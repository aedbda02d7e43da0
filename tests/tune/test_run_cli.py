"""The CLI's checks: bad flags exit 2 with one line naming the problem, before Ray starts."""

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search_spaces import searched_keys
from trainables.config import TrialConfig
from tune.presets import PRESETS
from tune.run import main, make_parser
from tune.study import make_storage
from tune.sweep import build_base, parse_objectives

REPO = Path(__file__).resolve().parents[2]
RUN = str(REPO / "tune" / "run.py")


def _cli(*args, cwd=None):
    """Run `python tune/run.py ARGS` from a clean working directory (not the repo)."""
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def _error(capsys, *args):
    """Run the CLI's main() in this process; return the last stderr line of its exit-2 error."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates_as_trial_config(name):
    preset = PRESETS[name]
    TrialConfig.from_flat(build_base(preset, {}, preset.space))


def _saved_sweep(results: Path, name: str = "six"):
    """Write sweep.json of a digits sweep of 6 trials with one --set, as a new sweep would."""
    from tune.run import _new_settings
    from tune.sweep import write_settings

    parser = make_parser()
    args = parser.parse_args(["--results-dir", str(results), "--name", name, "--num-samples", "6",
                              "--space", "compress_only", "--set", "finetune.epochs=2"])
    write_settings(_new_settings(args, parser))


def test_resume_refuses_a_defining_flag_that_differs_naming_saved_and_given(tmp_path, capsys):
    _saved_sweep(tmp_path)
    line = _error(capsys, "--results-dir", str(tmp_path), "--num-samples", "3", "--resume", "six")
    assert "--num-samples differs: saved 6, given 3" in line
    line = _error(capsys, "--results-dir", str(tmp_path), "--set", "finetune.epochs=3", "--resume", "six")
    assert "--set differs: saved --set finetune.epochs=2, given --set finetune.epochs=3" in line


def test_resume_accepts_the_repeated_command_line(tmp_path):
    from tune.run import _saved_settings

    _saved_sweep(tmp_path)
    parser = make_parser()
    args = parser.parse_args(["--results-dir", str(tmp_path), "--num-samples", "6", "--space", "compress_only",
                              "--set", "finetune.epochs=2", "--preset", "digits", "--seed", "0",
                              "--resume", "six"])
    settings = _saved_settings("six", args, parser, "--resume")
    assert (settings.name, settings.num_samples, settings.space) == ("six", 6, "compress_only")


def test_trial_resources_replace_the_presets_and_are_a_defining_flag(tmp_path, capsys):
    from tune.run import _new_settings

    parser = make_parser()
    args = parser.parse_args(["--results-dir", str(tmp_path), "--name", "r", "--trial-resources", "CPU=1.5,accel=1"])
    assert _new_settings(args, parser).trial_resources == {"cpu": 1.5, "accel": 1.0}
    _saved_sweep(tmp_path)  # the digits preset's cpu=0.1
    line = _error(capsys, "--results-dir", str(tmp_path), "--trial-resources", "cpu=2", "--resume", "six")
    assert "--trial-resources differs: saved cpu=0.1, given cpu=2" in line


@pytest.mark.parametrize("text", ["cpu", "cpu=-1", "cpu=nan", "=1", "gpu=0"])
def test_bad_trial_resources_exit_2_naming_the_value(text, capsys):
    line = _error(capsys, "--trial-resources", text)
    assert line.startswith("python tune/run.py: error: argument --trial-resources:") and text.split(",")[0] in line


_IMPORTS_AFTER = """
import runpy, sys
sys.argv = [{run!r}, *{args!r}]
try:
    runpy.run_path({run!r}, run_name="__main__")
except SystemExit as stop:
    code = stop.code
heavy = sorted(m for m in ("torch", "transformers", "ray", "ray.train", "ray.tune", "optuna") if m in sys.modules)
print(code, heavy)
"""


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["--num-samples", "0"], ["--report", "a", "--resume", "b"],
                                  ["--preset", "nope"], ["--set", "compress.tau_mlp=1.2"],
                                  ["--set", "model.backbone=vit-huge"], ["--objectives", "val_auroc:max,foo"]])
def test_help_argument_and_config_errors_import_no_torch_ray_or_optuna(args, tmp_path):
    # The config layer (trainables.config, compress.config, the search-space tables' names) is torch-free,
    # so the most common mistake, a bad --set value, is answered in a fraction of a second.
    proc = subprocess.run([sys.executable, "-c", _IMPORTS_AFTER.format(run=RUN, args=args)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    code, heavy = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert (code, heavy) == ("0" if args == ["--help"] else "2", "[]"), proc.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_objectives_parse(name):
    text = ",".join(f"{n}:{m}" for n, m in PRESETS[name].objectives)
    assert parse_objectives(text) == tuple(PRESETS[name].objectives)


def test_help_explains_every_flag():
    text = make_parser().format_help()
    for flag in ("--preset", "--space", "--num-samples", "--max-concurrent", "--name", "--results-dir",
                 "--storage", "--sampler", "--objectives", "--set", "--seed", "--resume",
                 "--debug-trial", "--report", "--final-eval", "--wandb"):
        assert flag in text


@pytest.mark.slow
def test_bad_set_value_exits_2_naming_the_key(tmp_path):
    proc = _cli("--results-dir", str(tmp_path), "--set", "compress.tau_mlp=1.5", cwd=tmp_path)
    assert proc.returncode == 2 and "compress.tau_mlp" in proc.stderr.splitlines()[-1]
    assert "Ray" not in proc.stderr  # failed before Ray started


def test_unknown_set_key_exits_2_naming_the_key(tmp_path, capsys):
    assert "'finetune.epoch'" in _error(capsys, "--results-dir", str(tmp_path), "--set", "finetune.epoch=1")


def test_set_of_a_searched_key_is_refused(tmp_path, capsys):
    line = _error(capsys, "--results-dir", str(tmp_path), "--space", "compress_only",
                  "--set", "tokens.r_max=0.3")
    assert "tokens.r_max" in line and "searched by space" in line


def test_unknown_space_exits_2(tmp_path, capsys):
    assert "'nope'" in _error(capsys, "--results-dir", str(tmp_path), "--space", "nope")


@pytest.mark.parametrize("objectives", ["val_auroc:max,params", "val_auroc:best", "acc:max",
                                        "params:min,params:min"])
def test_bad_objectives_exit_2(tmp_path, capsys, objectives):
    assert "--objectives" in _error(capsys, "--results-dir", str(tmp_path), "--objectives", objectives)


def test_unreachable_storage_exits_2(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/missing/dir/x.db"
    assert "missing/dir" in _error(capsys, "--results-dir", str(tmp_path), "--storage", url, "--name", "s")


@pytest.mark.slow
def test_existing_sweep_name_without_resume_is_refused(tmp_path):
    # Through the script from outside the repo: also checks `python tune/run.py` imports.
    optuna.create_study(storage=make_storage(None, tmp_path, "taken"), study_name="taken")
    proc = _cli("--results-dir", str(tmp_path), "--name", "taken", cwd=tmp_path)
    last = proc.stderr.splitlines()[-1]
    assert proc.returncode == 2 and "--resume taken" in last


def test_resume_of_unknown_name_exits_2(tmp_path, capsys):
    assert "'ghost'" in _error(capsys, "--results-dir", str(tmp_path), "--resume", "ghost")


def test_report_of_unknown_name_exits_2(tmp_path, capsys):
    assert "'ghost'" in _error(capsys, "--results-dir", str(tmp_path), "--report", "ghost")


def test_remote_results_dir_needs_storage(capsys):
    assert "--storage" in _error(capsys, "--results-dir", "s3://bucket/prefix", "--name", "x")


def test_searched_keys_of_default_space_cover_its_conditional_params():
    keys = searched_keys("default")
    assert {"finetune.method", "finetune.lora_rank", "prehab.lambda", "compress.tau_svd"} <= keys


def test_build_base_types_override_values():
    base = build_base(PRESETS["digits"], {"finetune.epochs": "2"}, "compress_only")
    assert base["finetune.epochs"] == 2


@pytest.mark.parametrize("problem", [
    "missing bucket", pytest.param("wrong endpoint", marks=pytest.mark.slow),  # the S3 client retries ~6 s
    "unknown option"])
def test_an_object_store_results_dir_that_cannot_be_used_is_one_line_and_nothing_written(
        problem, s3_server, tmp_path, capsys):
    uri = {"missing bucket": f"s3://no-such-bucket/x?endpoint_override={s3_server.endpoint}&scheme=http",
           # nothing listens on port 9 (discard) of the loopback address
           "wrong endpoint": "s3://vitsweep-results/x?endpoint_override=127.0.0.1:9&scheme=http",
           "unknown option": f"{s3_server.uri('x')}&colour=red"}[problem]
    db = tmp_path / "optuna.db"
    line = _error(capsys, "--results-dir", uri, "--storage", f"sqlite:///{db}", "--name", "s")
    assert line.startswith(f"python tune/run.py: error: --results-dir {uri!r}: ")
    assert {"missing bucket": "bucket 'no-such-bucket' does not exist", "wrong endpoint": "cannot reach",
            "unknown option": "pyarrow cannot open it"}[problem] in line
    assert not db.exists() and not any(tmp_path.iterdir())


def test_tunes_experiment_folder_is_under_the_sweep_locally_and_on_an_object_store(tmp_path, s3_server):
    from tune.sweep import tune_experiment_path

    assert tune_experiment_path(str(tmp_path), "s") == (str(tmp_path / "s" / "tune"), None)
    path, fs = tune_experiment_path(s3_server.uri("prefix"), "s")
    assert path == "vitsweep-results/prefix/s/tune" and fs.type_name == "s3"


@pytest.mark.parametrize("mode", [[], ["--debug-trial"]], ids=["sweep", "debug-trial"])
def test_an_unwritable_results_dir_exits_2_naming_it_before_any_work(tmp_path, capsys, monkeypatch, mode):
    def work(*args, **kwargs):
        raise AssertionError("the CLI started work before checking --results-dir")

    monkeypatch.setattr("tune.run._new_settings", work)
    monkeypatch.setattr("tune.run._check_local_inputs", work)
    (tmp_path / "notes.txt").write_text("x")
    results = tmp_path / "notes.txt" / "results"
    line = _error(capsys, "--results-dir", str(results), *mode)
    assert line.endswith(f"--results-dir: {results}: {tmp_path / 'notes.txt'} is not a folder")
