"""--warm-start: a finished sweep's trials seed a new study (with their origin), those outside the new
space or config are left out, and a sweep whose objective values cannot be compared is refused."""

import json
import warnings

import optuna
import pytest

from search_spaces import load_table
from tune.presets import DEFAULT_OBJECTIVES, get_preset
from tune.report.reports import reference_row, trials_frame
from tune.run import main as run_main
from tune.study import make_storage
from tune.sweep import SweepSettings, build_base, make_searcher, read_settings, write_settings
from tune.warm_start import SUMMARY_ATTR, WARM_FRONT_ATTR, WARM_START_ATTR, warm_start_notes

optuna.logging.set_verbosity(optuna.logging.WARNING)

SEED = {"compress.tau_heads": 0.89, "compress.tau_mlp": 0.975, "compress.tau_svd": 0.975,
        "compress.svd_space": "raw", "tokens.enabled": False}
# Rows the default space gained after the earlier sweep ran: the seed point takes the notes' rule, unquantized.
ADDED_SEED_ROWS = {"compress.importance": "energy", "compress.allocation": "per_layer", "compress.quant": "none"}
FULL = {"finetune.method": "full", "model.head": "linear", "eval.tta": "none", "prehab.enabled": False}
# The earlier sweep searched the default space: #0 is the new sweep's seed point, #1 a LoRA fine-tune
# (the new sweep fine-tunes in full: no configuration of it), #2 failed, #3 prunes tokens.
OLD_TRIALS = [
    ({**FULL, **SEED}, [0.95, 1000.0, 2.0]),
    ({**FULL, **SEED, "finetune.method": "lora", "finetune.lora_rank": 8, "finetune.lora_mlp": True},
     [0.96, 900.0, 2.0]),
    ({**FULL, **SEED, "compress.tau_heads": 0.7}, None),
    ({**FULL, **SEED, "compress.tau_mlp": 0.8, "tokens.enabled": True, "tokens.r_max": 0.3, "tokens.alpha": 1.5,
      "tokens.train_from_epoch": 0}, [0.93, 600.0, 1.5]),
]


def _settings(tmp_path, name, space, warm_start=(), objectives=DEFAULT_OBJECTIVES, num_samples=8):
    return SweepSettings(name=name, results_dir=str(tmp_path), storage_url=None, preset="digits", space=space,
                         sampler="tpe", seed=0, objectives=objectives, num_samples=num_samples, max_concurrent=1,
                         trial_resources={"cpu": 0.1}, max_failures=0,
                         base=build_base(get_preset("digits"), {}, space), warm_start=tuple(warm_start))


@pytest.fixture
def old_sweep(tmp_path):
    """A finished sweep 'old' over the default space with OLD_TRIALS."""
    settings = _settings(tmp_path, "old", "default")
    write_settings(settings)
    study = optuna.create_study(study_name="old", storage=make_storage(None, tmp_path, "old"),
                                directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name for name, _ in DEFAULT_OBJECTIVES])
    distributions = load_table("default").distributions()
    for params, values in OLD_TRIALS:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, values=values,
            state=optuna.trial.TrialState.COMPLETE if values else optuna.trial.TrialState.FAIL,
            user_attrs={"tune_trial_id": "abc_00000", "params_uncompressed": 1200}))
    return settings


def _warm_study(tmp_path):
    settings = _settings(tmp_path, "new", "compress_only", warm_start=("old",))
    return make_searcher(settings, make_storage(None, tmp_path, "new")).study


def test_warm_started_study_holds_the_earlier_trials_with_their_origin(old_sweep, tmp_path):
    study = _warm_study(tmp_path)
    added = {t.user_attrs[WARM_START_ATTR]: t for t in study.trials if WARM_START_ATTR in t.user_attrs}
    assert sorted(added) == ["old#0", "old#3"]
    assert added["old#3"].values == [0.93, 600.0, 1.5]
    assert added["old#3"].params["tokens.r_max"] == 0.3 and "finetune.method" not in added["old#3"].params
    assert "tune_trial_id" not in added["old#0"].user_attrs  # another sweep's Tune trial
    assert added["old#0"].user_attrs["params_uncompressed"] == 1200


def test_trials_outside_the_new_space_or_config_are_left_out_and_counted(old_sweep, tmp_path):
    study = _warm_study(tmp_path)
    counts = study.user_attrs[SUMMARY_ATTR]["sweeps"]["old"]
    assert counts == {"trials": 4, "added": 2, "outside": 1, "not_complete": 1, "unrecorded": 0}
    assert "2 of the 4 trials of sweep 'old' (1 outside this space or config, 1 not complete: left out)" \
        in warm_start_notes(study)[0]


def test_seed_point_first_then_the_front_not_already_queued(old_sweep, tmp_path):
    study = _warm_study(tmp_path)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert waiting[0].number == 0 and waiting[0].system_attrs["fixed_params"] == {**SEED, **ADDED_SEED_ROWS}
    # old#0 is the seed point, which runs already: only old#3 is re-run.
    assert [t.user_attrs.get(WARM_FRONT_ATTR) for t in waiting[1:]] == ["old#3"]


def test_warm_start_applies_once(old_sweep, tmp_path):
    _warm_study(tmp_path)
    study = _warm_study(tmp_path)  # the searcher built again on the same study
    assert sum(WARM_START_ATTR in t.user_attrs for t in study.trials) == 2


def test_reference_is_never_a_warm_start_trial(old_sweep, tmp_path):
    study = _warm_study(tmp_path)
    seed, rerun = study.ask(), study.ask()  # the queued seed point, then the queued front point
    study.tell(seed, state=optuna.trial.TrialState.FAIL)
    study.tell(rerun, [0.93, 600.0, 1.4])
    assert rerun.user_attrs[WARM_FRONT_ATTR] == "old#3"
    assert reference_row(trials_frame(study), DEFAULT_OBJECTIVES) is None


