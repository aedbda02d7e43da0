"""Issue 15: the svd_taps head against the linear head, the head_only feature cache, stain-normalisation throughput.

    python bench/bench_heads.py [--results-dir /tmp/bench-heads] [--parts stain,heads,cache-digits,cache-vits]

heads: the digits preset's reference (seed thresholds, fine-tune method full) with each head:
       val AUROC, parameters, GFLOPs, and latency re-timed in this process, both models
       interleaved (medians of --latency-runs measurements, one thread as in a digits trial).
cache: head_only fine-tune seconds with and without finetune.feature_cache, on the digits
       preset and on a random-init DINOv3 ViT-S/16 at 96 px (digits images resized, few images).
stain: stain-normalisation throughput on one thread (a loader core): the normaliser alone and
       HDF5ImageDataset items at 96 px, on synthetic Beer-Lambert H&E tiles.

Every trial goes through the stage cache in --results-dir: delete it to measure training again.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from compress import load_compressed
from search_spaces import SEED_CONFIG
from trainables.config import TrialConfig
from trainables.evaluate.latency import measure_latency
from trainables.job import compress_structure
from trainables.trial import TrialContext, run_trial

FAST_EVAL = {"eval.latency_repeats": 3, "eval.latency_rounds": 1, "eval.latency_warmup": 1}


def heads(ctx: TrialContext, latency_runs: int) -> None:
    """Print the reference's metrics with each head and interleaved latencies."""
    models = {}
    print(f"{'head':<9} {'val_auroc':>9} {'params':>8} {'gflops':>7} {'finetune_s':>10}")
    for head in ("linear", "svd_taps"):
        flat = {**SEED_CONFIG, "model.head": head}
        before = entries(ctx.results_dir, "finetune")
        metrics = run_trial(flat, ctx)
        new = entries(ctx.results_dir, "finetune") - before
        if len(new) != 1:
            raise SystemExit(f"the {head} reference fine-tune was a cache hit: use a fresh --results-dir")
        print(f"{head:<9} {metrics['val_auroc']:>9.4f} {metrics['params']:>8d} {metrics['gflops']:>7.4f} "
              f"{metrics['stage_s_finetune']:>10.1f}")
        cfg = TrialConfig.from_flat(flat)
        entry = new.pop()
        models[head] = compress_structure(load_compressed(entry / "model"), cfg, None, ctx.results_dir)[0].eval()
    cfg = TrialConfig()
    shape = (3, cfg.data.image_size, cfg.data.image_size)
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {head: [] for head in models}
    for _ in range(latency_runs):
        for head, model in models.items():
            times[head].append(measure_latency(model, shape, warmup=cfg.eval.latency_warmup,
                                               repeats=cfg.eval.latency_repeats,
                                               batch_size=cfg.eval.latency_batch).latency_ms)
    for head, values in times.items():
        print(f"latency {head:<9} median {statistics.median(values):.3f} ms/image "
              f"(runs {[round(v, 3) for v in values]})")
    ratio = statistics.median(times["svd_taps"]) / statistics.median(times["linear"])
    print(f"latency svd_taps / linear: {ratio:.2f}x (1 thread, batch {cfg.eval.latency_batch})")


def entries(results_dir: str, stage: str) -> set[Path]:
    """Return the published entries of a stage."""
    return {path.parent for path in (Path(results_dir) / "cache" / stage).glob("*/_MANIFEST.json")}


def cache(ctx: TrialContext, which: list[str]) -> None:
    """Print head_only fine-tune seconds with and without the feature cache."""
    setups = {
        "digits": {},
        "vits": {"model.backbone": "dinov3-vits16", "data.image_size": 96,
                                        "pretrain.epochs": 0, "data.train_limit": 256, "data.val_limit": 128,
                                        "finetune.min_feature_std": 0.0, **FAST_EVAL},
    }
    names = {"digits": "digits preset", "vits": "ViT-S/16 random init, 96 px, 256 train + 128 val images"}
    for name, flat in ((names[key], setups[key]) for key in which):
        base = {**flat, "finetune.method": "head_only"}
        off = run_trial({**base, "finetune.feature_cache": False}, ctx)
        on = run_trial(base, ctx)
        again = run_trial({**base, "finetune.lr": 1e-3}, ctx)  # another head run on the same features
        print(f"{name}: head_only fine-tune {off['stage_s_finetune']:.1f} s without the feature cache "
              f"(val_auroc {off['val_auroc']:.4f}); with it {on['stage_s_finetune']:.1f} s "
              f"(features {on['stage_s_features']:.1f} s; val_auroc {on['val_auroc']:.4f}); "
              f"another head on cached features {again['stage_s_finetune']:.1f} s "
              f"(features hit: {again['cache_hit_features']}); "
              f"ratio off/on {off['stage_s_finetune'] / on['stage_s_finetune']:.2f}x; "
              f"feature_std {on['feature_std']:.3g}")


def stain(tiles: int) -> None:
    """Print stain-normalisation throughput on one thread."""
    from trainables.data.datasets import HDF5ImageDataset, split_path
    from trainables.data.stain import make_stain_normalizer

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    he = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    concentration = rng.gamma(2.0, 0.5, size=(tiles, 96 * 96, 2))
    images = (240 * np.exp(-concentration @ he.T)).clip(0, 255).astype(np.uint8).reshape(tiles, 96, 96, 3)
    with tempfile.TemporaryDirectory() as root:
        for split in ("train", "valid", "test"):
            with h5py.File(split_path(root, split, "x"), "w") as handle:
                handle.create_dataset("x", data=images)
            with h5py.File(split_path(root, split, "y"), "w") as handle:
                handle.create_dataset("y", data=np.zeros((tiles, 1, 1, 1), np.uint8))
        x_path = split_path(root, "train", "x")
        for method in ("none", "macenko", "reinhard"):
            normalizer = make_stain_normalizer(method, x_path)
            if normalizer is not None:
                pixels = [torch.from_numpy(image) for image in images]
                started = time.perf_counter()
                for tile in pixels:
                    normalizer(tile)
                alone = tiles / (time.perf_counter() - started)
            dataset = HDF5ImageDataset(root, "train", stain=normalizer)
            dataset[0]
            started = time.perf_counter()
            for index in range(tiles):
                dataset[index]
            items = tiles / (time.perf_counter() - started)
            extra = f"; normaliser alone {alone:.0f} img/s" if normalizer is not None else ""
            print(f"stain_norm={method:<8} dataset items (read + stain + normalise, 96 px): {items:.0f} img/s"
                  f"{extra} (1 thread, {tiles} tiles)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="/tmp/bench-heads")
    parser.add_argument("--parts", default="stain,heads,cache-digits,cache-vits")
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--stain-tiles", type=int, default=300)
    args = parser.parse_args()
    ctx = TrialContext(results_dir=args.results_dir, show_progress=False)
    parts = args.parts.split(",")
    if "stain" in parts:
        stain(args.stain_tiles)
    if "heads" in parts:
        heads(ctx, args.latency_runs)
    which = [part.split("-", 1)[1] for part in parts if part.startswith("cache-")]
    if which:
        cache(ctx, which)


if __name__ == "__main__":
    main()
