"""Does a budget steer the search? One seeded digits sweep without a budget, then the same sweep with one.

    python bench/bench_budget.py [--results-dir /tmp/bench-budget] [--num-samples 24] [--fraction 0.1]
                                 [--latency-fraction F]

Both sweeps run `python tune/run.py` (preset digits, space compress_only, sampler tpe, seed 0,
one trial at a time, no re-timing pass) on one results folder, so they share the stage cache
and only the first trains. The budget is params <= FRACTION x the reference trial's count in
the first sweep (and, with --latency-fraction, latency_ms <= F x its latency: load-dependent).
Printed per sweep: the share of complete trials within the budget, overall and after TPE's
10 random start-up trials (which both sweeps draw alike), and pareto.md's recommendation line.
The budgeted sweep is also checked to have recorded constraints on every complete trial.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
STARTUP_TRIALS = 10  # TPESampler's n_startup_trials (tune.study.make_sampler keeps the default)


def run_sweep(results_dir: Path, name: str, num_samples: int, budget: str | None) -> float:
    """Run one digits sweep through the CLI; return its wall time in seconds."""
    command = [sys.executable, str(REPO / "tune" / "run.py"), "--results-dir", str(results_dir), "--name", name,
               "--num-samples", str(num_samples), "--space", "compress_only", "--sampler", "tpe", "--seed", "0",
               "--max-concurrent", "1", "--no-retime", *(["--budget", budget] if budget else [])]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def complete_trials(results_dir: Path, name: str) -> pd.DataFrame:
    """Return the sweep's complete trials (trials.parquet), by trial number."""
    trials = pd.read_parquet(results_dir / name / "trials.parquet")
    return trials[trials["state"] == "COMPLETE"].sort_values("number")


def within(trials: pd.DataFrame, params_limit: float, latency_limit: float | None) -> pd.Series:
    """Return, per trial, whether it meets the budget (computed here, so both sweeps are judged alike)."""
    ok = trials["params"] <= params_limit
    return ok & (trials["latency_ms"] <= latency_limit) if latency_limit is not None else ok


def constraints_recorded(results_dir: Path, name: str) -> tuple[int, int]:
    """Return (complete trials with recorded constraints, complete trials) of the sweep's study."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{results_dir / name / 'optuna.db'}")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sum(bool(trial.constraints) for trial in complete), len(complete)


def main() -> None:
    """Run both sweeps and print the feasible share of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=Path("/tmp/bench-budget"))
    parser.add_argument("--num-samples", type=int, default=24)
    parser.add_argument("--fraction", type=float, default=0.1, help="params bound over the reference's count")
    parser.add_argument("--latency-fraction", type=float, default=None,
                        help="also bound latency_ms by this fraction of the reference's (load-dependent)")
    args = parser.parse_args()
    results = args.results_dir.resolve()
    stamp = time.strftime("%H%M%S")
    free, budgeted = f"free-{stamp}", f"budget-{stamp}"

    free_s = run_sweep(results, free, args.num_samples, None)
    first = complete_trials(results, free)
    reference = first.loc[first["enqueued"].astype(bool)].iloc[0]
    params_limit = args.fraction * float(reference["params"])
    latency_limit = args.latency_fraction * float(reference["latency_ms"]) if args.latency_fraction else None
    budget = f"params<={params_limit:.6g}" + (f",latency_ms<={latency_limit:.6g}" if latency_limit else "")
    print(f"reference (trial {int(reference['number'])}): params {int(reference['params'])}, "
          f"latency_ms {float(reference['latency_ms']):.4g}; budget {budget}", flush=True)
    budget_s = run_sweep(results, budgeted, args.num_samples, budget)

    for name, seconds in ((free, free_s), (budgeted, budget_s)):
        trials = complete_trials(results, name)
        ok = within(trials, params_limit, latency_limit)
        late = trials["number"] > STARTUP_TRIALS
        answer = (results / name / "pareto.md").read_text().splitlines()[2]
        print(f"{name}: {int(ok.sum())}/{len(trials)} complete trials within the budget ({ok.mean():.0%}); "
              f"after the {STARTUP_TRIALS} start-up trials {int(ok[late].sum())}/{int(late.sum())} "
              f"({ok[late].mean():.0%}); wall {seconds:.0f} s")
        print(f"  pareto.md: {answer}")
    recorded, total = constraints_recorded(results, budgeted)
    print(f"{budgeted}: constraints recorded on {recorded}/{total} complete trials")


if __name__ == "__main__":
    main()
