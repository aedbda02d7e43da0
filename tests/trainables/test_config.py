import pytest

from compress import CompressionPlan, TokenPlan
from trainables.config import TrialConfig, known_keys, parse_overrides
from trainables.key_rules import stage_record


def test_empty_config_is_the_digits_preset():
    cfg = TrialConfig.from_flat({})
    assert (cfg.data.dataset, cfg.model.backbone) == ("digits", "digits-vit")


def test_flat_round_trip():
    cfg = TrialConfig.from_flat({"finetune.method": "lora", "prehab.lambda": 0.01})
    assert TrialConfig.from_flat(cfg.to_flat()) == cfg


def test_every_known_key_is_accepted_with_its_default():
    flat = TrialConfig().to_flat()
    assert set(flat) == set(known_keys())


def test_set_strings_are_typed():
    flat = parse_overrides(["finetune.epochs=2", "compress.tau_mlp=0.9", "tokens.fuse=true",
                            "finetune.method=lora"])
    cfg = TrialConfig.from_flat(flat)
    assert (cfg.finetune.epochs, cfg.compress.tau_mlp, cfg.tokens.fuse, cfg.finetune.method) == (2, 0.9, True, "lora")


@pytest.mark.parametrize("key,value,match", [
    ("compress.tau_mlp", 1.2, r"compress.tau_mlp must be in \(0, 1\], got 1.2"),
    ("compress.tau_heads", 0.0, r"compress.tau_heads must be in \(0, 1\]"),
    ("tokens.r_max", 1.0, r"tokens.r_max must be in \[0, 1\)"),
    ("tokens.alpha", 0.0, r"tokens.alpha must be a finite number > 0"),
    ("finetune.method", "qlora", "finetune.method must be one of head_only, lora, full"),
    ("prehab.lambda", -1.0, "prehab.lambda must be >= 0"),
    ("eval.latency_rounds", 0, "eval.latency_rounds must be >= 1"),
    ("eval.latency_pause_s", -0.5, "eval.latency_pause_s must be >= 0"),
    ("finetune.threads_per_worker", -1, "finetune.threads_per_worker must be >= 0"),
])
def test_out_of_range_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        TrialConfig.from_flat({key: value})


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ValueError, match="did you mean finetune.backbone_lr"):
        TrialConfig.from_flat({"finetune.lr_backbone": 1e-4})


def test_wrong_type_names_the_key():
    with pytest.raises(TypeError, match="finetune.epochs must be int"):
        TrialConfig.from_flat({"finetune.epochs": "2.5"})


def test_set_without_equals_is_refused():
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["finetune.epochs"])


def test_the_search_spaces_switches_are_not_config_keys():
    # search_spaces turns prehab.enabled / tokens.enabled into values before a config is built.
    with pytest.raises(ValueError, match="unknown config key 'prehab.enabled'"):
        TrialConfig.from_flat({"prehab.enabled": True, "prehab.lambda": 0.01})


def test_finetune_key_ignores_fields_that_do_not_change_weights():
    full = TrialConfig.from_flat({"finetune.method": "full", "finetune.lora_rank": 4, "finetune.workers": 4,
                                  "finetune.threads_per_worker": 2})
    same = TrialConfig.from_flat({"finetune.method": "full", "finetune.lora_rank": 32})
    assert stage_record(full.finetune) == stage_record(same.finetune)
    lora4 = TrialConfig.from_flat({"finetune.method": "lora", "finetune.lora_rank": 4})
    lora8 = TrialConfig.from_flat({"finetune.method": "lora", "finetune.lora_rank": 8})
    assert stage_record(lora4.finetune) != stage_record(lora8.finetune)


def test_sections_are_the_compress_plans():
    cfg = TrialConfig.from_flat({"compress.tau_svd": 0.9, "compress.svd_targets": "q,o",
                                 "tokens.r_max": 0.5, "tokens.alpha": 2.0})
    assert isinstance(cfg.compress, CompressionPlan) and isinstance(cfg.tokens, TokenPlan)
    assert (cfg.compress.tau_svd, cfg.compress.svd_targets, cfg.tokens.r_max, cfg.tokens.alpha) == \
        (0.9, ("q", "o"), 0.5, 2.0)


@pytest.mark.parametrize("value", ["q,o", " q , o ", '["q", "o"]', ["q", "o"], ("q", "o")])
def test_svd_targets_accept_a_list_or_a_comma_string(value):
    assert TrialConfig.from_flat({"compress.svd_targets": value}).compress.svd_targets == ("q", "o")


