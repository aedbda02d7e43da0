"""Loader throughput per core, before (per-image HDF5ImageDataset) and after (block reads, uint8
batches, batched transforms), at 96 and 224 px, with and without augmentation; and the ratio
of loader to ViT-S/16 training throughput on the same core.

    python bench/bench_loader.py [--images 2048] [--repeats 3]

One thread, no DataLoader workers: every figure is img/s of one core. "after, CPU side" is
what the CPU does when the transforms run on a GPU (read + uint8 collate); "after, all on
CPU" adds the batched transforms on this CPU, as training here does. Figures are medians
of `--repeats` interleaved runs.
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
from torch.utils.data import DataLoader

from trainables.data.datasets import HDF5ImageDataset, split_path
from trainables.data.loader import HDF5BlockReader, block_loader

BATCH = 128


def write_pcam_like(root: Path, count: int) -> None:
    """Write a random uint8 train split of `count` 96 px images in PCam's layout."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(split_path(root, "train", "x"), "w") as handle:
        handle.create_dataset("x", data=rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8))
    with h5py.File(split_path(root, "train", "y"), "w") as handle:
        handle.create_dataset("y", data=(np.arange(count) % 2).astype(np.uint8).reshape(-1, 1, 1, 1))


def rate(batches) -> float:
    """Return images per second over one pass of an iterable of (images, labels, ...) batches."""
    started, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch[0])
    return seen / (time.perf_counter() - started)


def before(root: Path, size: int, augment: bool) -> float:
    dataset = HDF5ImageDataset(root, "train", image_size=size, augment=augment)
    return rate(DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0))


def after_cpu_side(root: Path, size: int, augment: bool) -> float:
    reader = HDF5BlockReader(root, "train", image_size=size)
    return rate(block_loader(reader, BATCH, torch.device("cpu"), shuffle=True, seed=0).loader)


def after_all_on_cpu(root: Path, size: int, augment: bool) -> float:
    reader = HDF5BlockReader(root, "train", image_size=size)
    return rate(block_loader(reader, BATCH, torch.device("cpu"), shuffle=True, seed=0, augment=augment))


def train_rate(size: int, method: str, batch: int, steps: int) -> float:
    """Return ViT-S/16 (random init) training img/s: forward, backward and AdamW step at `size` px."""
    from trainables.config import TrialConfig
    from trainables.model import build_classifier
    from trainables.model import configure_method

    cfg = TrialConfig.from_flat({"finetune.method": method})
    model = configure_method(build_classifier("dinov3-vits16", 2), cfg).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch,))
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step pays one-off allocations
            times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = {"before": before, "after, CPU side": after_cpu_side, "after, all on CPU": after_all_on_cpu}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_pcam_like(root, args.images)
        cases = [(size, augment) for size in (96, 224) for augment in (False, True)]
        samples = {(case, name): [] for case in cases for name in paths}
        for _ in range(args.repeats):  # interleaved, so load changes hit every path alike
            for case in cases:
                for name, fn in paths.items():
                    samples[(case, name)].append(fn(root, *case))
    train = {size: train_rate(size, "lora", args.train_batch, args.train_steps) for size in (96, 224)}
    print(f"loader img/s per core (median of {args.repeats}; {args.images} images, batch {BATCH}, 1 thread)")
    print(f"{'px':>4} {'augment':>7} {'before':>9} {'after CPU side':>15} {'after all CPU':>14} "
          f"{'speed-up':>9} {'loader/train':>13}")
    for size, augment in cases:
        rates = {name: statistics.median(samples[((size, augment), name)]) for name in paths}
        speedup = rates["after, all on CPU"] / rates["before"]
        print(f"{size:>4} {str(augment):>7} {rates['before']:>9.0f} {rates['after, CPU side']:>15.0f} "
              f"{rates['after, all on CPU']:>14.0f} {speedup:>8.1f}x {rates['after, all on CPU'] / train[size]:>12.1f}x")
    for size, value in train.items():
        print(f"ViT-S/16 LoRA train step at {size} px, batch {args.train_batch}, 1 thread: {value:.1f} img/s")


if __name__ == "__main__":
    main()
