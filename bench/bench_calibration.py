"""Issue 29, item 4: temperature scaling of the digits reference and of compressed points.

    PYTHONPATH=$PWD python bench/bench_calibration.py [--results-dir /tmp/bench-calibration]

For the digits preset's reference (seed thresholds) and two compressed configurations, in this
process: the temperature fitted on the validation split, validation ECE and NLL before and
after it (the after-figures cross-fitted within the split, as a trial records them; and, in-sample,
the validation NLL at T, what the exported model gives on the split it was fitted on), and the
test split's ECE and NLL before and after the validation temperature (as --final-eval reports
them). Quality figures only: nothing here depends on the machine's load. Training stages go
through the stage cache in --results-dir (the compressed points reuse the reference's fine-tune).
"""

from __future__ import annotations

import argparse
import tempfile

from search_spaces import SEED_CONFIG
from trainables.evaluate.metrics import classification_metrics, temperature_scale
from trainables.trial import TrialContext, evaluate_trial

FAST_EVAL = {"eval.latency_repeats": 3, "eval.latency_rounds": 1, "eval.latency_warmup": 1}
POINTS = {
    "reference": {},
    "tau 0.8/0.8/0.8": {"compress.tau_heads": 0.8, "compress.tau_mlp": 0.8, "compress.tau_svd": 0.8},
    "tau 0.8 + tokens 0.5": {"compress.tau_heads": 0.8, "compress.tau_mlp": 0.8, "compress.tau_svd": 0.8,
                             "tokens.r_max": 0.5, "tokens.alpha": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=None, help="stage cache folder (default: a fresh temporary one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for every point (e.g. pretrain.epochs=1 for a quick check)")
    args = parser.parse_args()
    from trainables.config import parse_overrides

    ctx = TrialContext(results_dir=args.results_dir or tempfile.mkdtemp(prefix="bench-calibration-"),
                       show_progress=False)
    overrides = parse_overrides(args.set)
    header = (f"{'point':<22} {'val_auroc':>9} {'T':>6} {'val_ece':>8} {'ece_cal':>8} {'val_nll':>8} {'nll_cal':>8}"
              f" {'nll@T in':>8} {'test_ece':>8} {'ece@T':>8} {'test_nll':>8} {'nll@T':>8}")
    print(header)
    for name, point in POINTS.items():
        flat = {**SEED_CONFIG, **FAST_EVAL, **point, **overrides}
        val, val_predictions = evaluate_trial(flat, ctx)
        test, predictions = evaluate_trial(flat, ctx, split="test")
        temperature = val["val_temperature"]
        scaled = classification_metrics(predictions.labels, temperature_scale(predictions.probs, temperature))
        in_sample = classification_metrics(val_predictions.labels,
                                           temperature_scale(val_predictions.probs, temperature))
        print(f"{name:<22} {val['val_auroc']:>9.4f} {temperature:>6.3f} {val['val_ece']:>8.4f} "
              f"{val['val_ece_cal']:>8.4f} {val['val_nll']:>8.4f} {val['val_nll_cal']:>8.4f} {in_sample['nll']:>8.4f} "
              f"{test['test_ece']:>8.4f} {scaled['ece']:>8.4f} {test['test_nll']:>8.4f} {scaled['nll']:>8.4f}")


if __name__ == "__main__":
    main()
