"""How many trials does each sampler need for the same front? Digits, one shared stage cache.

    python bench/bench_samplers.py --results-dir /tmp/bench-samplers --seeds 5 --trials 48 --batches 1,4
    python bench/bench_samplers.py --space default --samplers random,tpe,tpe:ladder --trials 48 --batches 1
    python bench/bench_samplers.py --space default --samplers tpe:ladder --trials 16 --batches 1 \
        --warm-source compress_only --warm-trials 48

Each run is a fresh Optuna study asked and told in this process, without Ray, the way the
sweep drives it: the seed point first, then the sampler. A batch of B asks B trials (each
suggested before the next is asked, so the sampler sees them RUNNING), evaluates them, then
tells all B. Every config runs through trainables.trial.run_trial on the digits preset's flat
config (tune.sweep.build_base) with the point's values. On compress_only the fine-tune is
trained once into --results-dir's stage cache and every trial after is compression +
evaluation only; on the default space a trial may train a fine-tune or prehab stage (each
once, shared through the cache). Evaluations are memoised by config, so a config two runs
share costs one evaluation. The space is the one a CPU sweep searches (Table.for_device("cpu")).

Measured on the noise-free objectives only: hypervolume of (val_auroc max, params min),
reference point AUROC 0.5 and the seed configuration's uncompressed parameter count (moocore).
Latency is left out here (cheap settings: one round of one repeat), since load moves it more
than the sampler; bench/bench_retime_fronts.py re-times the evaluated configs in one process.

Reports, per sampler and batch: mean hypervolume at 16 and --trials trials, regret against the
union front of every evaluated config, and the trials each seed needs to reach random's
mean hypervolume at --trials. Writes runs.jsonl (one line per run with its points, resumable),
samplers.md and samplers.png into --out.

Samplers are named as make_sampler takes them, with options after colons (--samplers is a
comma-separated list of such names, e.g. "gp,gp:startup=5:ladder"):
"tpe", "tpe:startup=5", "tpe:uni" (independent TPE), "tpe:noliar" (no constant liar even when
B > 1), "gp:startup=5", "nsga2:startup=12"; "ladder" or "ladder=K" queues the sweep's ladder
(search_spaces.ladder_points, K rungs, 4 by default) after the seed point, as run.py's --ladder
does. --warm-source SPACE also runs each sampler warm-started (tune.warm_start, as
--warm-start) from a --warm-trials run of the same sampler and seed over SPACE; those runs are
recorded as "<sampler>+warm", and their hypervolume counts their own trials only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from search_spaces import config_values, load_table
from tune.report.reports import hypervolume
from tune.study import make_sampler

CHEAP_LATENCY = {"eval.latency_repeats": 1, "eval.latency_rounds": 1, "eval.latency_warmup": 1}
DEFAULT_SAMPLERS = "random,tpe,gp,nsga2"
OBJECTIVES = (("val_auroc", "max"), ("params", "min"))


def parse_sampler(spec: str) -> tuple[str, dict[str, Any]]:
    """Return (sampler name, make_sampler keyword arguments) from "tpe:startup=5:uni"."""
    name, *options = spec.split(":")
    kwargs: dict[str, Any] = {}
    for option in filter(None, options):
        if option.startswith("ladder"):
            continue  # the study's design, not the sampler's: see ladder_count
        if option == "uni":
            kwargs["multivariate"] = False
        elif option == "noliar":
            kwargs["max_concurrent"] = 1  # built as if trials ran one at a time: no constant liar
        elif option.startswith("startup="):
            kwargs["startup_trials"] = int(option.removeprefix("startup="))
        else:
            raise ValueError(f"sampler option {option!r} in {spec!r}: expected uni, noliar, startup=N or ladder[=K]")
    return name, kwargs


def ladder_count(spec: str) -> int:
    """Return the ladder rungs `spec` queues after the seed point (0 without a ladder option)."""
    for option in spec.split(":")[1:]:
        if option == "ladder":
            return 4
        if option.startswith("ladder="):
            return int(option.removeprefix("ladder="))
    return 0


def config_key(point: dict[str, Any]) -> str:
    """Return the memo key of a point: its trial-config values, floats rounded to 6 digits."""
    values = config_values(point)
    return json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in sorted(values.items())})


class Evaluator:
    """Evaluates configs with run_trial, once each (memoised by config_key)."""

    def __init__(self, results_dir: str, memo_path: Path, space: str = "compress_only"):
        from trainables.trial import TrialContext
        from tune.presets import get_preset
        from tune.sweep import build_base, seed_config_points

        self.space = space
        self.base = build_base(get_preset("digits"), CHEAP_LATENCY, space)
        self.seed_point = seed_config_points(space, self.base)[0]
        self.ladder = lambda count: seed_config_points(space, self.base, count)[1:]  # as a sweep queues them
        self.context = TrialContext(results_dir=results_dir, show_progress=False)
        self.memo_path = memo_path
        self.memo: dict[str, list[float] | None] = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
        self.evaluated = 0
        self.params_uncompressed = self.memo.get("__params_uncompressed__")

    def __call__(self, point: dict[str, Any]) -> list[float] | None:
        """Return [val_auroc, params] of `point`, or None where the trial raised."""
        from trainables.trial import run_trial

        key = config_key(point)
        if key not in self.memo:
            try:
                metrics = run_trial({**self.base, **config_values(point)}, self.context)
                self.memo[key] = [float(metrics["val_auroc"]), float(metrics["params"])]
                if self.params_uncompressed is None:  # the seed configuration's, always evaluated first
                    self.params_uncompressed = float(metrics["params_uncompressed"])
                    self.memo["__params_uncompressed__"] = self.params_uncompressed
            except ValueError as err:  # a config the trial refuses: told FAIL, as the sweep does
                logging.getLogger(__name__).warning("config %s failed: %s", key, err)
                self.memo[key] = None
            self.evaluated += 1
            self.memo_path.write_text(json.dumps(self.memo))
        return self.memo[key]


def warm_start_from(source: optuna.Study, source_evaluate: Evaluator, evaluate: Evaluator, name: str):
    """Return what the finished study `source` (over source_evaluate's space) gives a new study over
    evaluate's, as --warm-start builds it (tune.warm_start.warm_start_of)."""
    from types import SimpleNamespace

    from tune.warm_start import check_comparable, warm_start_of

    old = SimpleNamespace(name=name, space=source_evaluate.space, base=source_evaluate.base, objectives=OBJECTIVES)
    new = SimpleNamespace(name="bench", space=evaluate.space, base=evaluate.base, objectives=OBJECTIVES)
    check_comparable(new, old)
    return warm_start_of(new, [(old, source.get_trials(deepcopy=False))])


def run_one(spec: str, seed: int, batch: int, trials: int, evaluate: Evaluator, warm=None) -> tuple[dict, optuna.Study]:
    """Run one study of `trials` trials, `batch` asked at a time; return its record (values per trial in
    order) and the study. `warm` (tune.warm_start.WarmStart) is added and its front queued as a sweep's."""
    from tune.warm_start import apply_warm_start, front_queue_size

    name, kwargs = parse_sampler(spec)
    sampler = make_sampler(name, seed, **{"max_concurrent": batch, **kwargs})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for point in [evaluate.seed_point, *evaluate.ladder(ladder_count(spec))]:
        study.enqueue_trial(point)
    queued = apply_warm_start(study, warm, front_queue_size(trials)) if warm is not None else 0
    space = load_table(evaluate.space).for_device("cpu").suggest
    values: list[list[float] | None] = []
    points: list[dict[str, Any]] = []
    started = time.perf_counter()
    while len(values) < trials:
        asked = []
        for _ in range(min(batch, trials - len(values))):
            trial = study.ask()
            space(trial)  # suggested now, so the next ask sees this trial's parameters
            asked.append(trial)
        for trial in asked:
            result = evaluate(trial.params)
            values.append(result)
            points.append(trial.params)
            if result is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, result)
    record = {"sampler": spec + ("+warm" if warm is not None else ""), "seed": seed, "batch": batch,
              "values": values, "points": points, "seconds": time.perf_counter() - started}
    if warm is not None:
        record.update(added=len(warm.trials), queued=queued)
    return record, study


