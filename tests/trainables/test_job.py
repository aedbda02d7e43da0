"""Tests for trainables.job: a training stage's config, settings and starting model."""

import pytest

from trainables.config import TrialConfig
from trainables.job import TrainJob, build_stage_model, stage_settings


def test_head_only_trains_only_the_head():
    cfg_flat = {"finetune.method": "head_only"}
    job = TrainJob("finetune", cfg_flat, "unused")
    model = build_stage_model(job)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}


def test_head_only_with_norms_and_biases():
    job = TrainJob("finetune", {"finetune.method": "head_only", "finetune.train_norms_biases": True}, "unused")
    trainable = [name for name, p in build_stage_model(job).named_parameters() if p.requires_grad]
    assert any("norm1" in n for n in trainable) and any(n.endswith("q_proj.bias") for n in trainable)
    assert not any(n.endswith("q_proj.weight") for n in trainable)


def test_pretrain_uses_the_ten_digit_classes():
    job = TrainJob("pretrain", {}, "unused")
    assert stage_settings(job).labels == "digit" and build_stage_model(job).head.out_features == 10


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="stage must be one of"):
        TrainJob("distill", {}, "x")


def test_stage_config_is_validated_when_read():
    with pytest.raises(ValueError, match="finetune.method"):
        TrainJob("finetune", {"finetune.method": "bogus"}, "x").config
    assert isinstance(TrainJob("finetune", {}, "x").config, TrialConfig)
    with pytest.raises(TypeError, match="TrainJob.config must be a TrialConfig"):
        TrainJob("finetune", ["finetune.method=lora"], "x")


def test_lora_trains_norms_and_biases_when_asked():
    flat = {"finetune.method": "lora", "finetune.train_norms_biases": True, "finetune.lora_mlp": True}
    trainable = [n for n, p in build_stage_model(TrainJob("finetune", flat, "unused")).named_parameters()
                 if p.requires_grad]
    assert any("norm1" in n for n in trainable) and any(n.endswith("q_proj.base_layer.bias") for n in trainable)
    assert any("up_proj.lora_A" in n for n in trainable)
    assert not any(n.endswith("base_layer.weight") for n in trainable)
    plain = build_stage_model(TrainJob("finetune", {"finetune.method": "lora"}, "unused"))
    assert not any("norm1" in n for n, p in plain.named_parameters() if p.requires_grad)


def test_stage_settings_are_keyword_only():
    from trainables.job import StageSettings

    with pytest.raises(TypeError):
        StageSettings(1, 64, 1e-3, 1e-3, 0.0, 0.1, 1.0, "y", 2)


def test_train_job_pickles_with_its_typed_config():
    import pickle

    job = TrainJob("finetune", TrialConfig.from_flat({"finetune.method": "lora", "tokens.r_max": 0.5}), "root")
    again = pickle.loads(pickle.dumps(job))
    assert again == job and again.config.finetune.method == "lora"
