"""Which configurations near the seed dominate it? A grid around the seed, scored in-process.

    python bench/bench_near_seed.py --results-dir /tmp/def4/results

Runs the digits preset's seed configuration and a small grid around it through run_trial
(training stages come from the stage cache in --results-dir, so each point costs about a
second once a sweep has run there) and marks the points that dominate the seed on
val_auroc (max), params (min) and latency_ms (min), all measured in this one process.
"""

from __future__ import annotations

import argparse
import itertools
import logging

from search_spaces import SEED_CONFIG
from trainables.trial import TrialContext, run_trial
from tune.presets import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    ctx = TrialContext(results_dir=args.results_dir, show_progress=False)
    base = {**get_preset("digits").trial, **{k: v for k, v in SEED_CONFIG.items()}}
    seed = run_trial(base, ctx)
    print(f"seed: val_auroc {seed['val_auroc']:.5f} params {seed['params']} latency_ms {seed['latency_ms']:.3f}")
    print("tau_heads tau_mlp tau_svd svd_space r_max  val_auroc  params  latency_ms")
    grid = itertools.product([0.85, 0.89, 0.95], [0.95, 0.975], [0.975, 0.99], ["raw", "whitened"], [0.0, 0.15])
    for heads, mlp, svd, space, r_max in grid:
        m = run_trial({**base, "compress.tau_heads": heads, "compress.tau_mlp": mlp,
                       "compress.tau_svd": svd, "compress.svd_space": space,
                       "tokens.r_max": r_max, "tokens.alpha": 2.0}, ctx)
        dominates = (m["val_auroc"] >= seed["val_auroc"] and m["params"] <= seed["params"]
                     and m["latency_ms"] <= seed["latency_ms"]
                     and (m["val_auroc"], -m["params"], -m["latency_ms"])
                     != (seed["val_auroc"], -seed["params"], -seed["latency_ms"]))
        print(f"{heads:9} {mlp:7} {svd:7} {space:9} {r_max:5}  {m['val_auroc']:.5f}  {m['params']:6}  "
              f"{m['latency_ms']:.3f}{'  dominates' if dominates else ''}")


if __name__ == "__main__":
    main()
