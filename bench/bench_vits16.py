"""ViT-S/16 on this machine: fine-tune img/s (LoRA, full) and evaluation img/s at 96 px, compression time.

    python bench/bench_vits16.py [--threads 1]

Random-init weights (speed does not depend on their values). Medians over a few steps
after one warm-up step; compression is the seed plan (tau 0.89 / 0.975 / 0.975, raw SVD).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainables.config import TrialConfig
from trainables.job import compress_structure
from trainables.model import configure_method, finalize_model
from trainables.model import build_classifier
from search_spaces import SEED_CONFIG


def timed(fn, repeats: int) -> float:
    """Return the median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 2, (args.batch,))
    for method in ("lora", "full"):
        cfg = TrialConfig.from_flat({"finetune.method": method})
        model = configure_method(build_classifier("dinov3-vits16", 2), cfg).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        print(f"fine-tune {method:4s} {args.size} px batch {args.batch}: "
              f"{args.batch / timed(step, args.repeats):.1f} img/s")
    model = finalize_model(model).eval()
    eval_x = torch.randn(64, 3, args.size, args.size)
    with torch.inference_mode():
        print(f"evaluation {args.size} px batch 64: {64 / timed(lambda: model(eval_x), args.repeats):.1f} img/s")
    cfg = TrialConfig.from_flat(dict(SEED_CONFIG))
    seconds = timed(lambda: compress_structure(model, cfg, None, ""), 1)
    print(f"compression (heads -> MLP -> SVD, seed plan): {seconds:.1f} s")
    print(f"threads {args.threads}")


if __name__ == "__main__":
    main()
