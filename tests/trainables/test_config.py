import pytest

from trainables.config import TrialConfig, known_keys, parse_overrides


def test_empty_config_is_the_digits_preset():
    cfg = TrialConfig.from_flat({})
    assert (cfg.data.dataset, cfg.model.backbone) == ("digits", "digits-vit")


def test_flat_round_trip():
    cfg = TrialConfig.from_flat({"finetune.method": "lora", "prehab.lambda": 0.01})
    assert TrialConfig.from_flat(cfg.to_flat()) == cfg


def test_every_known_key_is_accepted_with_its_default():
    flat = TrialConfig().to_flat()
    assert set(flat) | {"prehab.enabled", "tokens.enabled"} == set(known_keys())


def test_set_strings_are_typed():
    flat = parse_overrides(["finetune.epochs=2", "compress.tau_mlp=0.9", "tokens.fuse=true",
                            "finetune.method=lora"])
    cfg = TrialConfig.from_flat(flat)
    assert (cfg.finetune.epochs, cfg.compress.tau_mlp, cfg.tokens.fuse, cfg.finetune.method) == (2, 0.9, True, "lora")


@pytest.mark.parametrize("key,value,match", [
    ("compress.tau_mlp", 1.2, r"compress.tau_mlp must be in \(0, 1\], got 1.2"),
    ("compress.tau_heads", 0.0, r"compress.tau_heads must be in \(0, 1\]"),
    ("tokens.r_max", 1.0, r"tokens.r_max must be in \[0, 1\)"),
    ("tokens.alpha", 0.0, r"tokens.alpha must be > 0"),
    ("finetune.method", "qlora", "finetune.method must be one of head_only, lora, full"),
    ("prehab.lambda", -1.0, "prehab.lambda must be >= 0"),
    ("eval.latency_rounds", 0, "eval.latency_rounds must be >= 1"),
    ("eval.latency_pause_s", -0.5, "eval.latency_pause_s must be >= 0"),
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


def test_prehab_switch_must_agree_with_lambda():
    assert TrialConfig.from_flat({"prehab.enabled": True, "prehab.lambda": 0.01}).prehab.enabled
    with pytest.raises(ValueError, match="contradicts"):
        TrialConfig.from_flat({"prehab.enabled": False, "prehab.lambda": 0.01})


def test_finetune_key_ignores_fields_that_do_not_change_weights():
    full = TrialConfig.from_flat({"finetune.method": "full", "finetune.lora_rank": 4, "finetune.workers": 4})
    same = TrialConfig.from_flat({"finetune.method": "full", "finetune.lora_rank": 32})
    assert full.finetune.key_fields() == same.finetune.key_fields()
    lora4 = TrialConfig.from_flat({"finetune.method": "lora", "finetune.lora_rank": 4})
    lora8 = TrialConfig.from_flat({"finetune.method": "lora", "finetune.lora_rank": 8})
    assert lora4.finetune.key_fields() != lora8.finetune.key_fields()


def test_plan_carries_compression_and_token_settings():
    plan = TrialConfig.from_flat({"compress.tau_svd": 0.9, "compress.svd_targets": "q,o",
                                  "tokens.r_max": 0.5, "tokens.alpha": 2.0}).plan()
    assert (plan.tau_svd, tuple(plan.svd_targets), plan.r_max, plan.alpha) == (0.9, ("q", "o"), 0.5, 2.0)
