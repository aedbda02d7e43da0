import math
import os

import optuna
import pytest
from optuna.trial import TrialState

from tune.study import (
    GP_STARTUP_TRIALS,
    SweepSearch,
    StorageUnavailableError,
    StudyIncompleteError,
    close_orphans,
    dashboard_command,
    default_storage_url,
    make_sampler,
    make_storage,
    verify_study,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

METRICS = ["acc", "params", "latency_ms"]
MODES = ["max", "min", "min"]


def toy_space(trial):
    """x in [0, 1], a categorical; the third trial is told to fail."""
    trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_categorical("kind", ["a", "b"])
    return {"should_fail": trial.number == 2}


def _searcher(tmp_path, name="toy", points=(), metric=METRICS, mode=MODES):
    storage = make_storage(None, tmp_path, name)
    return SweepSearch(
        toy_space,
        metric=metric,
        mode=mode,
        storage=storage,
        study_name=name,
        sampler=make_sampler("random", seed=0),
        points_to_evaluate=points,
    )


def _result(x, **extra):
    return {"acc": 1 - x, "params": 100 * x, "latency_ms": 5 + x, "val_auprc": 0.5,
            "device": "cpu", "training_iteration": 1, "config/x": x, **extra}


# --- storage ---------------------------------------------------------------


def test_default_storage_is_sqlite_file_under_results_name(tmp_path):
    make_storage(None, tmp_path, "sweep1")
    assert (tmp_path / "sweep1" / "optuna.db").is_file()


def test_default_storage_rejects_remote_results_dir():
    with pytest.raises(ValueError, match="s3://bucket/results"):
        default_storage_url("s3://bucket/results", "sweep")


def test_unreachable_storage_url_names_the_url_without_password():
    url = "postgresql+psycopg2://me:hunter2@127.0.0.1:1/db"
    with pytest.raises(StorageUnavailableError) as info:
        make_storage(url, "/unused", "sweep")
    assert "127.0.0.1:1/db" in str(info.value) and "hunter2" not in str(info.value)


def test_sqlite_url_in_missing_folder_fails_with_url(tmp_path):
    url = f"sqlite:///{tmp_path}/no/such/dir/x.db"
    with pytest.raises(StorageUnavailableError, match="no/such/dir"):
        make_storage(url, tmp_path, "sweep")


def test_explicit_url_is_used(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path}/other.db", tmp_path, "sweep")
    optuna.create_study(storage=storage, study_name="s")
    assert (tmp_path / "other.db").is_file() and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(("name", "cls"), [
    ("tpe", optuna.samplers.TPESampler),
    ("nsga2", optuna.samplers.NSGAIISampler),
    ("gp", optuna.samplers.GPSampler),
    ("random", optuna.samplers.RandomSampler),
])
def test_make_sampler_returns_the_named_class(name, cls):
    assert type(make_sampler(name, seed=1)) is cls


def test_tpe_models_conditional_params_jointly_and_lies_only_for_concurrent_trials():
    # Optuna keeps these options private; they are what make_sampler documents for "tpe".
    one, four = make_sampler("tpe", seed=1), make_sampler("tpe", seed=1, max_concurrent=4)
    assert (one._multivariate, one._group, one._constant_liar) == (True, True, False)
    assert (four._multivariate, four._group, four._constant_liar) == (True, True, True)


def test_startup_trials_reach_each_sampler():
    assert make_sampler("tpe", seed=1, startup_trials=5)._n_startup_trials == 5
    assert make_sampler("gp", seed=1, startup_trials=8)._n_startup_trials == 8
    assert make_sampler("gp", seed=1)._n_startup_trials == GP_STARTUP_TRIALS == 4  # chosen by bench_samplers
    assert make_sampler("tpe", seed=1)._n_startup_trials == 10  # Optuna's
    assert make_sampler("nsga2", seed=1, startup_trials=12).population_size == 12
    assert make_sampler("tpe", seed=1, multivariate=False)._multivariate is False


def _two_running_proposals(max_concurrent: int, seed: int = 0) -> list[tuple[float, float]]:
    """Tell 12 trials of a two-objective problem, then ask two whose parameters are suggested before
    either is told (as Ray Tune asks while a trial runs); return the two proposals."""
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=make_sampler("tpe", seed, max_concurrent=max_concurrent, startup_trials=5))
    for _ in range(12):
        trial = study.ask()
        x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
        study.tell(trial, [x**2 + y, (1 - x) ** 2 + y])
    proposals = []
    for _ in range(2):
        trial = study.ask()
        proposals.append((trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)))
    return proposals


