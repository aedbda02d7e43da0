"""Benchmark: compress_model on DINOv3 ViT-S/16 (224x224, 4 registers), CPU.

The model is randomly initialised, then every attention/MLP weight gets geometric singular
values (sigma_i = 0.98^i), unequal head scales and log-normal unit scales, as trained ViTs
have; with flat random-init spectra truncated SVD would never apply and the timing would
skip the factorisation work. Calibration: one batch of 8 random images.

Prints, for each plan (heads 0.89, MLP 0.975, SVD 0.975 raw / whitened), the median of
`--runs` timings of compress_model and the parameters before/after. The whitened plan is
timed twice: with statistics precomputed on the uncompressed model (what a trial does, it
caches them) and with the calibration batch itself (statistics collected inside).
Goal (issue 3): every variant under 5 s.

Run: python bench/bench_compress.py [--runs 3]
"""

import argparse
import os
import statistics
import time

import torch
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from compress import CompressionPlan, collect_input_stats, compress_model

SPECTRUM_DECAY = 0.98
BATCH_SIZE = 8


def shaped_vit_s() -> nn.Module:
    """Return a ViT-S/16 with shaped spectra (see module docstring), in eval mode."""
    torch.manual_seed(0)
    model = DINOv3ViTModel(DINOv3ViTConfig(num_register_tokens=4)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layer:
            linears = [getattr(layer.attention, f"{p}_proj") for p in "qkvo"] + [layer.mlp.up_proj, layer.mlp.down_proj]
            for linear in linears:
                out_features, in_features = linear.weight.shape
                rank = min(out_features, in_features)
                left, _ = torch.linalg.qr(torch.randn(out_features, rank, generator=generator))
                right, _ = torch.linalg.qr(torch.randn(in_features, rank, generator=generator))
                linear.weight.copy_((left * SPECTRUM_DECAY ** torch.arange(rank)) @ right.T)
            attention = layer.attention
            head_scales = torch.rand(attention.num_heads, generator=generator) + 0.2
            attention.o_proj.weight.mul_(head_scales.repeat_interleave(attention.head_dim))
            layer.mlp.up_proj.weight.mul_(torch.exp(0.5 * torch.randn(layer.mlp.up_proj.out_features, 1, generator=generator)))
    return model


def median_seconds(action, runs: int) -> tuple[float, float, float, object]:
    """Return (median wall s, min wall s, median CPU s of this process, the last result) over `runs` calls."""
    wall_s, cpu_s, result = [], [], None
    for _ in range(runs):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        result = action()
        wall_s.append(time.perf_counter() - wall_start)
        cpu_s.append(time.process_time() - cpu_start)
    return statistics.median(wall_s), min(wall_s), statistics.median(cpu_s), result


def main() -> None:
    """Build the model, time every plan variant and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    model = shaped_vit_s()
    batch = torch.randn(BATCH_SIZE, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, runs {args.runs}")

    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    wall_s, best_s, cpu_s, stats = median_seconds(lambda: collect_input_stats(model, [batch]), args.runs)
    print(
        f"collect_input_stats (batch {BATCH_SIZE}): median {wall_s:.2f} s wall (min {best_s:.2f}), {cpu_s:.2f} s CPU"
    )

    seed = dict(tau_heads=0.89, tau_mlp=0.975, tau_svd=0.975)
    variants = [
        ("raw", CompressionPlan(**seed, svd_space="raw"), None),
        ("whitened, cached stats", CompressionPlan(**seed, svd_space="whitened"), stats),
        ("whitened, batch", CompressionPlan(**seed, svd_space="whitened"), [batch]),
    ]
    for label, plan, calibration in variants:
        wall_s, best_s, cpu_s, (_, report) = median_seconds(
            lambda: compress_model(model, plan, calibration=calibration), args.runs
        )
        applied = sum(decision.applied for decision in report.svd)
        heads = sum(decision.kept for decision in report.heads)
        units = sum(decision.kept for decision in report.mlp)
        print(
            f"compress_model [{label}]: median {wall_s:.2f} s wall (min {best_s:.2f}), {cpu_s:.2f} s CPU; "
            f"params {report.params_before:,} -> {report.params_after:,} ({report.compression_ratio:.3f}); heads kept {heads}/72, "
            f"MLP units kept {units}/{12 * 1536}, SVD applied {applied}/{len(report.svd)}"
        )


if __name__ == "__main__":
    main()
