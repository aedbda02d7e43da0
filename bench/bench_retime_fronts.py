"""The sampler benchmark's runs scored on all three objectives, every latency re-timed in this one process.

    python bench/bench_retime_fronts.py --runs /tmp/bs2/s0 /tmp/bs2/s3 --results-dir /tmp/bench-samplers \
        --space compress_only --trials 48 --out /tmp/bs2/retimed

bench/bench_samplers.py scores runs on (val_auroc max, params min) only, since each trial's
latency there was taken under whatever load the machine had at that minute. This script reads
those runs (runs.jsonl with each trial's point, and memo.json for the uncompressed parameter
count), collects every distinct config of their first --trials trials, rebuilds each one through
the stage cache the runs used (trainables.trial.build_trial_model on the digits preset with its
own latency settings, as tune.report.retime.retime_sweep rebuilds a front) and times them all with
tune.report.retime.time_interleaved under the host's timing lock, at --threads torch threads.

The configs are timed in chunks of --chunk: the reference (the seed configuration, built once
and kept) and the chunk's configs, interleaved over --rounds rounds. A config's latency_rel is
the median over rounds of its time / the reference's time in the same round
(relative_latencies), so a slow phase of the machine, which slows a whole round, cancels, and
chunks timed minutes (or reruns days) apart compare. The seed configuration is rebuilt and timed
as an ordinary config too, so its latency_rel (1 up to noise) shows how far one config moves.
The chunks are shuffled over configs (fixed seed) so that no sampler's configs share one phase.
Holding only one chunk keeps memory flat however many configs the runs hold. Results are
memoised in <out>/retimed.json by config (bench_samplers.config_key), so a rerun times only
configs it has not seen; settings that change a latency (space, threads, repeats, batch) must
match the memo's.

Then, per run, the hypervolume of (val_auroc max, params min, latency_rel min) after each trial
(moocore), reference point AUROC 0.5, the uncompressed parameter count and --latency-factor
times the reference's latency (1.5 by default: the seed configuration compresses, so configs
that compress less than it, or tie it within noise, are slower than 1 yet may lead on AUROC;
at a factor of 1 they would add nothing to the volume). Writes retimed.md (the
bench_samplers.summarise table, with the machine and its load at start and end) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` as a package, run from anywhere

from bench.bench_samplers import config_key, summarise  # noqa: E402
from trainables.evaluate.latency import median_interval  # noqa: E402
from trainables.storage import atomic_write  # noqa: E402

SPACES = ("compress_only", "default")
REFERENCE = "reference"
SETTINGS_KEY = "__settings__"


def relative_latencies(times: Mapping[str, Sequence[float]], reference: str) -> dict[str, dict[str, float]]:
    """Return, per label other than `reference`, its latency relative to the reference timed in the same rounds.

    With a_r and b_r the label's and the reference's times in round r: latency_rel =
    median_r(a_r / b_r), [latency_rel_lo, latency_rel_hi] = median_interval of those ratios;
    latency_ms = median_r(a_r) and reference_ms = median_r(b_r) are kept for reading.
    """
    ref_times = times[reference]
    reference_ms = median_interval(ref_times)[0]
    out = {}
    for label, label_times in times.items():
        if label == reference:
            continue
        rel, lo, hi = median_interval([a / b for a, b in zip(label_times, ref_times, strict=True)])
        out[label] = {"latency_rel": rel, "latency_rel_lo": lo, "latency_rel_hi": hi,
                      "latency_ms": median_interval(label_times)[0], "reference_ms": reference_ms}
    return out


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Yield `items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def load_runs(folders: Sequence[Path], trials: int) -> tuple[list[dict[str, Any]], float]:
    """Return the runs of `folders` with at least `trials` trials and their points, cut to the first `trials`,
    and the seed configuration's uncompressed parameter count (their memo.json's). Raises ValueError (one line)."""
    runs, params_uncompressed = [], set()
    for folder in folders:
        path = folder / "runs.jsonl"
        if not path.is_file():
            raise ValueError(f"--runs {folder}: no runs.jsonl there (a bench_samplers.py --out folder holds one)")
        memo_path = folder / "memo.json"
        params = json.loads(memo_path.read_text()).get("__params_uncompressed__") if memo_path.is_file() else None
        if params is None:
            raise ValueError(f"--runs {folder}: its memo.json lacks __params_uncompressed__ (the seed trial's)")
        params_uncompressed.add(float(params))
        for line in path.read_text().splitlines():
            run = json.loads(line)
            name = f"{folder}: {run['sampler']} seed {run['seed']} batch {run['batch']}"
            if "points" not in run:
                print(f"skipped {name}: recorded before runs kept their points")
            elif len(run["values"]) < trials:
                print(f"skipped {name}: {len(run['values'])} trials, fewer than --trials {trials}")
            else:
                runs.append({**run, "values": run["values"][:trials], "points": run["points"][:trials]})
    if len(params_uncompressed) > 1:
        raise ValueError(f"--runs: the folders' uncompressed parameter counts differ ({sorted(params_uncompressed)}): "
                         "runs of different presets or models")
    if not runs:
        raise ValueError(f"--runs: no run with points and at least --trials {trials} trials")
    return runs, params_uncompressed.pop()


class Retimer:
    """Rebuilds configs through the runs' stage cache as the sweep's re-timing pass does, for timing."""

    def __init__(self, results_dir: str, space: str, repeats: int | None, threads: int):
        from trainables.train.sessions import pick_device
        from trainables.trial import TrialContext
        from tune.presets import get_preset
        from tune.sweep import build_base, seed_config_points

        overrides = {} if repeats is None else {"eval.latency_repeats": repeats}
        self.base = build_base(get_preset("digits"), overrides, space)
        self.seed_point = seed_config_points(space, self.base)[0]
        self.context = TrialContext(results_dir=results_dir, show_progress=False)
        self.threads = threads
        self.reference = self.build(self.seed_point, REFERENCE, "reference")
        self.device = pick_device(self.reference.cfg.run.device)

    def build(self, point: Mapping[str, Any], label: str, role: str = "front"):
        """Return `point`'s model as its trial deploys it, as a tune.report.retime.TimedModel labelled `label`."""
        from search_spaces import config_values
        from trainables.evaluate.evaluation import as_deployed
        from trainables.evaluate.runtime import runtime_model
        from trainables.trial import build_trial_model
        from tune.report.retime import TimedModel

        built = build_trial_model({**self.base, **config_values(point)}, self.context)
        cfg = built.cfg
        model = runtime_model(built.model, built.float_model, cfg.eval.runtime, cfg.compress.quant,
                              cfg.data.image_size, threads=self.threads)
        return TimedModel(label=label, number=-1, role=role, model=as_deployed(model.eval(), cfg), cfg=cfg,
                          threads=self.threads)

    def settings(self) -> dict[str, Any]:
        """Return what a latency here depends on besides the config (a memo timed otherwise does not mix)."""
        cfg = self.reference.cfg
        return {"seed_config": config_key(self.seed_point), "threads": self.threads,
                "latency_repeats": cfg.eval.latency_repeats, "latency_warmup": cfg.eval.latency_warmup,
                "latency_batch": cfg.eval.latency_batch, "runtime": cfg.eval.runtime}

    def time_chunk(self, points: Mapping[str, Mapping[str, Any]], rounds: int) -> tuple[dict, float, float]:
        """Return ({key: relative_latencies entry} of the chunk `points`, seconds building it, seconds timing it)."""
        from trainables.evaluate.evaluation import timing_lock
        from tune.report.retime import time_interleaved

        started = time.perf_counter()
        models = [self.reference] + [self.build(point, key) for key, point in points.items()]
        built_s = time.perf_counter() - started
        with timing_lock(self.device):
            times = time_interleaved(models, rounds, self.device)
        return relative_latencies(times, REFERENCE), built_s, time.perf_counter() - started - built_s


