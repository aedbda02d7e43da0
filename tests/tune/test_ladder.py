"""The ladder (--ladder): rungs of the seed configuration with its thresholds lowered together, queued after
the seed point, marked, never the reference, and a defining flag of the sweep."""

import json

import optuna
import pytest

from search_spaces import LADDER_KEYS, SEED_CONFIG, config_values, ladder_points, load_table, seed_points
from trainables.config import TrialConfig
from tune.presets import get_preset
from tune.report.reports import reference_row, trials_frame
from tune.report.summary import ladder_notes
from tune.run import _new_settings, main, make_parser
from tune.study import make_storage
from tune.sweep import LADDER_ATTR, SweepSettings, build_base, default_ladder, make_searcher, read_settings

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", ["compress_only", "default"])
def test_rungs_are_the_seed_point_with_its_thresholds_lowered_together(name):
    (seed,) = seed_points(name, {"finetune.method": "full"})
    rungs = ladder_points(name, {"finetune.method": "full"}, 4)
    assert len(rungs) == 4
    distributions = load_table(name).distributions()
    for rung in rungs:
        assert {k: v for k, v in rung.items() if k not in LADDER_KEYS} == {
            k: v for k, v in seed.items() if k not in LADDER_KEYS}
        assert all(distributions[k]._contains(distributions[k].to_internal_repr(v)) for k, v in rung.items())
        TrialConfig.from_flat({**build_base(get_preset("digits"), {}, name), **config_values(rung)})
    # [0.2, 1] in five steps; tau_svd's range starts at 0.5, so the last rung clips it there.
    assert [r["compress.tau_mlp"] for r in rungs] == pytest.approx([0.84, 0.68, 0.52, 0.36])
    assert [r["compress.tau_heads"] for r in rungs] == [r["compress.tau_mlp"] for r in rungs]
    assert [r["compress.tau_svd"] for r in rungs] == pytest.approx([0.84, 0.68, 0.52, 0.5])


def test_a_space_without_thresholds_has_no_ladder_and_a_negative_count_is_refused():
    assert ladder_points("seed_only", {}, 4) == []
    assert ladder_points("compress_only", {}, 0) == []
    with pytest.raises(ValueError, match="ladder count must be >= 0, got -1"):
        ladder_points("compress_only", {}, -1)


def test_the_default_ladder_needs_a_sweep_of_16_trials():
    assert [default_ladder(n) for n in (1, 15, 16, 48)] == [0, 0, 4, 4]


def _settings(tmp_path, ladder, num_samples=24):
    return SweepSettings(name="s", results_dir=str(tmp_path), storage_url=None, preset="digits",
                         space="compress_only", sampler="tpe", seed=0,
                         objectives=(("val_auroc", "max"), ("params", "min")), num_samples=num_samples,
                         max_concurrent=1, trial_resources={"cpu": 0.1}, max_failures=0,
                         base=build_base(get_preset("digits"), {}, "compress_only"), ladder=ladder)


def test_the_searcher_queues_the_seed_point_then_the_rungs_marked_once(tmp_path):
    settings = _settings(tmp_path, 3)
    make_searcher(settings, make_storage(None, tmp_path, "s"))
    study = make_searcher(settings, make_storage(None, tmp_path, "s")).study  # a resume builds it again
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 4
    assert waiting[0].system_attrs["fixed_params"]["compress.tau_mlp"] == SEED_CONFIG["compress.tau_mlp"]
    assert LADDER_ATTR not in waiting[0].user_attrs
    assert [t.user_attrs[LADDER_ATTR] for t in waiting[1:]] == [1, 2, 3]
    assert [t.system_attrs["fixed_params"]["compress.tau_mlp"] for t in waiting[1:]] == pytest.approx([0.8, 0.6, 0.4])


def test_a_rung_is_never_the_reference_and_pareto_md_names_the_rungs(tmp_path):
    study = make_searcher(_settings(tmp_path, 2), make_storage(None, tmp_path, "s")).study
    seed, first, second = study.ask(), study.ask(), study.ask()
    for trial in (seed, first, second):
        load_table("compress_only").suggest(trial)  # the queued values, as a sweep's trials suggest them
    study.tell(seed, state=optuna.trial.TrialState.FAIL)
    study.tell(first, [0.9, 1000.0])
    study.tell(second, [0.8, 500.0])
    objectives = (("val_auroc", "max"), ("params", "min"))
    assert reference_row(trials_frame(study), objectives) is None  # the seed failed; no rung stands in
    assert ladder_notes(study) == [
        "Ladder (--ladder 2): trials #1 at 0.733333, #2 at 0.466667 ran the seed configuration with its "
        "thresholds lowered together to that value (each clipped to its range), so the front spans the sizes "
        "from the first trials."]
    assert ladder_notes(optuna.create_study(directions=["maximize", "minimize"])) == []


def _settings_from(tmp_path, *flags):
    parser = make_parser()
    return _new_settings(parser.parse_args(["--results-dir", str(tmp_path), "--name", "s", *flags]), parser)


def test_the_ladder_flag_is_saved_and_defining_on_resume(tmp_path, capsys):
    from tune.sweep import write_settings

    assert _settings_from(tmp_path, "--num-samples", "48").ladder == 4
    assert _settings_from(tmp_path, "--num-samples", "8").ladder == 0
    settings = _settings_from(tmp_path, "--num-samples", "8", "--ladder", "2")
    assert settings.ladder == 2
    write_settings(settings)
    assert read_settings(str(tmp_path), "s").ladder == 2
    with pytest.raises(SystemExit) as exited:
        main(["--results-dir", str(tmp_path), "--ladder", "3", "--resume", "s"])
    assert exited.value.code == 2
    assert "--ladder differs: saved 2, given 3" in capsys.readouterr().err


def test_a_sweep_saved_before_the_ladder_loads_without_one(tmp_path):
    data = json.loads(_settings(tmp_path, 4).to_json())
    del data["ladder"]
    assert SweepSettings.from_json(json.dumps(data)).ladder == 0


@pytest.mark.parametrize(("flags", "message"), [
    (["--num-samples", "4", "--ladder", "4"], "--ladder 4: the seed point and 4 rungs are more than the 4 trials "
                                              "of --num-samples; give at most 3"),
    (["--ladder", "-1"], "argument --ladder: must be an integer >= 0, got -1"),
])
def test_a_ladder_larger_than_the_sweep_or_negative_is_one_line_exit_2(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exited:
        main(["--results-dir", str(tmp_path), *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())
