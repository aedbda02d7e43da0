"""The notes' recipes on the digits preset: TTA modes and training-time token pruning, one process.

    python bench/bench_recipes.py --results-dir /tmp/i14-results [--seeds 0,1,2] [--set KEY=VALUE ...]

Scores the reference (the seed configuration) with eval.tta none / flips / dihedral (the
fine-tune is shared: evaluation only), then, for each run.seed in --seeds, the reference
with token pruning at r_max 0.6, alpha 1.2, pruned at inference only and pruned while
fine-tuning from the middle epoch on (tokens.train_from_epoch=middle: its own fine-tune).
AUROC differences are paired on the same validation images (stratified bootstrap, 95%):
the TTA rows against "tta none", training-time pruning against inference-only pruning of
the same seed. Training stages come from the cache in --results-dir. Latencies are taken one
after another in this process, so compare them as ratios within one run.
"""

from __future__ import annotations

import argparse
import logging

from search_spaces import SEED_CONFIG
from trainables.config import parse_overrides
from trainables.evaluate.bootstrap import paired_deltas
from trainables.trial import TrialContext, evaluate_trial
from tune.presets import get_preset

COLUMNS = ("val_auroc", "val_auroc_lo", "val_auroc_hi", "latency_ms", "gflops", "tta_passes")
PRUNED = {"tokens.r_max": 0.6, "tokens.alpha": 1.2}


def _row(name: str, metrics: dict, delta: dict | None) -> str:
    cells = [f"{metrics[c]:.4f}" if isinstance(metrics[c], float) else str(metrics[c]) for c in COLUMNS]
    paired = (f"{delta['delta_auroc']:+.4f} [{delta['delta_auroc_lo']:+.4f}, {delta['delta_auroc_hi']:+.4f}]"
              if delta else "")
    return f"{name:<46}" + "".join(f"{cell:>14}" for cell in cells) + f"  {paired}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--seeds", default="0", help="comma-separated run.seed values for the pruning pair")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    ctx = TrialContext(results_dir=args.results_dir, show_progress=False)
    base = {**get_preset("digits").trial, **SEED_CONFIG, **parse_overrides(args.set)}
    print(f"{'variant':<46}" + "".join(f"{c:>14}" for c in COLUMNS) + "  delta_auroc [95% paired]")
    reference = None
    for tta in ("none", "flips", "dihedral"):
        metrics, predictions = evaluate_trial({**base, "eval.tta": tta}, ctx)
        delta = None if reference is None else paired_deltas(predictions.labels, predictions.probs, reference.probs)
        reference = reference or predictions
        print(_row(f"reference, tta {tta}", metrics, delta), flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        seeded = {**base, **PRUNED, "run.seed": seed}
        inference, inference_preds = evaluate_trial(seeded, ctx)
        print(_row(f"seed {seed}: pruned at inference only", inference, None), flush=True)
        trained, trained_preds = evaluate_trial({**seeded, "tokens.train_from_epoch": "middle"}, ctx)
        delta = paired_deltas(trained_preds.labels, trained_preds.probs, inference_preds.probs)
        print(_row(f"seed {seed}: pruned while fine-tuning (middle on)", trained, delta), flush=True)


if __name__ == "__main__":
    main()