def _new_sweep(tmp_path, *flags):
    return run_main(["--name", "new", "--results-dir", str(tmp_path), "--no-retime", "--warm-start", "old", *flags])


@pytest.mark.parametrize(("flags", "named"), [
    (["--set", "eval.latency_batch=4"], "another trial config (eval.latency_batch 8 there, 4 here)"),
    (["--set", "data.val_limit=100"], "other data (data.val_limit 0 there, 100 here)"),
    (["--set", "finetune.epochs=2"], "another trial config (finetune.epochs 3 there, 2 here)"),
])
def test_incomparable_warm_start_is_one_line_exit_2(old_sweep, tmp_path, capsys, flags, named):
    with pytest.raises(SystemExit) as exited:
        _new_sweep(tmp_path, *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2
    assert named in err[-1] and err[-1].startswith("python tune/run.py: error: --warm-start old:")
    assert read_settings(str(tmp_path), "new") is None


def test_other_objectives_are_read_from_what_each_trial_recorded(old_sweep, tmp_path):
    from tune.sweep import make_searcher as searcher_of

    objectives = (("params", "min"), ("val_auroc", "max"), ("params_uncompressed", "min"))
    settings = _settings(tmp_path, "new", "compress_only", warm_start=("old",), objectives=objectives)
    study = searcher_of(settings, make_storage(None, tmp_path, "new")).study
    added = {t.user_attrs[WARM_START_ATTR]: t.values for t in study.trials if WARM_START_ATTR in t.user_attrs}
    # Reordered, one dropped (latency_ms) and one read from a user attribute the trials recorded.
    assert added == {"old#0": [1000.0, 0.95, 1200.0], "old#3": [600.0, 0.93, 1200.0]}


def test_a_trial_without_a_value_of_this_sweeps_objectives_is_left_out_and_counted(old_sweep, tmp_path):
    settings = _settings(tmp_path, "new", "compress_only", warm_start=("old",),
                         objectives=(("val_auroc", "max"), ("gflops", "min")))
    study = make_searcher(settings, make_storage(None, tmp_path, "new")).study
    assert not any(WARM_START_ATTR in t.user_attrs for t in study.trials)
    assert study.user_attrs[SUMMARY_ATTR]["sweeps"]["old"] == {
        "trials": 4, "added": 0, "outside": 0, "not_complete": 1, "unrecorded": 3}
    assert "0 of the 4 trials of sweep 'old' (1 not complete, 3 without this sweep's objectives or budget metrics: " \
           "left out)" \
        in warm_start_notes(study)[0]


def test_with_a_budget_the_added_trials_carry_their_constraints_and_the_gp_sampler_models_them(old_sweep, tmp_path):
    import dataclasses

    from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

    from tune.budget import parse_budget

    settings = dataclasses.replace(_settings(tmp_path, "new", "compress_only", warm_start=("old",)),
                                   sampler="gp", budget=tuple(parse_budget("params<=700")))
    study = make_searcher(settings, make_storage(None, tmp_path, "new")).study
    added = {t.user_attrs[WARM_START_ATTR]: list(t.constraints.values()) for t in study.trials
             if WARM_START_ATTR in t.user_attrs}
    assert added == {"old#0": [300.0], "old#3": [-100.0]}  # params - 700
    # The samplers refuse a study in which only some complete trials have constraints (GP: ValueError on
    # ask); with two more constrained trials GP is past its start-up and fits its model on all four.
    distributions = load_table("compress_only").distributions()
    for tau, params in ((0.6, 650.0), (0.5, 500.0)):
        study.add_trial(optuna.trial.create_trial(
            params={**SEED, **ADDED_SEED_ROWS, "compress.tau_mlp": tau},
            distributions={k: distributions[k] for k in {**SEED, **ADDED_SEED_ROWS}},
            values=[0.9, params, 1.0], system_attrs={_CONSTRAINTS_KEY: [params - 700]}))
    for _ in study.get_trials(states=(optuna.trial.TrialState.WAITING,)):
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # the queued seed and front re-runs
    trial = study.ask()
    load_table("compress_only").suggest(trial)
    assert 0.2 <= trial.params["compress.tau_mlp"] <= 1.0


def test_unknown_warm_start_sweep_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        _new_sweep(tmp_path)
    assert exited.value.code == 2
    assert "--warm-start old: no sweep named 'old' under" in capsys.readouterr().err


def test_sweep_json_without_warm_start_loads(tmp_path):
    data = json.loads(_settings(tmp_path, "before", "compress_only").to_json())
    del data["warm_start"]
    assert SweepSettings.from_json(json.dumps(data)).warm_start == ()


def test_pareto_md_says_where_the_trials_came_from(old_sweep, tmp_path, monkeypatch):
    from tune.report import summary

    study = _warm_study(tmp_path)
    for values in ([0.95, 1000.0, 2.1], [0.93, 600.0, 1.4]):  # the seed point, then old#3 re-run
        trial = study.ask()
        trial.set_user_attr("params_uncompressed", 1200)
        study.tell(trial, values)
    monkeypatch.setattr(summary, "predictions_loader", lambda _: lambda row: None)
    settings = _settings(tmp_path, "new", "compress_only", warm_start=("old",))
    written = summary.build_reports(settings, study)
    text = written["pareto.md"].read_text(encoding="utf-8")
    assert "Warm start: 2 trials added as measured, 2 of the 4 trials of sweep 'old'" in text
    assert "1 of their 2 front configurations re-run here first" in text
    assert "This sweep ran 2 trials of its own" in text
