"""One declared rule per config field (trainables.key_rules): stage keys, outcome keys and the
refusal of a key that does not apply all derive from `setting`."""

import dataclasses

import pytest

from trainables.config import CalibConfig, TrialConfig
from trainables.key_rules import Applies, KeyRule, inapplicable, outcome_record, setting, stage_record


@dataclasses.dataclass(frozen=True)
class CalibWithANewKnob(CalibConfig):
    """The calib section as it would read with one more knob added after keys were stored."""

    shuffle_seed: int = setting(0, new_since="outcome")


def test_a_knob_added_later_leaves_every_key_unchanged_at_its_default():
    before, after = CalibConfig(batches=4), CalibWithANewKnob(batches=4)
    assert stage_record(after) == stage_record(before) == {"batches": 4, "batch_size": 32}
    assert outcome_record(after) == outcome_record(before)


def test_a_knob_added_later_keys_its_stage_and_the_outcome_once_set():
    changed = CalibWithANewKnob(batches=4, shuffle_seed=3)
    assert stage_record(changed)["shuffle_seed"] == 3 and outcome_record(changed)["shuffle_seed"] == 3


def test_a_runtime_field_keys_the_outcome_but_not_its_stage():
    one, two = (TrialConfig.from_flat({"finetune.cpus_per_worker": cpus}) for cpus in (1, 2))
    assert stage_record(one.finetune) == stage_record(two.finetune)
    assert one.key_flat() != two.key_flat()


def test_a_field_keys_its_stage_only_while_its_test_holds():
    plain = TrialConfig.from_flat({"finetune.workers": 2})
    scaled = TrialConfig.from_flat({"finetune.workers": 2, "finetune.lr_scaling": "linear"})
    assert "workers" not in stage_record(plain.finetune) and stage_record(scaled.finetune)["workers"] == 2


def test_a_field_that_does_not_apply_is_left_out_of_its_stage_and_named_when_set():
    full = TrialConfig.from_flat({"finetune.method": "full", "finetune.lora_rank": 32})
    assert "lora_rank" not in stage_record(full.finetune)
    (item,) = full.inapplicable(["finetune.lora_rank", "compress.tau_mlp"])
    assert (item.key, item.on, item.text) == ("finetune.lora_rank", "finetune.method='full'", "lora only")


def test_applies_works_on_any_section_that_declares_it():
    @dataclasses.dataclass(frozen=True)
    class Section:
        mode: str = "a"
        strength: float = setting(1.0, applies=Applies("mode", "mode b only", lambda s: s.mode == "b"))

    assert inapplicable(Section(), "x.", ["x.strength", "x.mode", "y.strength"]) == [
        ("x.strength", "x.mode='a'", "mode b only")]
    assert inapplicable(Section(mode="b"), "x.", ["x.strength"]) == []
    assert "strength" not in stage_record(Section()) and stage_record(Section(mode="b"))["strength"] == 1.0


def test_the_refusal_names_the_keys_what_they_depend_on_and_when_they_apply():
    cfg = TrialConfig.from_flat({"finetune.method": "head_only"})
    with pytest.raises(ValueError) as err:
        cfg.check_applicable(["finetune.lora_mlp", "finetune.backbone_lr"])
    assert str(err.value) == (
        "finetune.backbone_lr, finetune.lora_mlp do(es) not apply to finetune.method='head_only' "
        "(backbone_lr: full, or with train_norms_biases; lora_mlp: lora only); remove it or change finetune.method")


def test_an_unknown_new_since_is_refused():
    with pytest.raises(ValueError, match="new_since must be one of"):
        KeyRule(new_since="later")