def test_to_flat_gives_targets_as_a_tuple_that_round_trips():
    cfg = TrialConfig.from_flat(parse_overrides(["compress.svd_targets=q,down"]))
    assert cfg.to_flat()["compress.svd_targets"] == ("q", "down")
    assert TrialConfig.from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize("value,error,match", [
    ("q,x", ValueError, r"compress.svd_targets must name roles among q, k, v, o, up, down, gate; got unknown \['x'\]"),
    (3, TypeError, "compress.svd_targets must be a list of names"),
    ("q,q", ValueError, "compress.svd_targets must not repeat a role"),
])
def test_bad_svd_targets_name_the_key(value, error, match):
    with pytest.raises(error, match=match):
        TrialConfig.from_flat({"compress.svd_targets": value})


def test_train_from_epoch_middle_is_the_finetunes_middle_epoch():
    cfg = TrialConfig.from_flat({"tokens.r_max": 0.5, "tokens.train_from_epoch": "middle", "finetune.epochs": "4"})
    assert cfg.tokens.train_from_epoch == 3


@pytest.mark.parametrize("flat,match", [
    ({"tokens.train_from_epoch": 1}, "tokens.r_max and tokens.train_r_max are 0"),
    ({"tokens.r_max": 0.5, "tokens.train_r_max": 1.0, "tokens.train_from_epoch": 1}, r"tokens.train_r_max must be in \[0, 1\)"),
    ({"tokens.r_max": 0.5, "tokens.train_from_epoch": 4, "finetune.epochs": 3}, "after the last fine-tune epoch"),
])
def test_training_time_pruning_contradictions_are_refused(flat, match):
    with pytest.raises(ValueError, match=match):
        TrialConfig.from_flat(flat)


def test_training_time_pruning_keys_the_finetune_only_when_on():
    plain = TrialConfig.from_flat({})
    inference_only = TrialConfig.from_flat({"tokens.r_max": 0.5, "tokens.alpha": 2.0})
    training = TrialConfig.from_flat({"tokens.r_max": 0.5, "tokens.alpha": 2.0, "tokens.train_from_epoch": 2})
    assert plain.finetune_key_fields() == inference_only.finetune_key_fields()
    assert training.finetune_key_fields() != inference_only.finetune_key_fields()
    assert training.finetune_key_fields()["tokens"]["r_max"] == 0.5


TRAINED = {"tokens.train_from_epoch": 1, "tokens.train_r_max": 0.6, "tokens.train_alpha": 1.2}


def test_the_finetune_key_holds_the_training_schedule_not_the_inference_one():
    keys = [TrialConfig.from_flat({**TRAINED, "tokens.r_max": r_max, "tokens.alpha": alpha}).finetune_key_fields()
            for r_max, alpha in ((0.6, 1.2), (0.6000001, 1.2), (0.2, 2.7))]
    assert keys[0] == keys[1] == keys[2]
    # the same schedule given as the inference one (no train_* fields) trains, and keys, the same
    same = TrialConfig.from_flat({"tokens.train_from_epoch": 1, "tokens.r_max": 0.6, "tokens.alpha": 1.2})
    assert same.finetune_key_fields() == keys[0]


def test_another_training_schedule_is_another_finetune():
    base = TrialConfig.from_flat({**TRAINED, "tokens.r_max": 0.3})
    for key, value in (("tokens.train_r_max", 0.3), ("tokens.train_alpha", 2.0)):
        other = TrialConfig.from_flat({**TRAINED, "tokens.r_max": 0.3, key: value})
        assert other.finetune_key_fields() != base.finetune_key_fields()


def test_the_finetune_prunes_with_the_training_schedule():
    from compress.tokens import token_pruning_settings
    from trainables.model import build_classifier
    from trainables.train.loop import _set_training_pruning

    cfg = TrialConfig.from_flat({**TRAINED, "tokens.r_max": 0.3, "tokens.alpha": 2.5})
    model = build_classifier("digits-vit", 2)
    _set_training_pruning(model, cfg, True)
    settings = token_pruning_settings(model)
    assert (settings["r_max"], settings["alpha"]) == (0.6, 1.2)


@pytest.mark.parametrize("value,mode", [(True, "dihedral"), ("true", "dihedral"), (False, "none"),
                                        ("flips", "flips"), ("dihedral", "dihedral")])
