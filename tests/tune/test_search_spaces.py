import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import distribution_to_json

from compress.config import DEFAULT_DAMPING
from search_spaces import SEED_CONFIG, available_spaces, config_values, load_space, load_table, seed_points
import search_spaces
from trainables.config import TrialConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sample_configs(name: str, n: int, seed: int = 0) -> list[dict]:
    """Run the space through a random-sampling study; return each trial's full config."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space = load_space(name)
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial) or {}
        configs.append({**trial.params, **constants})
        study.tell(trial, 0.0)
    return configs


def _enqueue_and_ask(name: str, point: dict) -> tuple[dict, dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial(point)
    trial = study.ask()
    constants = load_space(name)(trial) or {}
    return trial.params, {**trial.params, **constants}


def test_available_spaces_lists_the_space_files():
    assert available_spaces() == ["compress_only", "default", "seed_only"]


def test_unknown_space_error_lists_available_names():
    with pytest.raises(ValueError, match="nope.*compress_only, default, seed_only"):
        load_space("nope")


def test_private_module_is_not_a_space():
    with pytest.raises(ValueError):
        load_space("_seed")


def test_default_space_suggests_lora_rank_only_for_lora():
    for config in _sample_configs("default", 60):
        assert ("finetune.lora_rank" in config) == (config["finetune.method"] == "lora")


def test_default_space_values_stay_in_their_ranges():
    for config in _sample_configs("default", 60):
        assert config["finetune.method"] in {"head_only", "lora", "full"}
        for key in ("compress.tau_heads", "compress.tau_mlp"):
            assert 0.2 <= config[key] <= 1.0
        assert 0.5 <= config["compress.tau_svd"] <= 1.0
        assert config["compress.importance"] in {"energy", "taylor", "activation"}
        assert config["compress.allocation"] in {"per_layer", "global"}
        assert config["compress.svd_space"] in {"raw", "whitened"}
        assert 0.0 <= config["tokens.r_max"] <= 0.9
        assert 0.5 <= config["tokens.alpha"] <= 3.0
        assert config["prehab.lambda"] in {0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1}
        assert config["eval.tta"] in {"none", "flips", "dihedral"}


def test_default_space_always_sets_prehab_lambda_and_zero_only_when_disabled():
    configs = _sample_configs("default", 60)
    assert {c["prehab.enabled"] for c in configs} == {False, True}
    for config in configs:
        assert (config["prehab.lambda"] == 0.0) == (not config["prehab.enabled"])


def test_prehab_lambda_kind_and_space_are_categoricals_so_prehab_stages_repeat():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"prehab.enabled": True})
    trial = study.ask()
    load_space("default")(trial)
    assert trial.distributions["prehab.lambda"].choices == (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    assert set(trial.distributions["prehab.kind"].choices) == {
        "stable_rank", "nuclear_ratio", "effective_rank", "nuclear_ratio+effective_rank"}
    assert trial.distributions["prehab.space"].choices == ("whitened", "raw")


def test_default_space_proposes_the_notes_recipes():
    configs = _sample_configs("default", 80)
    keys = set().union(*configs)
    assert {"tokens.train_from_epoch", "eval.tta", "finetune.lora_mlp", "prehab.kind", "prehab.space",
            "prehab.lambda"} <= keys
    for config in configs:
        assert ("finetune.lora_mlp" in config) == (config["finetune.method"] == "lora")
        assert ("tokens.train_from_epoch" in config) == config["tokens.enabled"]
        assert ("prehab.kind" in config) == config["prehab.enabled"]
    assert {c["tokens.train_from_epoch"] for c in configs if c["tokens.enabled"]} == {0, "middle"}
    assert {c["eval.tta"] for c in configs} == {"none", "flips", "dihedral"}


def test_every_default_space_draw_is_a_valid_trial_config():
    for config in _sample_configs("default", 80):
        cfg = TrialConfig.from_flat(config_values(config))
        if config.get("tokens.train_from_epoch") == "middle":
            assert cfg.tokens.train_from_epoch == cfg.finetune.epochs // 2 + 1


def test_compress_only_space_searches_only_cheap_parameters():
    keys = set().union(*(c.keys() for c in _sample_configs("compress_only", 10)))
    assert keys == {
        "compress.tau_heads", "compress.tau_mlp", "compress.importance", "compress.allocation", "compress.tau_svd",
        "compress.svd_space", "tokens.enabled", "tokens.r_max", "tokens.alpha", "compress.quant", "tokens.fuse",
    }


@pytest.mark.parametrize("name", ["default", "compress_only"])
def test_tokens_fuse_is_searched_with_token_pruning_only_and_reaches_the_trial_config(name):
    configs = _sample_configs(name, 60)
    assert all(("tokens.fuse" in c) == c["tokens.enabled"] for c in configs)
    assert {c["tokens.fuse"] for c in configs if "tokens.fuse" in c} == {False, True}
    assert {TrialConfig.from_flat(config_values(c)).tokens.fuse for c in configs if c["tokens.enabled"]} == {False, True}
    assert "tokens.fuse" not in search_spaces.load_table(name).seed_point(dict(SEED_CONFIG))  # the seed prunes none


@pytest.mark.parametrize("name", ["default", "compress_only"])
def test_no_token_pruning_is_a_real_option_and_r_max_is_zero_exactly_then(name):
    configs = _sample_configs(name, 40)
    assert {c["tokens.enabled"] for c in configs} == {False, True}
    for config in configs:
        assert (config["tokens.r_max"] == 0.0) == (not config["tokens.enabled"])


def test_seed_only_space_always_yields_the_seed_config():
    for config in _sample_configs("seed_only", 3):
        assert config == dict(SEED_CONFIG)


@pytest.mark.parametrize("name", ["default", "compress_only", "seed_only"])
def test_seed_point_is_accepted_unchanged_when_enqueued(name):
    (point,) = seed_points(name, {"finetune.method": "full"})
    params, _ = _enqueue_and_ask(name, point)
    assert params == point


@pytest.mark.parametrize("name", ["default", "compress_only", "seed_only"])
def test_seed_point_config_matches_seed_config(name):
    (point,) = seed_points(name, {"finetune.method": "full"})
    _, config = _enqueue_and_ask(name, point)
    for key in set(config) & set(SEED_CONFIG):
        assert math.isclose(config[key], SEED_CONFIG[key]) if isinstance(
            SEED_CONFIG[key], float
        ) else config[key] == SEED_CONFIG[key]


def test_default_seed_point_takes_method_from_preset():
    (point,) = seed_points("default", {"finetune.method": "lora", "finetune.lora_rank": 8})
    assert point["finetune.method"] == "lora" and point["finetune.lora_rank"] == 8


@pytest.mark.parametrize("preset", ["digits", "pcam-local"])
def test_a_sweeps_reference_trial_fine_tunes_as_its_preset_does(preset):
    # The digits preset leaves finetune.method at the trial config's default: the reference trial
    # must take that default, not a method Optuna samples for it.
    from tune.presets import PRESETS as PRESET_TABLE
    from tune.sweep import build_base, seed_config_points

    base = build_base(PRESET_TABLE[preset], {}, "default")
    (point,) = seed_config_points("default", base)
    config = TrialConfig.from_flat(base)
    assert point["finetune.method"] == config.finetune.method
    if config.finetune.method == "lora":
        assert (point["finetune.lora_rank"], point["finetune.lora_mlp"]) == (8, True)  # the notes' r = 8 row


def test_seed_values_win_over_preset_values():
    (point,) = seed_points("compress_only", {"compress.tau_heads": 0.5})
    assert point["compress.tau_heads"] == 0.89


def test_seed_config_is_read_only():
    with pytest.raises(TypeError):
        search_spaces.SEED_CONFIG["tokens.r_max"] = 0.5


def test_default_space_proposes_every_head_and_each_is_a_valid_trial_config():
    from trainables.config import TrialConfig

    configs = _sample_configs("default", 30)
    assert {config["model.head"] for config in configs} == {"linear", "svd_taps", "mlp"}
    for head in ("svd_taps", "mlp"):
        config = next(config for config in configs if config["model.head"] == head)
        assert TrialConfig.from_flat(config_values(config)).model.head == head


def test_default_seed_point_uses_the_linear_head():
    (point,) = seed_points("default", {"finetune.method": "full"})
    assert point["model.head"] == "linear"


# What the hand-written spaces did before they became tables (main 987b2d3): distributions,
# the shapes of 300 random draws, seed points and 12 TPE draws. Stored studies resume only
# if names and distributions stay the same.
BEFORE = json.loads((Path(__file__).parent / "space_tables_before.json").read_text())
# Rows added since, each a knob: draws of a space that gained one differ (more suggestions).
# Rows whose choices changed are left out of both sides too; a study stored before such a
# change does not resume (Optuna refuses a categorical whose choices changed).
# tau_heads / tau_mlp: their range grew to [0.2, 1] with compress.importance / allocation.
UNITS = {"compress.importance", "compress.allocation", "compress.tau_heads", "compress.tau_mlp"}
ADDED = {"default": {"compress.svd_damping", "model.head",   # model.head: gained mlp
                     "tokens.train_r_max", "tokens.train_alpha", *UNITS, "compress.quant", "tokens.fuse"},
         "compress_only": {*UNITS, "compress.quant", "tokens.fuse"}}
PRESETS = [{}, {"finetune.method": "lora"}, {"finetune.method": "full", "tokens.r_max": 0.4, "tokens.alpha": 2.0},
           {"finetune.method": "lora", "finetune.lora_rank": 16, "model.head": "svd_taps", "eval.tta": "flips",
            "prehab.kind": "stable_rank", "tokens.train_from_epoch": "middle"}]


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_table_distributions_are_the_hand_written_spaces(name):
    table = {key: json.loads(distribution_to_json(d)) for key, d in search_spaces.load_table(name).distributions().items()
             if key not in ADDED.get(name, ())}
    assert table == _without(BEFORE[name]["distributions"], ADDED.get(name, ()))


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_table_space_draws_what_the_hand_written_space_drew(name):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    shapes, dists = set(), {}
    for _ in range(300):
        trial = study.ask()
        constants = load_space(name)(trial) or {}
        added = ADDED.get(name, set())
        dists.update({key: json.loads(distribution_to_json(d)) for key, d in trial.distributions.items()
                      if key not in added})
        shapes.add(json.dumps([sorted(set(trial.params) - added), sorted(constants.items())]))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    before_shapes = {json.dumps([[key for key in params if key not in added], constants])
                     for params, constants in BEFORE[name]["shapes"]}
    assert sorted(json.loads(shape) for shape in shapes) == sorted(json.loads(shape) for shape in before_shapes)
    assert dists == _without(BEFORE[name]["distributions"], added)
    if name in ADDED:
        return
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=5))
    draws = []
    for index in range(12):
        trial = study.ask()
        constants = load_space(name)(trial) or {}
        draws.append({**trial.params, **constants})
        study.tell(trial, float(index % 3))
    # TPE's float arithmetic (numpy, scipy) differs in the last bits between CPUs (seen: Xeon vs EPYC).
    assert [_rounded(draw) for draw in draws] == [_rounded(draw) for draw in BEFORE[name]["tpe_draws"]]


def test_the_quant_row_searches_what_the_device_runs():
    for name in ("default", "compress_only"):
        table = search_spaces.load_table(name)
        assert table.for_device("cpu").distributions()["compress.quant"].choices == ("none", "int8")
        assert table.for_device("cuda").distributions()["compress.quant"].choices == ("none", "bf16")
        assert table.for_device("xla").distributions()["compress.quant"].choices == ("none",)


def _without(record: dict, keys) -> dict:
    return {key: value for key, value in record.items() if key not in keys}


def _rounded(draw: dict) -> dict:
    return {key: round(value, 12) if isinstance(value, float) else value for key, value in draw.items()}


# Knobs whose reference (the notes' rule) every seed point gains; the rest of a point is as before.
NOTES_RULE = {"compress.importance": "energy", "compress.allocation": "per_layer"}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_derived_seed_points_are_the_hand_written_ones(name):
    table = search_spaces.load_table(name)
    rule = NOTES_RULE if "compress.importance" in table.distributions() else {}
    derived = [seed_points(name, preset) for preset in PRESETS]
    direct = [table.seed_point(seed) for seed, _ in BEFORE[name]["direct_seeds"]]
    # compress.quant and tokens.fuse were added since: every seed point is the unquantized reference,
    # and one that prunes tokens drops them unfused.
    assert all(point.pop("compress.quant", "none") == "none" for point in [*direct, *sum(derived, [])])
    assert all(point.pop("tokens.fuse", False) is False for point in [*direct, *sum(derived, [])])
    assert [[{**point, **rule} for point in points] for points in BEFORE[name]["seed_points"]] == derived
    assert direct == [{**point, **rule} for _, point in BEFORE[name]["direct_seeds"]]


@pytest.mark.parametrize("name", ["default", "compress_only", "seed_only"])
def test_searched_keys_are_every_row_and_switch_constant(name):
    sampled = set().union(*(c.keys() for c in _sample_configs(name, 40)))
    assert search_spaces.searched_keys(name) == sampled


def test_config_values_turn_switches_into_values():
    assert config_values({"tokens.enabled": False, "prehab.enabled": True, "prehab.lambda": 0.01}) == \
        {"tokens.r_max": 0.0, "tokens.alpha": 1.0, "prehab.lambda": 0.01}
    assert config_values({"tokens.enabled": "true", "tokens.r_max": 0.5}) == {"tokens.r_max": 0.5}
    with pytest.raises(ValueError, match="prehab.enabled=False contradicts prehab.lambda=0.01"):
        config_values({"prehab.enabled": False, "prehab.lambda": 0.01})


def test_a_knob_added_to_a_table_reaches_the_seed_point():
    from search_spaces._table import Param, Table, categorical

    table = Table((*search_spaces.load_table("default").rows, Param("compress.new_knob", categorical(1, 2), 2)))
    assert table.seed_point(dict(SEED_CONFIG))["compress.new_knob"] == 2
    assert "compress.new_knob" in table.searched_keys()


def test_a_condition_on_a_later_row_is_refused():
    from search_spaces._table import Param, Table, categorical

    with pytest.raises(ValueError, match="b: condition on 'a', which is not an earlier row"):
        Table((Param("b", categorical(1), when=("a", 1)), Param("a", categorical(1))))


def test_the_default_space_searches_svd_damping_for_whitened_svd_only():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        constants = load_space("default")(trial) or {}
        config = config_values({**trial.params, **constants})
        assert ("compress.svd_damping" in trial.params) == (trial.params["compress.svd_space"] == "whitened")
        seen.add(config.get("compress.svd_damping"))
        TrialConfig.from_flat(config)
        study.tell(trial, 0.0)
    assert {1e-8, 1e-6, 1e-4, 1e-2} <= seen


def test_the_seed_point_takes_the_former_svd_damping():
    table = load_table("default")
    assert "compress.svd_damping" not in table.seed_point(dict(SEED_CONFIG))  # the seed's SVD is raw
    whitened = table.seed_point({**SEED_CONFIG, "compress.svd_space": "whitened"})
    assert whitened["compress.svd_damping"] == DEFAULT_DAMPING
