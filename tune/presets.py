"""Named sweep presets: a flat trial config over TrialConfig's defaults plus sweep settings.

`trial` holds flat dotted keys layered over `trainables.config.TrialConfig` defaults (which
are the embedded digits preset); `--set key=value` layers on top of it. The remaining
fields are sweep-level defaults that the CLI flags override.

Image size: `pcam-local` trains at PCam's native 96 px (6x6 = 36 patch tokens with a /16
ViT; DINOv3's RoPE handles any grid), about 5x cheaper per image than 224 px, so a
single GPU or a laptop finishes a sweep; `pcam-a100` uses the standard 224 px (196 tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

DEFAULT_OBJECTIVES = (("val_auroc", "max"), ("params", "min"), ("latency_ms", "min"))
# Milliseconds measured on whichever node a trial landed on are not comparable across nodes; the
# ratio to the uncompressed reference timed interleaved on the same device is (eval.latency_rel).
CLUSTER_OBJECTIVES = (("val_auroc", "max"), ("params", "min"), ("latency_rel", "min"))


@dataclass(frozen=True)
class Preset:
    """A trial config (flat dotted keys) and the sweep settings that go with it."""

    name: str
    description: str
    trial: Mapping[str, Any]                 # flat keys over TrialConfig defaults
    space: str                               # a search_spaces name
    num_samples: int
    max_concurrent: int
    trial_resources: Mapping[str, float]     # the trial driver's Tune resources (not Train workers)
    max_failures: int                        # Tune trial retries and Ray Train restarts
    objectives: tuple[tuple[str, str], ...] = DEFAULT_OBJECTIVES
    # GP (tune.study.make_sampler, 4 start-up trials): on the digits spaces it reached random search's
    # 48-trial front in fewer trials than TPE, one at a time and 4 at once (bench/RESULTS.md, "Samplers").
    sampler: str = "gp"


# The PCam notes' configuration, which the PCam presets' reference trial (the seed point) runs
# unless a preset says otherwise for cost (recipe_differences lists each difference in pareto.md
# and docs/presets.md). LoRA r = 8 on q/k/v/o + MLP with alpha 16 (finetune.lora_alpha 0 means
# 2 x rank, 16 at r = 8); "all runs use 224x224 inputs and TTA at evaluation", the views unnamed:
# dihedral, the eight the histology label keeps. The fine-tune's epochs are not in the notes'
# table; the token-pruning notes prune while training "only after epoch 4", so a fine-tune of
# fewer than 5 epochs is listed as a difference.
NOTES_RECIPE = MappingProxyType({
    "finetune.method": "lora", "finetune.lora_rank": 8, "finetune.lora_alpha": 16.0,
    "finetune.lora_mlp": True, "eval.tta": "dihedral", "data.image_size": 224,
})
NOTES_MIN_EPOCHS = 5

_PCAM = {
    "data.dataset": "pcam",
    "data.root": "data/pcam",
    "model.backbone": "dinov3-vits16",
    "model.weights": "facebook/dinov3-vits16-pretrain-lvd1689m",
    "pretrain.epochs": 0,
    "finetune.method": "lora",
    "finetune.lora_rank": 8,
    "finetune.lora_mlp": True,
    "eval.tta": "dihedral",
    "finetune.epochs": 1,
    "finetune.lr": 1e-3,
    "finetune.backbone_lr": 5e-5,
    "calib.batches": 16,
    "calib.batch_size": 64,
}

PRESETS: Mapping[str, Preset] = MappingProxyType({
    "digits": Preset(
        name="digits",
        description="embedded scikit-learn digits (no download), small ViT pretrained on the "
                    "10 digit classes then fine-tuned on a binary task; 2 CPU cores, < 10 min",
        # The Train worker takes 0.9 CPU beside its 0.1-CPU trial driver, which idles while the
        # worker trains: so the worker trains on both cores (pretrain and fine-tune run once per
        # sweep and are most of its time).
        # Each trial's latency guides the sampler; the front is re-timed after the sweep (7 paired
        # rounds), so 3 rounds of 10 runs 0.1 s apart do here (48 trials in < 5 min on 2 cores).
        trial={"finetune.cpus_per_worker": 0.9, "finetune.threads_per_worker": 2,
               "eval.latency_repeats": 10, "eval.latency_pause_s": 0.1},
        # Thresholds and token pruning only: one pretrain + one fine-tune, the rest cache hits.
        space="compress_only",
        num_samples=48,
        # Cached trials take seconds, so running two at once gains little on 2 cores and
        # makes each trial's latency objective time the other trial's work.
        max_concurrent=1,
        trial_resources={"cpu": 0.1},
        max_failures=1,
    ),
    "pcam-local": Preset(
        name="pcam-local",
        description="PCam at native 96 px, DINOv3 ViT-S/16 (LVD-1689M weights), one GPU or CPU",
        trial={**_PCAM, "data.image_size": 96, "finetune.batch_size": 128,
               "eval.batch_size": 512, "data.loader_workers": 4},
        space="default",
        num_samples=60,
        max_concurrent=1,
        trial_resources={"cpu": 1},
        max_failures=2,
    ),
    "pcam-a100": Preset(
        name="pcam-a100",
        description="PCam at 224 px on A100 nodes: 4-GPU DDP fine-tunes (bf16), one GPU per trial driver",
        # 4 trials x (1 driver GPU + 4 worker GPUs) = 20 GPUs fit in the cluster's 4 x 8 A100s,
        # so a trial driver never holds a GPU that its own TorchTrainer is waiting for.
        # Train workers ask for cluster.yaml's accelerator_type:A100 resource, so the autoscaler
        # starts A100 nodes for them even when other GPU node types are declared.
        # 8 epochs: the space's training-time token pruning ("middle", epochs // 2 + 1) then starts
        # at epoch 5, where the token-pruning notes start it.
        trial={**_PCAM, "data.image_size": 224, "finetune.epochs": 8,
               "finetune.workers": 4, "finetune.cpus_per_worker": 8,
               "finetune.accelerator_type": "A100",
               "finetune.precision": "auto", "finetune.batch_size": 256, "eval.batch_size": 1024,
               # finetune.lr / backbone_lr are per 256 images: x 4 at 4 workers x 256.
               "finetune.lr_scaling": "linear",
               "data.loader_workers": 6,
               # latency_rel over 9 paired rounds: the fewest whose 95% interval of the median
               # leaves out the most extreme round on each side (7 or 8 give [min, max]).
               "eval.latency_rel": True, "eval.latency_rounds": 9},
        space="default",
        num_samples=200,
        max_concurrent=4,
        trial_resources={"cpu": 2, "gpu": 1},
        max_failures=3,
        objectives=CLUSTER_OBJECTIVES,
    ),
})


def recipe_differences(config: Mapping[str, Any]) -> list[str]:
    """Return how the flat trial config `config` (a reference trial's) differs from NOTES_RECIPE,
    one phrase each ("96 px images (the notes: 224)"); [] when it is the notes' recipe."""
    from trainables.config import TrialConfig

    cfg = TrialConfig.from_flat(dict(config))
    flat = cfg.to_flat()
    found = []
    if flat["data.dataset"] != "pcam" or flat["model.backbone"] != "dinov3-vits16":
        found.append(f"{flat['data.dataset']} data on a {flat['model.backbone']} backbone (the notes: PCam, "
                     "DINOv3 ViT-S/16)")
    if flat["finetune.method"] != NOTES_RECIPE["finetune.method"]:
        found.append(f"a {flat['finetune.method']} fine-tune (the notes: LoRA r = 8, alpha 16, q/k/v/o + MLP)")
    else:
        alpha = cfg.finetune.lora_alpha or 2.0 * cfg.finetune.lora_rank
        if (cfg.finetune.lora_rank, alpha) != (NOTES_RECIPE["finetune.lora_rank"], NOTES_RECIPE["finetune.lora_alpha"]):
            found.append(f"LoRA r = {cfg.finetune.lora_rank}, alpha {alpha:g} (the notes: r = 8, alpha 16)")
        if not cfg.finetune.lora_mlp:
            found.append("LoRA on q/k/v/o only (the notes: q/k/v/o + MLP)")
    if flat["eval.tta"] != NOTES_RECIPE["eval.tta"]:
        found.append(f"TTA {flat['eval.tta']} (the notes: TTA at evaluation; here dihedral, 8 views)")
    if flat["data.image_size"] != NOTES_RECIPE["data.image_size"]:
        found.append(f"{flat['data.image_size']} px images (the notes: 224)")
    if cfg.finetune.epochs < NOTES_MIN_EPOCHS:
        found.append(f"{cfg.finetune.epochs}-epoch fine-tune (the notes prune tokens while training from epoch "
                     f"{NOTES_MIN_EPOCHS}, so train longer)")
    return found


def get_preset(name: str) -> Preset:
    """Return the preset called `name`."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]
