import math

import pytest
import torch

from trainables.data.datasets import ensure_digits
from trainables.job import TrainJob, build_stage_model, stage_settings
from trainables.model import build_classifier
from trainables.train.loop import best_model, param_groups, train_loop, warmup_cosine
from trainables.train.sessions import LocalSession

TINY = {"data.train_limit": 256, "data.val_limit": 128, "finetune.batch_size": 32,
        "pretrain.batch_size": 32}


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return str(ensure_digits(tmp_path_factory.mktemp("data") / "digits"))


def first_batch_loss(job: TrainJob, model: torch.nn.Module) -> float:
    from trainables.data.datasets import make_dataset

    cfg = job.config
    dataset = make_dataset(cfg, job.data_root, "train", stage_settings(job).labels)
    x = torch.stack([dataset[i][0] for i in range(128)])
    y = torch.tensor([dataset[i][1] for i in range(128)])
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model.eval()(x), y))


@pytest.mark.parametrize("method", ["head_only", "lora", "full"])
@pytest.mark.slow
def test_each_method_lowers_the_training_loss(method, digits_root, tmp_path):
    flat = {**TINY, "finetune.method": method, "finetune.epochs": 4, "finetune.lr": 3e-3,
            "finetune.backbone_lr": 3e-4, "finetune.warmup_frac": 0.0}
    job = TrainJob("finetune", flat, digits_root)
    torch.manual_seed(0)
    before = first_batch_loss(job, build_stage_model(job))
    session = LocalSession(tmp_path, torch.device("cpu"), show_progress=False)
    train_loop(job, session)
    trained, _ = best_model(job, session.checkpoint_dir)
    assert first_batch_loss(job, trained) < 0.95 * before


def test_full_method_separates_learning_rates_and_skips_decay_on_norms():
    job = TrainJob("finetune", {"finetune.method": "full", "finetune.lr": 1e-2, "finetune.backbone_lr": 1e-4}, "x")
    model = build_stage_model(job)
    groups = param_groups(model, stage_settings(job))
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_id[id(named["head.weight"])]["lr"] == 1e-2
    assert by_id[id(named["backbone.model.layer.0.attention.q_proj.weight"])]["lr"] == 1e-4
    assert by_id[id(named["backbone.model.layer.0.norm1.weight"])]["weight_decay"] == 0.0
    assert by_id[id(named["backbone.model.layer.0.attention.q_proj.weight"])]["weight_decay"] > 0


def test_warmup_then_cosine_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_frac=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(digits_root, tmp_path):
    session = LocalSession(tmp_path, torch.device("cpu"), show_progress=False)
    train_loop(TrainJob("finetune", {**TINY, "finetune.epochs": 1}, digits_root), session)
    seen = []
    result = train_loop(TrainJob("finetune", {**TINY, "finetune.epochs": 2}, digits_root), session,
                        on_epoch=lambda record: seen.append(record["epoch"]))
    assert seen == [1] and [r["epoch"] for r in result["history"]] == [0, 1]


@pytest.mark.slow
def test_non_finite_loss_fails_the_stage(digits_root, tmp_path):
    job = TrainJob("finetune", {**TINY, "finetune.epochs": 1}, digits_root)
    session = LocalSession(tmp_path, torch.device("cpu"), show_progress=False)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_loop(job, session, penalty=lambda model: torch.tensor(math.nan))


@pytest.mark.slow
def test_training_time_pruning_starts_at_its_epoch(digits_root, tmp_path, monkeypatch):
    from compress import keep_schedule
    import trainables.train.loop as loop

    flat = {"data.train_limit": 64, "data.val_limit": 64, "finetune.batch_size": 32, "finetune.epochs": 2,
            "finetune.method": "full", "tokens.r_max": 0.5, "tokens.alpha": 1.0, "tokens.train_from_epoch": 2}
    seen: list[list[int]] = [[]]  # MLP input token counts of training forwards, one list per epoch
    built = {}

    def build_with_hooks(job):
        model = build_stage_model(job)
        for layer in model.backbone.model.layer:
            layer.mlp.register_forward_hook(
                lambda module, args, out: seen[-1].append(args[0].shape[1]) if module.training else None)
        built["model"] = model
        return model

    monkeypatch.setattr(loop, "build_stage_model", build_with_hooks)
    job = TrainJob("finetune", flat, digits_root)
    train_loop(job, LocalSession(tmp_path, torch.device("cpu"), show_progress=False),
               on_epoch=lambda record: seen.append([]))
    config = built["model"].backbone.config
    patches = (config.image_size // config.patch_size) ** 2
    prefix = 1 + config.num_register_tokens
    layers = len(built["model"].backbone.model.layer)
    batches = 2
    assert seen[0] == [prefix + patches] * layers * batches
    assert seen[1] == [prefix + kept for kept in keep_schedule(patches, layers, 0.5, 1.0)] * batches


def test_gradients_reach_every_backbone_layer_through_pruned_forwards():
    from compress import enable_token_pruning

    torch.manual_seed(0)
    model = build_classifier("digits-vit", 2).train()
    enable_token_pruning(model, 0.6, 1.2)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    for layer in model.backbone.model.layer:
        for module in (layer.attention.q_proj, layer.mlp.down_proj):
            assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