def machine_line(load_start: float, load_end: float) -> str:
    """Return the CPU model (/proc/cpuinfo), its cores, the UTC date and the 1-minute load at start and end."""
    from trainables.evaluate.latency import device_name

    cpu = device_name("cpu").rsplit(" (", 1)[0]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'"{cpu}", {os.cpu_count()} cores, {date}; load average (1 min) {load_start:.2f} at start, '
            f"{load_end:.2f} at end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="bench_samplers.py --out folders")
    parser.add_argument("--results-dir", default="/tmp/bench-samplers", help="the stage cache the runs used")
    parser.add_argument("--space", default="compress_only", choices=SPACES, help="the space the runs searched")
    parser.add_argument("--trials", type=int, default=48, help="score the first N trials of each run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per chunk")
    parser.add_argument("--chunk", type=int, default=16, help="configs timed together with the reference")
    parser.add_argument("--repeats", type=int, default=None,
                        help="eval.latency_repeats per model and round (default: the digits preset's)")
    parser.add_argument("--latency-factor", type=float, default=1.5,
                        help="the reference point's latency_rel (the seed configuration's is 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while building and timing")
    parser.add_argument("--out", required=True, help="where retimed.json and retimed.md go")
    args = parser.parse_args()
    for flag, value, least in (("--trials", args.trials, 1), ("--rounds", args.rounds, 1), ("--chunk", args.chunk, 1),
                               ("--threads", args.threads, 1), ("--repeats", args.repeats, 1),
                               ("--latency-factor", args.latency_factor, 1.0)):
        if value is not None and not value >= least:
            parser.error(f"{flag} must be >= {least}, got {value}")
    try:
        runs, params_uncompressed = load_runs([Path(d) for d in args.runs], args.trials)
    except ValueError as err:
        parser.error(str(err))
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    retimer = Retimer(args.results_dir, args.space, args.repeats, args.threads)
    out = Path(args.out)
    memo_path = out / "retimed.json"
    memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {SETTINGS_KEY: retimer.settings()}
    timed_with, settings = memo.get(SETTINGS_KEY, {}), retimer.settings()
    differ = {key: (timed_with.get(key), value) for key, value in settings.items() if timed_with.get(key) != value}
    if differ:
        parser.error(f"{memo_path} was timed otherwise: " + ", ".join(f"{key} {old} there, {new} now"
                                                                      for key, (old, new) in differ.items())
                     + "; give another --out")
    out.mkdir(parents=True, exist_ok=True)

    points = {config_key(point): point for run in runs
              for point, value in zip(run["points"], run["values"]) if value is not None}
    todo = [key for key in points if key not in memo]
    random.Random(0).shuffle(todo)
    print(f"{len(runs)} runs, {len(points)} distinct configs in their first {args.trials} trials, "
          f"{len(points) - len(todo)} already in {memo_path}, {len(todo)} to time in chunks of {args.chunk} "
          f"with the reference, {args.rounds} rounds", flush=True)
    done, loop_started = 0, time.perf_counter()
    for number, chunk in enumerate(chunked(todo, args.chunk), 1):
        timed, built_s, timed_s = retimer.time_chunk({key: points[key] for key in chunk}, args.rounds)
        memo.update(timed)
        atomic_write(memo_path, lambda temp: Path(temp).write_text(json.dumps(memo)))
        done += len(chunk)
        left_s = (time.perf_counter() - loop_started) / done * (len(todo) - done)
        print(f"chunk {number}: {len(chunk)} configs built in {built_s:.1f} s, timed in {timed_s:.1f} s; "
              f"{done}/{len(todo)} done, {(time.perf_counter() - started) / 60:.1f} min elapsed, "
              f"~{left_s / 60:.1f} min left", flush=True)

    seed_key = config_key(retimer.seed_point)
    scored = [{**run, "values": [None if value is None else [*value, memo[config_key(point)]["latency_rel"]]
                                 for point, value in zip(run["points"], run["values"])]} for run in runs]
    reference = np.array([-0.5, params_uncompressed, args.latency_factor])
    table, _ = summarise(scored, params_uncompressed, args.trials, reference)
    beyond = sum(1 for key in points if memo[key]["latency_rel"] >= args.latency_factor)
    seed = memo.get(seed_key)
    seed_line = (f"The seed configuration, rebuilt and timed as a config: latency_rel {seed['latency_rel']:.3f} "
                 f"[{seed['latency_rel_lo']:.3f}, {seed['latency_rel_hi']:.3f}], {seed['latency_ms']:.3g} ms/image "
                 f"(1 up to noise). " if seed else "")
    header = (f"Digits, {args.space} space, {len(runs)} runs, first {args.trials} trials each. Hypervolume of "
              f"(val_auroc max, params min, latency_rel min), reference point (0.5, {params_uncompressed:.0f}, "
              f"{args.latency_factor:g}); latency_rel: a config's time over the seed configuration's in the same "
              f"round, median over {args.rounds} rounds, chunks of {args.chunk} configs with the reference, "
              f"{retimer.settings()['latency_repeats']} runs of batch {retimer.settings()['latency_batch']} per "
              f"model and round, {args.threads} thread(s). {seed_line}{beyond} of {len(points)} configs at or "
              f"beyond the reference point's latency (they add no volume).\n\n"
              f"{machine_line(load_start, os.getloadavg()[0])}\n\n")
    (out / "retimed.md").write_text(header + table)
    print(header + table)
    print(f"wrote {out / 'retimed.md'} and {memo_path}")


if __name__ == "__main__":
    main()
