"""Benchmark: CLS-attention token pruning on DINOv3 ViT-S/16, 224x224, batch 8, CPU.

Prints, from one run, the latency of the unpruned and the token-pruned model
(r_max=0.6, alpha=1.2; measurements alternate between the two so that load on a
shared machine hits both alike), the speed-up, the FLOP ratio from count_gflops and
speed-up / FLOP ratio. Goal (issue 3): speed-up >= 1.8 and >= 90% of the FLOP ratio.

Run: python bench/bench_tokens.py [--rounds 5] [--repeats 5]
"""

import argparse
import copy
import statistics

import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from compress.tokens import enable_token_pruning
from trainables.evaluate.latency import count_gflops, device_name, measure_latency

INPUT_SHAPE = (3, 224, 224)
BATCH_SIZE = 8
R_MAX = 0.6
ALPHA = 1.2


def build_models() -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """Return (unpruned, pruned) randomly initialised ViT-S/16 models in eval mode and the pruning summary."""
    torch.manual_seed(0)
    config = DINOv3ViTConfig(num_register_tokens=4, image_size=224, patch_size=16)
    unpruned = DINOv3ViTModel(config).eval()
    pruned = copy.deepcopy(unpruned)
    summary = enable_token_pruning(pruned, r_max=R_MAX, alpha=ALPHA)
    return unpruned, pruned, summary


def coefficient_of_variation(values: list[float]) -> float:
    """Return stdev / mean of `values`."""
    return statistics.stdev(values) / statistics.mean(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating measurements per model")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    args = parser.parse_args()

    unpruned, pruned, summary = build_models()
    print(f"device: {device_name('cpu')}; schedule: {summary['schedule']}")
    gflops = {"unpruned": count_gflops(unpruned, INPUT_SHAPE), "pruned": count_gflops(pruned, INPUT_SHAPE)}

    latencies_ms = {"unpruned": [], "pruned": []}
    spreads_ms = {"unpruned": [], "pruned": []}
    for _ in range(args.rounds):
        for name, model in (("unpruned", unpruned), ("pruned", pruned)):
            result = measure_latency(model, INPUT_SHAPE, warmup=1, repeats=args.repeats, batch_size=BATCH_SIZE)
            latencies_ms[name].append(result.latency_ms)
            spreads_ms[name].append(result.latency_ms_spread)

    median_ms = {name: statistics.median(values) for name, values in latencies_ms.items()}
    speedup = median_ms["unpruned"] / median_ms["pruned"]
    flop_ratio = gflops["unpruned"] / gflops["pruned"]

    print(f"{'model':<10}{'GFLOP/img':>11}{'ms/img':>9}{'IQR ms':>9}{'CV':>7}")
    for name in ("unpruned", "pruned"):
        print(
            f"{name:<10}{gflops[name]:>11.3f}{median_ms[name]:>9.2f}"
            f"{statistics.median(spreads_ms[name]):>9.2f}{coefficient_of_variation(latencies_ms[name]):>7.1%}"
        )
    print(f"speed-up {speedup:.2f}x  FLOP ratio {flop_ratio:.2f}x  speed-up/FLOP ratio {speedup / flop_ratio:.1%}")
    print(
        f"goal: speed-up >= 1.8x {'met' if speedup >= 1.8 else 'NOT met'}; "
        f">= 90% of FLOP ratio {'met' if speedup >= 0.9 * flop_ratio else 'NOT met'}"
    )
    print(f"CV = stdev/mean of {args.rounds} measurements (each the median of {args.repeats} runs, batch {BATCH_SIZE})")


if __name__ == "__main__":
    main()