def test_constant_liar_spreads_concurrent_proposals():
    # Without the liar the second proposal, blind to the first, lands near it (0.05 apart on this
    # seed; distinct, not equal); with it, the running trial counts as a bad result there.
    (a, b), (c, d) = _two_running_proposals(max_concurrent=4), _two_running_proposals(max_concurrent=1)
    lied, blind = math.dist(a, b), math.dist(c, d)
    assert a != b and c != d
    assert lied > 2 * blind


def test_nsga2_keeps_optunas_default_population():
    default = optuna.samplers.NSGAIISampler().population_size
    assert make_sampler("nsga2", seed=1).population_size == default


def _first_draws(sampler, count=6):
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    draws = []
    for _ in range(count):
        trial = study.ask()
        draws.append((trial.suggest_float("x", 0.0, 1.0), trial.suggest_categorical("k", ["a", "b", "c"])))
        study.tell(trial, [draws[-1][0], draws[-1][0] ** 2])
    return draws


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp", "random"])
def test_make_sampler_is_seeded(name):
    assert _first_draws(make_sampler(name, seed=3)) == _first_draws(make_sampler(name, seed=3))
    assert _first_draws(make_sampler(name, seed=3)) != _first_draws(make_sampler(name, seed=4))


def test_make_sampler_rejects_unknown_name():
    with pytest.raises(ValueError, match="tpe, nsga2, gp, random.*'cmaes'"):
        make_sampler("cmaes", seed=1)


def test_dashboard_command_hides_password():
    cmd = dashboard_command("postgresql://me:hunter2@db.example/optuna")
    assert cmd.startswith("optuna-dashboard ") and "hunter2" not in cmd and "127.0.0.1" in cmd


# --- searcher, driven by hand ------------------------------------------------


def test_searcher_sets_directions_and_metric_names(tmp_path):
    study = _searcher(tmp_path).study
    assert study.metric_names == METRICS
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]


def test_searcher_rejects_mismatched_metric_and_mode(tmp_path):
    with pytest.raises(ValueError, match="equal length"):
        _searcher(tmp_path, metric=METRICS, mode=["max", "min"])


def test_searcher_rejects_existing_study_with_other_directions(tmp_path):
    _searcher(tmp_path)
    with pytest.raises(ValueError, match="directions"):
        _searcher(tmp_path, mode=["min", "min", "min"])


def test_seed_point_is_enqueued_once_across_restarts(tmp_path):
    _searcher(tmp_path, points=[{"x": 0.25, "kind": "a"}])
    study = _searcher(tmp_path, points=[{"x": 0.25, "kind": "a"}]).study
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_seed_point_is_the_first_suggestion(tmp_path):
    searcher = _searcher(tmp_path, points=[{"x": 0.25, "kind": "a"}])
    config = searcher.suggest("t0")
    assert config["x"] == 0.25 and config["kind"] == "a"