def test_eval_tta_modes_and_old_booleans(value, mode):
    assert TrialConfig.from_flat({"eval.tta": value}).eval.tta == mode


def test_eval_tta_does_not_key_the_finetune():
    assert TrialConfig.from_flat({"eval.tta": "dihedral"}).finetune_key_fields() == \
        TrialConfig.from_flat({}).finetune_key_fields()


def test_unknown_tta_mode_names_the_choices():
    with pytest.raises(ValueError, match="eval.tta must be one of none, flips, dihedral"):
        TrialConfig.from_flat({"eval.tta": "rot90"})


def test_old_prehab_kind_nuclear_is_refused_with_its_new_name():
    with pytest.raises(ValueError, match="now called 'nuclear_ratio'"):
        TrialConfig.from_flat({"prehab.kind": "nuclear"})


def test_prehab_defaults_are_the_notes_vit_recipe():
    prehab = TrialConfig.from_flat({}).prehab
    assert (prehab.kind, prehab.space) == ("nuclear_ratio+effective_rank", "whitened")


@pytest.mark.parametrize("flat,unused", [
    ({"finetune.method": "full", "finetune.lora_rank": 16}, ["finetune.lora_rank"]),
    ({"finetune.method": "head_only", "finetune.lora_mlp": True}, ["finetune.lora_mlp"]),
    ({"finetune.method": "full", "finetune.train_norms_biases": True}, ["finetune.train_norms_biases"]),
    ({"finetune.method": "lora", "finetune.backbone_lr": 1e-4}, ["finetune.backbone_lr"]),
    ({"finetune.method": "lora", "finetune.backbone_lr": 1e-4, "finetune.train_norms_biases": True}, []),
    ({"finetune.method": "lora", "finetune.lora_mlp": True, "finetune.lora_rank": 4}, []),
])
def test_options_that_the_method_does_not_use_are_named(flat, unused):
    cfg = TrialConfig.from_flat(flat)
    assert [item.key for item in cfg.inapplicable(flat)] == unused
    if unused:
        with pytest.raises(ValueError, match=f"{unused[0]} do\\(es\\) not apply to finetune.method"):
            cfg.check_applicable(flat)


def test_lora_with_norms_and_biases_keys_the_backbone_lr():
    base = {"finetune.method": "lora", "finetune.train_norms_biases": True}
    assert stage_record(TrialConfig.from_flat(base).finetune) != \
        stage_record(TrialConfig.from_flat({**base, "finetune.backbone_lr": 1e-5}).finetune)


def test_quant_and_runtime_at_their_defaults_leave_every_key_unchanged():
    default = TrialConfig.from_flat({})
    explicit = TrialConfig.from_flat({"compress.quant": "none", "eval.runtime": "torch"})
    assert explicit.key_flat() == default.key_flat()
    assert "compress.quant" not in default.key_flat() and "eval.runtime" not in default.key_flat()


def test_quant_does_not_key_the_recover_stage():
    int8 = TrialConfig.from_flat({"compress.quant": "int8", "recover.epochs": 1})
    assert int8.recover_key_fields() == TrialConfig.from_flat({"recover.epochs": 1}).recover_key_fields()


def test_bf16_on_onnxruntime_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^compress.quant=bf16 cannot run with eval.runtime=onnxruntime [^\n]*$"):
        TrialConfig.from_flat({"compress.quant": "bf16", "eval.runtime": "onnxruntime"})


def test_unknown_runtime_names_the_choices():
    with pytest.raises(ValueError, match="eval.runtime must be one of torch, onnxruntime, got 'tensorrt'"):
        TrialConfig.from_flat({"eval.runtime": "tensorrt"})


@pytest.mark.parametrize("value", [0.0, -1e-6, float("inf")])
def test_an_svd_damping_that_is_not_positive_names_the_key(value):
    with pytest.raises(ValueError, match="compress.svd_damping must be a finite number > 0"):
        TrialConfig.from_flat({"compress.svd_damping": value})


def test_svd_damping_is_a_config_key_that_keys_outcomes_and_recover_only_when_set():
    default, damped = TrialConfig.from_flat({}), TrialConfig.from_flat({"compress.svd_damping": "1e-4"})
    assert damped.compress.svd_damping == 1e-4 and damped.to_flat()["compress.svd_damping"] == 1e-4
    assert "compress.svd_damping" not in default.key_flat()
    assert damped.key_flat()["compress.svd_damping"] == 1e-4
    assert damped.recover_key_fields() != default.recover_key_fields()
