"""Paired val AUROC of one digits configuration at each compress.quant x eval.runtime, on the same images.

    python tune/run.py --results-dir /tmp/qsweep --name digits-quant          # any digits sweep: its cache
    python bench/bench_quant_digits.py --results-dir /tmp/qsweep --name digits-quant

Each row is `trainables.trial.evaluate_trial` of the sweep's base config + the seed configuration
(its training stages cache hits) with compress.quant and eval.runtime set; the difference to fp32
PyTorch is paired on the validation images, with the stratified bootstrap 95% interval
(trainables.evaluate.bootstrap.paired_deltas). AUROC, params and model_bytes do not depend on load.
"""

from __future__ import annotations

import argparse

from search_spaces import SEED_CONFIG
from trainables.evaluate.bootstrap import paired_deltas
from trainables.trial import TrialContext, evaluate_trial
from tune.sweep import read_settings

SETTINGS = (("none", "torch"), ("int8", "torch"), ("none", "onnxruntime"), ("int8", "onnxruntime"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", required=True)
    parser.add_argument("--name", required=True, help="a finished digits sweep under --results-dir")
    args = parser.parse_args()
    settings = read_settings(args.results_dir, args.name)
    if settings is None:
        parser.error(f"no sweep {args.name!r} under {args.results_dir}")
    context = TrialContext(results_dir=args.results_dir, show_progress=False)
    runs = {(quant, runtime): evaluate_trial({**settings.base, **SEED_CONFIG, "compress.quant": quant,
                                              "eval.runtime": runtime}, context)
            for quant, runtime in SETTINGS}
    reference = runs[SETTINGS[0]][1]
    print(f"{'quant':<6} {'runtime':<12} {'val_auroc':>9}  {'delta vs fp32 torch [95%]':<30} {'params':>8} "
          f"{'model_bytes':>11}  ({reference.labels.size} images)")
    for (quant, runtime), (metrics, predictions) in runs.items():
        delta = paired_deltas(reference.labels, predictions.probs, reference.probs)
        print(f"{quant:<6} {runtime:<12} {metrics['val_auroc']:9.6f}  {delta['delta_auroc']:+.5f} "
              f"[{delta['delta_auroc_lo']:+.5f}, {delta['delta_auroc_hi']:+.5f}]{'':<6} {metrics['params']:>8} "
              f"{metrics['model_bytes']:>11}")


if __name__ == "__main__":
    main()
