"""Training-time token pruning shares fine-tunes: its schedule comes from a declared grid, the
fine-tune key depends only on the rows that key training, and the sweep's printed bound holds."""

import json
from collections import defaultdict

import optuna
import pytest

from search_spaces import config_values, load_space, training_rows
from search_spaces._table import Param, Table, categorical, uniform
from trainables.config import TrialConfig
from trainables.stages import finetune_key_config
from tune.presets import PRESETS
from tune.sweep import _assignments, build_base, training_stage_bound

optuna.logging.set_verbosity(optuna.logging.WARNING)
BASE = build_base(PRESETS["pcam-local"], {}, "default")
GRID = {"tokens.train_r_max": {0.3, 0.6}, "tokens.train_alpha": {1.2, 2.0}}


def _draws(sampler, n: int) -> list[dict]:
    study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
    space, draws = load_space("default"), []
    for index in range(n):
        trial = study.ask()
        constants = space(trial) or {}
        draws.append({**trial.params, **constants})
        study.tell(trial, [float(index % 3), float(index % 5)])
    return draws


def _finetune_key(draw: dict) -> str:
    return json.dumps(finetune_key_config(TrialConfig.from_flat({**BASE, **config_values(draw)})), sort_keys=True)


@pytest.fixture(scope="module")
def random_draws():
    return _draws(optuna.samplers.RandomSampler(seed=0), 200)


def test_a_training_pruned_draw_takes_its_schedule_from_the_grid(random_draws):
    trained = [draw for draw in random_draws if draw.get("tokens.train_from_epoch") == "middle"]
    assert trained
    for draw in trained:
        assert all(draw[key] in values for key, values in GRID.items())
    untrained = [draw for draw in random_draws if draw.get("tokens.train_from_epoch") != "middle"]
    assert not any(key in draw for draw in untrained for key in GRID)


def test_the_finetune_key_depends_only_on_the_training_rows(random_draws):
    rows = training_rows("default")["finetune"]
    keys = defaultdict(set)
    for draw in random_draws:
        keys[tuple(draw.get(row) for row in rows)].add(_finetune_key(draw))
    assert all(len(found) == 1 for found in keys.values())
    assert any(len([d for d in random_draws if tuple(d.get(r) for r in rows) == group]) > 1
               for group in keys if "middle" in group)   # training-pruned draws that share a fine-tune


def test_the_bound_is_the_grid_times_the_other_finetune_choices(random_draws):
    # methods: head_only, full, lora x 4 ranks x 2 MLP choices = 10; heads 3; token pruning:
    # none or inference only (one fine-tune) or trained with one of 2 x 2 schedules, fused or not = 9
    assert training_stage_bound("default", BASE) == {"finetune": 10 * 3 * 9, "prehab": 270 * 7 * 4 * 2}
    assert len({_finetune_key(draw) for draw in random_draws}) <= 270
    assert training_stage_bound("compress_only", BASE) == {"finetune": 1, "prehab": 0}


def test_a_seeded_12_trial_tpe_sweep_stays_under_the_bound_and_shares_a_finetune():
    draws = _draws(optuna.samplers.TPESampler(seed=0, n_startup_trials=5), 12)
    keys = [_finetune_key(draw) for draw in draws]
    assert len(set(keys)) <= training_stage_bound("default", BASE)["finetune"]
    assert len(set(keys)) < len(keys)


def test_a_continuous_row_that_keys_training_is_refused():
    table = Table((Param("tokens.train_r_max", uniform(0.1, 0.9)),))
    with pytest.raises(ValueError, match="tokens.train_r_max keys a training stage but is not categorical"):
        _assignments(table)


def test_assignments_respect_conditions_and_switch_constants():
    table = Table((Param("finetune.method", categorical("full", "lora")),
                   Param("finetune.lora_rank", categorical(4, 8), when=("finetune.method", "lora"))))
    assert _assignments(table) == [{"finetune.method": "full"}, {"finetune.method": "lora", "finetune.lora_rank": 4},
                                   {"finetune.method": "lora", "finetune.lora_rank": 8}]


class _Stop(Exception):
    pass


def test_the_sweep_prints_the_bound_before_it_starts(tmp_path, capsys, monkeypatch):
    from tune.run import main
    import tune.sweep

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(tune.sweep, "run_tune", stop)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(_Stop):
        main(["--preset", "digits", "--space", "default", "--name", "bound", "--results-dir", str(tmp_path / "r"),
              "--num-samples", "12"])
    assert ("training stages space default can request: at most 270 fine-tunes and 15120 prehab stages"
            in capsys.readouterr().out)


def test_a_space_that_prunes_while_training_after_the_last_epoch_is_refused_with_one_line(monkeypatch):
    import search_spaces.compress_only as compress_only
    from search_spaces.default import TOKENS_ON, TRAIN_R_MAX

    # the notes' start (5) beside 0 and middle; a schedule row so that every draw is a valid config
    rows = compress_only.TABLE.rows + (
        Param("tokens.train_from_epoch", categorical(0, "middle", 5), 0, when=TOKENS_ON),
        Param("tokens.train_r_max", TRAIN_R_MAX, when=("tokens.train_from_epoch", 5)))
    monkeypatch.setattr(compress_only, "TABLE", Table(rows))
    notes = build_base(PRESETS["digits"], {"finetune.epochs": 5}, "compress_only")
    assert notes["finetune.epochs"] == 5
    with pytest.raises(ValueError) as refused:
        build_base(PRESETS["pcam-local"], {}, "compress_only")
    assert str(refused.value) == (
        "space 'compress_only' prunes tokens while fine-tuning from epoch 5 (tokens.train_from_epoch), but the "
        "fine-tune has finetune.epochs=1: --set finetune.epochs=5 or more, or choose a space without it")
