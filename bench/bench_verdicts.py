"""Print the uncertainty figures of a finished sweep: interval widths, significant AUROC differences, re-timing.

    python bench/bench_verdicts.py results/<name> [--wall-s SECONDS]

--wall-s is the sweep command's wall time, to give the re-timing pass's share of it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd


def main() -> None:
    """Read pareto.csv, trials.parquet and retime.csv of one sweep folder and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--wall-s", type=float, default=None)
    args = parser.parse_args()
    trials = pd.read_parquet(args.sweep_dir / "trials.parquet")
    trials = trials[trials["state"] == "COMPLETE"]
    table = pd.read_csv(args.sweep_dir / "pareto.csv")
    front = table[table["role"] == "front"]
    print(f"complete trials {len(trials)}, front points {len(front)}")
    for name in ("val_auroc", "val_auprc", "val_accuracy", "latency_ms"):
        if f"{name}_lo" in trials.columns:
            widths = (trials[f"{name}_hi"] - trials[f"{name}_lo"]).astype(float)
            print(f"{name}: 95% interval width over trials median {widths.median():.4g} "
                  f"(min {widths.min():.4g}, max {widths.max():.4g})")
    for name in ("val_auroc", "latency_ms", "params"):
        column = f"verdict_{name}"
        if column in front.columns:
            counts = front[column].value_counts().to_dict()
            print(f"{column} on the front: {counts}; differs significantly from the reference: "
                  f"{sum(v for k, v in counts.items() if k in ('better', 'worse'))}/{len(front)}")
    if "delta_val_auroc_lo" in front.columns:
        widths = (front["delta_val_auroc_hi"] - front["delta_val_auroc_lo"]).astype(float)
        print(f"paired delta_val_auroc interval width on the front: median {widths.median():.4g}")
    retime = args.sweep_dir / "retime.csv"
    if retime.is_file():
        frame = pd.read_csv(retime)
        ref = frame[frame["role"] == "reference"].iloc[0]
        rep = frame[frame["role"] == "repeat"].iloc[0]
        moved = abs(rep["latency_ms_retimed"] - ref["latency_ms_retimed"]) / ref["latency_ms_retimed"]
        print(f"re-timing: {len(frame)} timed models, {int(frame['rounds'].max())} rounds, device {ref['device']}")
        print(f"reference timed twice in one pass: {ref['latency_ms_retimed']:.4g} and "
              f"{rep['latency_ms_retimed']:.4g} ms/img, {100 * moved:.1f}% apart "
              f"(repeat verdict: {rep['verdict_latency_ms']})")
        sweep_ref = table["latency_ms_sweep"].iloc[0] if "latency_ms_sweep" in table.columns else float("nan")
        print(f"reference in-sweep latency {sweep_ref:.4g} ms/img vs re-timed {ref['latency_ms_retimed']:.4g}")
        ratios = []
        for _, row in table[table["role"] == "front"].iterrows():
            if "latency_ms_sweep" in row and row["latency_ms_sweep"] > 0:
                ratios.append(row["latency_ms"] / row["latency_ms_sweep"])
        if ratios:
            print(f"front re-timed / in-sweep latency: median {statistics.median(ratios):.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
        print(f"pass {ref['pass_s']:.1f} s (building the models {ref['build_s']:.1f} s)"
              + (f", {100 * ref['pass_s'] / args.wall_s:.1f}% of the sweep's {args.wall_s:.0f} s" if args.wall_s else ""))


if __name__ == "__main__":
    main()
