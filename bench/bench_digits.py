"""Embedded digits preset: what the training stages reach, what they cost, how steady latency is.

Runs, in this process and with the preset's defaults (trainables.config):
  1. pretrain of digits-vit on the 10 digit classes -> best val accuracy, seconds
  2. finetune of that backbone on the binary target with each method -> val AUROC, seconds
  3. latency of the full fine-tuned model, 5 measurements -> median ms/image and their CV

    python bench/bench_digits.py [--results-dir /tmp/bench-digits] [--methods full,lora,head_only]

Every stage goes through the stage cache in --results-dir: delete it to measure training again.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from compress import load_compressed
from trainables.config import TrialConfig
from trainables.evaluate.latency import measure_latency
from trainables.trial import TrialContext, run_trial


def history(results_dir: str, stage: str, key_hint: str = "") -> dict:
    """Return the history.json of the newest cache entry of a stage."""
    entries = sorted((Path(results_dir) / "cache" / stage).glob(f"{key_hint}*/history.json"),
                     key=lambda p: p.stat().st_mtime)
    return json.loads(entries[-1].read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="/tmp/bench-digits")
    parser.add_argument("--methods", default="full,lora,head_only")
    parser.add_argument("--latency-runs", type=int, default=5)
    args = parser.parse_args()
    ctx = TrialContext(results_dir=args.results_dir, show_progress=False)
    cfg = TrialConfig()
    print(f"torch threads {torch.get_num_threads()}; pretrain.epochs {cfg.pretrain.epochs}, "
          f"finetune.epochs {cfg.finetune.epochs}")

    print(f"{'method':<10} {'val_auroc':>9} {'val_acc':>8} {'finetune_s':>10} {'cache_hit':>9}")
    for method in args.methods.split(","):
        metrics = run_trial({"finetune.method": method}, ctx)
        print(f"{method:<10} {metrics['val_auroc']:>9.4f} {metrics['val_accuracy']:>8.4f} "
              f"{metrics['stage_s_finetune']:>10.1f} {str(metrics['cache_hit_finetune']):>9}")

    pretrain = history(args.results_dir, "pretrain")
    print(f"pretrain: best 10-class val accuracy {pretrain['best']['score']:.4f} at epoch "
          f"{pretrain['best']['epoch'] + 1}/{len(pretrain['history'])}, {pretrain['seconds']:.1f} s")

    full = sorted((Path(args.results_dir) / "cache" / "finetune").glob("*/model"),
                  key=lambda p: p.stat().st_mtime)[0]
    model = load_compressed(str(full)).eval()
    shape = (3, cfg.data.image_size, cfg.data.image_size)
    medians = [measure_latency(model, shape, warmup=cfg.eval.latency_warmup,
                               repeats=cfg.eval.latency_repeats,
                               batch_size=cfg.eval.latency_batch).latency_ms
               for _ in range(args.latency_runs)]
    cv = statistics.stdev(medians) / statistics.fmean(medians)
    print(f"latency, {len(medians)} measurements of the same model (batch {cfg.eval.latency_batch}, "
          f"{cfg.eval.latency_repeats} repeats each): {[round(m, 4) for m in medians]} ms/image, "
          f"CV {100 * cv:.2f}%")


if __name__ == "__main__":
    main()