def hv_curve(values: list[list[float] | None], reference: np.ndarray) -> list[float]:
    """Return the hypervolume after each trial of its values: val_auroc (max) first, then objectives to
    minimise (params, and latency where bench_retime_fronts adds it); `reference` is in losses."""
    losses, curve = [], []
    for value in values:
        if value is not None:
            losses.append([-value[0], *value[1:]])
        curve.append(hypervolume(np.array(losses), reference) if losses else 0.0)
    return curve


def first_reaching(curve: list[float], target: float) -> int | None:
    """Return the 1-based trial count at which `curve` first reaches `target`, else None."""
    return next((i + 1 for i, value in enumerate(curve) if value >= target * (1 - 1e-12)), None)


def summarise(runs: list[dict[str, Any]], params_uncompressed: float, trials: int,
              reference: np.ndarray | None = None) -> tuple[str, dict]:
    """Return (markdown table, curves by (sampler, batch)) of the runs. `reference` (losses, one per value)
    defaults to (-0.5, params_uncompressed) for values (val_auroc, params)."""
    reference = np.array([-0.5, params_uncompressed]) if reference is None else reference
    union = [[-v[0], *v[1:]] for run in runs for v in run["values"] if v is not None]
    union_hv = hypervolume(np.array(union), reference)
    curves: dict[tuple[str, int], list[list[float]]] = {}
    by_seed: dict[tuple[str, int], list[int]] = {}
    for run in runs:
        curves.setdefault((run["sampler"], run["batch"]), []).append(hv_curve(run["values"], reference)[:trials])
        by_seed.setdefault((run["sampler"], run["batch"]), []).append(run["seed"])
    randoms = [c for (spec, _), cs in curves.items() if spec == "random" for c in cs]
    target = float(np.mean([c[-1] for c in randoms])) if randoms else math.nan
    short = min(16, trials)
    lines = [f"Union front of all {len(union)} evaluations: hypervolume {union_hv:.5g}. Target: random's mean "
             f"{trials}-trial hypervolume {target:.5g} (over {len(randoms)} runs).", "",
             f"| sampler | at once | seeds | HV@{short} | HV@{trials} | regret@{short} | regret@{trials} | "
             f"trials to target, per seed | seeds at target by {short} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (spec, batch), cs in sorted(curves.items(), key=lambda item: (item[0][1], item[0][0])):
        at_short = float(np.mean([c[short - 1] for c in cs]))
        at_end = float(np.mean([c[-1] for c in cs]))
        reach = [first_reaching(c, target) for c in cs]
        shown = ", ".join(f"s{seed}:{n if n else '>' + str(trials)}" for seed, n in zip(by_seed[(spec, batch)], reach))
        within = sum(1 for n in reach if n is not None and n <= short)
        lines.append(f"| {spec} | {batch} | {len(cs)} | {at_short:.5g} | {at_end:.5g} | "
                     f"{100 * (union_hv - at_short) / union_hv:.2f}% | {100 * (union_hv - at_end) / union_hv:.2f}% | "
                     f"{shown} | {within}/{len(cs)} |")
    return "\n".join(lines) + "\n", {"curves": curves, "target": target, "union": union_hv}


def plot(summary: dict, out: Path, shown: set[str], space: str) -> None:
    """Draw the mean regret to the union front (% of its hypervolume, log scale) against trials of the
    samplers in `shown`, one panel per batch size; the dotted line is random's mean at the end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    union = summary["union"]
    regret = lambda hv: 100 * (union - np.asarray(hv)) / union  # noqa: E731
    batches = sorted({batch for _, batch in summary["curves"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.2), sharey=True, squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for (spec, b), cs in sorted(summary["curves"].items()):
            if spec not in shown or (b != batch and not (spec.startswith("random") and b == 1)):
                continue
            mean = regret(np.mean(cs, axis=0))
            ax.plot(np.arange(1, len(mean) + 1)[4:], mean[4:], label=f"{spec} ({len(cs)} seeds)",
                    linestyle="--" if spec == "random" else "-")
        ax.axhline(regret(summary["target"]), color="grey", linewidth=0.8, linestyle=":")
        ax.axvline(16, color="grey", linewidth=0.8, linestyle=":")
        ax.set_yscale("log")
        ax.set_title(f"{batch} at once")
        ax.set_xlabel("trials")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("regret to the union front, % of its hypervolume")
    axes[0][-1].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"digits, {space}, (val_auroc, params): mean regret vs trials (dotted: random at 48)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="/tmp/bench-samplers")
    parser.add_argument("--out", default=None, help="where runs.jsonl, samplers.md/png go (default <results-dir>/bench)")
    parser.add_argument("--space", default="compress_only", help="compress_only (cached trials) or default (trials train)")
    parser.add_argument("--samplers", default=DEFAULT_SAMPLERS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--plot", default="random,tpe,gp,nsga2,tpe:noliar", help="samplers drawn in samplers.png")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for evaluation")
    parser.add_argument("--warm-source", default=None, metavar="SPACE",
                        help="also run each sampler warm-started (tune.warm_start) from a --warm-trials run of the "
                             "same sampler and seed over SPACE, one at a time; recorded as '<sampler>+warm'")
    parser.add_argument("--warm-trials", type=int, default=48)
    parser.add_argument("--report-only", action="store_true", help="summarise runs.jsonl without running")
    parser.add_argument("--merge", nargs="+", default=(), metavar="DIR",
                        help="with --report-only: also summarise the runs.jsonl of these --out folders "
                             "(runs split over processes, e.g. one per seed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out or Path(args.results_dir) / "bench")
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.jsonl"
    runs = [json.loads(line) for line in runs_path.read_text().splitlines()] if runs_path.is_file() else []
    evaluate = Evaluator(args.results_dir, out / "memo.json", args.space)
    for folder in map(Path, args.merge):
        runs += [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
        memo = json.loads((folder / "memo.json").read_text())
        evaluate.params_uncompressed = evaluate.params_uncompressed or memo.get("__params_uncompressed__")
    if not args.report_only:
        specs = [s.strip() for s in args.samplers.split(",") if s.strip()]
        for spec in specs:
            parse_sampler(spec), ladder_count(spec)
        done = {(r["sampler"], r["seed"], r["batch"], len(r["values"])) for r in runs}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for batch in (int(b) for b in args.batches.split(",")):
                for spec in specs:
                    # Random draws each trial on its own: asking 4 at once gives the same trials as 1.
                    if (spec, seed, batch, args.trials) in done or (spec.startswith("random") and batch > 1):
                        continue
                    before = evaluate.evaluated
                    run, _ = run_one(spec, seed, batch, args.trials, evaluate)
                    runs.append(run)
                    with runs_path.open("a") as handle:
                        handle.write(json.dumps(run) + "\n")
                    print(f"{spec:>16} seed {seed} batch {batch}: {evaluate.evaluated - before} new evaluations, "
                          f"{run['seconds']:.0f} s", flush=True)
        if args.warm_source:
            source_evaluate = Evaluator(args.results_dir, out / f"memo-{args.warm_source}.json", args.warm_source)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for spec in specs:
                    if (spec + "+warm", seed, 1, args.trials) in done:
                        continue
                    source_run, source = run_one(spec, seed, 1, args.warm_trials, source_evaluate)
                    warm = warm_start_from(source, source_evaluate, evaluate, f"{args.warm_source}-{spec}-s{seed}")
                    run, _ = run_one(spec, seed, 1, args.trials, evaluate, warm)
                    runs.append(run)
                    with runs_path.open("a") as handle:
                        handle.write(json.dumps(run) + "\n")
                    print(f"{run['sampler']:>16} seed {seed}: {run['added']} trials added from a {args.warm_trials}-trial "
                          f"{args.warm_source} run, {run['queued']} of its front queued, "
                          f"{run['seconds']:.0f} s", flush=True)
    runs = [r for r in runs if len(r["values"]) >= args.trials]
    if not runs or evaluate.params_uncompressed is None:
        raise SystemExit("no finished runs to summarise")
    table, summary = summarise(runs, evaluate.params_uncompressed, args.trials)
    (out / "samplers.md").write_text(table)
    plot(summary, out / "samplers.png", {s.strip() for s in args.plot.split(",")}, args.space)
    print(table)
    print(f"wrote {out / 'samplers.md'} and {out / 'samplers.png'}")


if __name__ == "__main__":
    main()
