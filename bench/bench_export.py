"""Export cost and ONNX Runtime vs PyTorch latency, for a sweep's trials and a random-init ViT-S/16.

    python bench/bench_export.py --results-dir /tmp/i12-results --name e1 --trials reference,3
    python bench/bench_export.py --vits --image-size 224

Sweep trials go through tune.report.export.export_trial (the `--export ... --onnx` path): export
seconds, folder size, and the paired PyTorch / ORT latencies it writes into metrics.json.
The ViT-S/16 (trainables.model BACKBONES, random weights) is saved with compress.save_compressed
and exported with compress.onnx_export, uncompressed and compressed, timed the same way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def bench_sweep(results_dir: str, name: str, trials: list[str], onnx: bool) -> list[dict]:
    import optuna

    from tune.report.export import export_trial
    from tune.study import make_storage
    from tune.sweep import read_settings

    settings = read_settings(results_dir, name)
    study = optuna.load_study(study_name=name, storage=make_storage(settings.storage_url, results_dir, name))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for which in trials:
            result = export_trial(settings, study, which, Path(scratch) / f"trial-{which}", onnx=onnx)
            row = {"model": f"{name} trial {result.trial} ({result.metrics['role']})",
                   "export_s": round(result.seconds, 1), "folder_mb": round(result.size_bytes / 1e6, 3),
                   "params": result.metrics["sweep_metrics"].get("params"),
                   "sweep_latency_ms": result.metrics["sweep_metrics"].get("latency_ms")}
            row.update({k: result.metrics["onnx"][k] for k in ("torch_latency_ms", "ort_latency_ms", "ort_over_torch",
                                                                 "max_abs_diff", "threads", "latency_batch")}
                       if onnx else {})
            rows.append(row)
    return rows


def bench_vits(image_size: int, batch_size: int, threads: int, repeats: int, rounds: int) -> list[dict]:
    from compress import CompressionPlan, TokenPlan, compress_model, count_params, save_compressed
    from compress.onnx_export import export_onnx, onnx_max_abs_difference, onnx_session
    from trainables.model import build_classifier
    from tune.report.export import paired_cpu_latency

    torch.manual_seed(0)
    reference = build_classifier("dinov3-vits16", 2).eval()
    # Random weights have flat spectra, so SVD would keep everything: prune heads, MLP and tokens.
    compressed, _ = compress_model(reference, CompressionPlan(tau_heads=0.8, tau_mlp=0.8),
                                  tokens=TokenPlan(r_max=0.5, alpha=1.0))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, model in (("ViT-S/16 random init, uncompressed", reference),
                             ("ViT-S/16 random init, heads 0.8 + MLP 0.8 + tokens r_max 0.5", compressed)):
            folder = Path(scratch) / label.split(",")[1].strip().replace(" ", "_")
            started = time.perf_counter()
            save_compressed(model, folder, image_size=image_size)
            save_s = time.perf_counter() - started
            started = time.perf_counter()
            export_onnx(model, folder / "model.onnx", image_size)
            onnx_s = time.perf_counter() - started
            session = onnx_session(folder / "model.onnx", threads=threads)
            pixels = torch.randn(4, 3, image_size, image_size)
            diff = onnx_max_abs_difference(model, session, pixels)
            torch_ms, ort_ms = paired_cpu_latency(model, session, image_size, batch_size=batch_size, threads=threads,
                                                  warmup=2, repeats=repeats, rounds=rounds, pause_s=0.25)
            rows.append({"model": f"{label} @ {image_size} px", "params": count_params(model),
                         "save_s": round(save_s, 2), "onnx_export_s": round(onnx_s, 1),
                         "folder_mb": round(_folder_bytes(folder) / 1e6, 2), "max_abs_diff": diff,
                         "torch_latency_ms": torch_ms, "ort_latency_ms": ort_ms, "ort_over_torch": ort_ms / torch_ms,
                         "threads": threads, "latency_batch": batch_size})
            shutil.rmtree(folder)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir")
    parser.add_argument("--name")
    parser.add_argument("--trials", default="reference", help="comma-separated trial numbers or 'reference'")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--vits", action="store_true", help="also bench a random-init ViT-S/16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    if args.name:
        rows += bench_sweep(args.results_dir, args.name, args.trials.split(","), onnx=not args.no_onnx)
    if args.vits:
        rows += bench_vits(args.image_size, args.batch, args.threads, args.repeats, args.rounds)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
