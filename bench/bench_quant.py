"""Eager fp32 vs eager int8 vs ONNX Runtime fp32 vs ONNX Runtime int8 latency of one ViT, ratios in one run.

    python bench/bench_quant.py                               # ViT-S/16 at 96 and 224 px, 1 thread, batch 8
    python bench/bench_quant.py --backbone digits-vit --sizes 32 --rounds 3 --repeats 2   # a quick check

Random-init weights (speed does not depend on their values). The four variants are what a
trial runs with compress.quant in {none, int8} and eval.runtime in {torch, onnxruntime}
(compress.quant.quantize_model, trainables.evaluate.runtime.runtime_model). Each round times every
variant once (a block of `repeats` batches, its median), in an order that rotates from round
to round; a variant's ratio is the median over rounds of its block median / eager fp32's in the
same round, with the order-statistic 95% interval (trainables.evaluate.latency.median_interval), so load
that slows a whole round cancels. Also printed: model_bytes and the largest |logit| difference
to eager fp32 on the timed batch (these do not depend on load).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from compress.quant import model_bytes, quantize_model
from trainables.evaluate.latency import median_interval
from trainables.evaluate.runtime import runtime_model
from trainables.model import build_classifier

VARIANTS = (("eager fp32", "none", "torch"), ("eager int8", "int8", "torch"),
            ("ORT fp32", "none", "onnxruntime"), ("ORT int8", "int8", "onnxruntime"))


def variants(backbone: str, size: int, threads: int) -> dict[str, tuple[torch.nn.Module, int]]:
    """Return {name: (the model the variant runs, its model_bytes)} of one random-init classifier."""
    torch.manual_seed(0)
    model = build_classifier(backbone, 2).eval()
    built = {}
    for name, quant, runtime in VARIANTS:
        quantized = quantize_model(model, quant)
        built[name] = (runtime_model(quantized, model, runtime, quant, size, threads=threads), model_bytes(quantized))
    return built


def block_ms(model: torch.nn.Module, pixels: torch.Tensor, repeats: int) -> float:
    """Return the median ms per batch of `repeats` forward passes after one untimed pass."""
    model(pixels)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(pixels)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def bench(backbone: str, size: int, batch: int, threads: int, rounds: int, repeats: int) -> None:
    models = variants(backbone, size, threads)
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        reference_logits = models["eager fp32"][0](pixels)
        differences = {name: float((model(pixels) - reference_logits).abs().max())
                       for name, (model, _) in models.items()}
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(block_ms(models[name][0], pixels, repeats))
    print(f"\n{backbone} at {size} px, batch {batch}, {threads} thread(s), {rounds} rounds x {repeats} batches")
    print(f"{'variant':<11} {'ms/img':>8} {'ratio to eager fp32 [95% CI]':>30} {'model_bytes':>12} {'max|dlogit|':>12}")
    for name in names:
        ratios = [t / r for t, r in zip(times[name], times["eager fp32"])]
        ratio, lo, hi = median_interval(ratios)
        ms = statistics.median(times[name]) / batch
        print(f"{name:<11} {ms:8.3f} {ratio:>12.3f} [{lo:.3f}, {hi:.3f}]{'':>5} {models[name][1]:>12d} "
              f"{differences[name]:>12.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="dinov3-vits16", help="a trainables.model backbone name")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for size in args.sizes:
        bench(args.backbone, size, args.batch, args.threads, args.rounds, args.repeats)


if __name__ == "__main__":
    main()
