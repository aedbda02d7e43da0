"""The notes' recipes on the digits preset: TTA modes and training-time token pruning, one process.

    python bench/bench_recipes.py --results-dir /tmp/i14-results --set finetune.epochs=2 ...

Scores the reference (the seed configuration) with eval.tta none / flips / dihedral (the
fine-tune is shared: evaluation only), then the reference with token pruning at r_max 0.6,
alpha 1.2 pruned at inference only and pruned while fine-tuning from the middle epoch on
(tokens.train_from_epoch=middle: its own fine-tune). Training stages come from the cache in
--results-dir where a sweep with the same --set values ran. Latencies are taken one after
another in this process, so compare them as ratios within one run.
"""

from __future__ import annotations

import argparse
import logging

from search_spaces import SEED_CONFIG
from trainables.config import parse_overrides
from trainables.trial import TrialContext, run_trial
from tune.presets import get_preset

COLUMNS = ("val_auroc", "val_accuracy", "latency_ms", "gflops", "tta_passes", "cache_hit_finetune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    ctx = TrialContext(results_dir=args.results_dir, show_progress=False)
    base = {**get_preset("digits").trial, **SEED_CONFIG, **parse_overrides(args.set)}
    pruned = {"tokens.r_max": 0.6, "tokens.alpha": 1.2}
    variants = {
        "reference, tta none": {"eval.tta": "none"},
        "reference, tta flips": {"eval.tta": "flips"},
        "reference, tta dihedral": {"eval.tta": "dihedral"},
        "pruned at inference only": pruned,
        "pruned while fine-tuning (middle epoch on)": {**pruned, "tokens.train_from_epoch": "middle"},
    }
    print(f"{'variant':<44}" + "".join(f"{c:>20}" for c in COLUMNS))
    for name, changes in variants.items():
        metrics = run_trial({**base, **changes}, ctx)
        cells = [f"{metrics[c]:.4f}" if isinstance(metrics[c], float) else str(metrics[c]) for c in COLUMNS]
        print(f"{name:<44}" + "".join(f"{cell:>20}" for cell in cells))


if __name__ == "__main__":
    main()