def test_completed_trial_has_values_and_secondary_metrics_as_user_attrs(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", _result(0.4))
    (trial,) = searcher.study.trials
    assert trial.state == TrialState.COMPLETE and trial.values == pytest.approx([0.6, 40, 5.4])
    assert trial.user_attrs["val_auprc"] == 0.5 and trial.user_attrs["device"] == "cpu"
    assert trial.user_attrs["config"] == {"x": 0.4} and trial.user_attrs["tune_trial_id"] == "t0"
    assert "acc" not in trial.user_attrs and "training_iteration" not in trial.user_attrs


def test_non_finite_secondary_metric_is_kept_as_text(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", _result(0.4, val_ece=math.nan))
    assert searcher.study.trials[0].user_attrs["val_ece"] == "nan"


def test_errored_trial_is_fail_with_reason_and_last_result(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t0")
    searcher.on_trial_result("t0", _result(0.3))
    searcher.on_trial_complete("t0", error=True)
    (trial,) = searcher.study.trials
    assert trial.state == TrialState.FAIL and "errored" in trial.user_attrs["fail_reason"]
    assert trial.user_attrs["val_auprc"] == 0.5


@pytest.mark.parametrize(
    "result, reason",
    [({"acc": 0.5, "params": 3.0}, "latency_ms"), (_result(0.1, acc=math.nan), "not finite")],
)
def test_result_optuna_would_reject_ends_fail_not_running(tmp_path, result, reason):
    searcher = _searcher(tmp_path)
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", result)
    (trial,) = searcher.study.trials
    assert trial.state == TrialState.FAIL and reason in trial.user_attrs["fail_reason"]


def test_trial_already_finished_in_storage_is_skipped(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t0")
    searcher.study.tell(0, [1.0, 2.0, 3.0])
    searcher.on_trial_complete("t0", _result(0.9))
    (trial,) = searcher.study.trials
    assert trial.values == [1.0, 2.0, 3.0] and "val_auprc" not in trial.user_attrs


# --- verify_study / close_orphans ------------------------------------------


def test_verify_study_counts_states_when_all_terminal(tmp_path):
    searcher = _searcher(tmp_path)
    for i, tid in enumerate(["t0", "t1"]):
        searcher.suggest(tid)
    searcher.on_trial_complete("t0", _result(0.2))
    searcher.on_trial_complete("t1", error=True)
    assert verify_study(searcher.study, ["t0", "t1"]) == {"COMPLETE": 1, "FAIL": 1}


def test_verify_study_raises_on_running_trial(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t0")
    with pytest.raises(StudyIncompleteError, match="t0 is RUNNING"):
        verify_study(searcher.study, ["t0"])


def test_verify_study_raises_on_unknown_tune_trial(tmp_path):
    searcher = _searcher(tmp_path)
    with pytest.raises(StudyIncompleteError, match="ghost has no Optuna trial"):
        verify_study(searcher.study, ["ghost"])


def test_close_orphans_fails_running_trials_but_keeps_resuming_ones(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t0")
    searcher.suggest("t1")
    assert close_orphans(searcher.study, keep_tune_trial_ids=["t1"]) == [0]
    states = [t.state for t in searcher.study.trials]
    assert states == [TrialState.FAIL, TrialState.RUNNING]


# --- the searcher inside real Ray Tune ---------------------------------------


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    tmp = tmp_path_factory.mktemp("ray")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")}
    os.environ["RAY_TMPDIR"] = str(tmp)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False)
    yield tmp
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_in_ray_tune_leaves_complete_and_fail_trials(ray_local, tmp_path):
    from ray import tune

    searcher = _searcher(tmp_path, name="raysweep", points=[{"x": 0.25, "kind": "a"}])
    tuner = tune.Tuner(
        _make_toy_trainable(),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=4, max_concurrent_trials=2),
        run_config=tune.RunConfig(
            name="raysweep", storage_path=str(tmp_path / "tune"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    grid = tuner.fit()
    study = optuna.load_study(study_name="raysweep", storage=make_storage(None, tmp_path, "raysweep"))
    tune_trial_ids = [trial.trial_id for trial in grid._experiment_analysis.trials]
    counts = verify_study(study, tune_trial_ids)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert counts == {"COMPLETE": 3, "FAIL": 1}
    assert trials[2].state == TrialState.FAIL
    assert trials[0].params == {"x": 0.25, "kind": "a"}
    assert study.metric_names == METRICS
    for trial in (t for t in trials if t.state == TrialState.COMPLETE):
        assert len(trial.values) == 3
        assert {"val_auprc", "device", "stage_s/compress", "config", "tune_trial_id"} <= set(
            trial.user_attrs
        )


def _make_toy_trainable():
    """Return the toy trainable; built in a function so Ray pickles it by value."""

    def toy_trainable(config):
        from ray import tune

        if config["should_fail"]:
            raise RuntimeError("this trial fails on purpose")
        x = config["x"]
        tune.report({"acc": 1 - x, "params": 100 * x + (config["kind"] == "b"),
                     "latency_ms": 5 + x, "val_auprc": x / 2, "device": "cpu",
                     "stage_s/compress": 0.01})

    return toy_trainable


@pytest.mark.parametrize("preset_name", ["digits", "pcam-local", "pcam-a100"])
def test_each_preset_gets_its_sampler_with_its_concurrency(tmp_path, preset_name):
    from tune.presets import get_preset
    from tune.sweep import SweepSettings, build_base, make_searcher

    preset = get_preset(preset_name)
    settings = SweepSettings(
        name="s", results_dir=str(tmp_path), storage_url=None, preset=preset.name, space=preset.space,
        sampler=preset.sampler, seed=0, objectives=preset.objectives, num_samples=preset.num_samples,
        max_concurrent=preset.max_concurrent, trial_resources=dict(preset.trial_resources),
        max_failures=preset.max_failures, base=build_base(preset, {}, preset.space))
    sampler = make_searcher(settings, make_storage(None, tmp_path, "s")).study.sampler
    expected = make_sampler(preset.sampler, 0, max_concurrent=preset.max_concurrent)
    assert type(sampler) is type(expected)
    if isinstance(sampler, optuna.samplers.TPESampler):
        assert sampler._constant_liar is (preset.max_concurrent > 1)
