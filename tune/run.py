"""vitsweep's command line: run, resume or report a multi-objective sweep, or debug one trial.

    python tune/run.py                                   # digits preset, local Ray, < 10 min on 2 cores
    python tune/run.py --preset pcam-local --num-samples 40 --name pcam1
    python tune/run.py --resume pcam1                    # continue a killed sweep
    python tune/run.py --report pcam1 --final-eval       # rebuild reports, score the front on test
    python tune/run.py --debug-trial --set tokens.r_max=0.5   # one trial in this process, no Ray
    python tune/run.py --export pcam1 --trial 7 --onnx   # take a front point away as a folder

Every value is checked before Ray starts; a bad one exits with status 2 and one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts tune/ (this folder) first on sys.path and not the repo
# root, so `import tune` fails from a clean checkout and tune's modules would shadow
# top-level names. Put the repo root there instead (harmless when pip-installed).
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = _REPO_ROOT
elif _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

# Only light modules here: --help and argument errors must not wait for torch, Ray or
# Optuna (tests/tune/test_run_cli.py checks sys.modules); the rest is imported where used.
from search_spaces import SEED_CONFIG, available_spaces  # noqa: E402
from tune.budget import Bound, budget_text, check_measured, parse_budget  # noqa: E402
from tune.presets import PRESETS, get_preset  # noqa: E402
from tune.sweep import (  # noqa: E402
    LADDER_MIN_TRIALS, LADDER_RUNGS, OBJECTIVE_CHOICES, SAMPLERS, STUDY_DB_FILENAME, SweepSettings, build_base,
    check_space, check_trial_device, default_ladder, is_uri, parse_objectives, read_settings, sweep_exists,
    training_stage_bound, tune_experiment_path, write_settings,
)

log = logging.getLogger("tune.run")

# Flags that define a sweep; a resumed or reported sweep takes them from its sweep.json.
_DEFINING_FLAGS = ("preset", "space", "num_samples", "max_concurrent", "sampler", "objectives",
                   "set", "seed", "trial_resources", "budget", "warm_start", "ladder")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _resources(text: str) -> dict[str, float]:
    """Return {resource: amount} from `cpu=2,gpu=1`; amounts are non-negative numbers, one at least positive."""
    resources = {}
    for pair in text.split(","):
        name, sep, amount = (part.strip() for part in pair.partition("="))
        try:
            value = float(amount) if sep and name else None
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"expects NAME=AMOUNT pairs with amounts >= 0, e.g. cpu=2,gpu=1; got {pair!r}")
        resources[name.lower() if name.lower() in ("cpu", "gpu") else name] = value
    if not any(resources.values()):
        raise argparse.ArgumentTypeError(f"asks for nothing: {text!r}; give a positive cpu (e.g. cpu=0.1)")
    return resources


def _budget(text: str) -> tuple[Bound, ...]:
    try:
        return parse_budget(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--budget ")) from None


def make_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python tune/run.py`."""
    parser = argparse.ArgumentParser(
        prog="python tune/run.py",
        description="Multi-objective sweep (AUROC vs parameters vs latency) over fine-tuning and "
                    "compression of a ViT: Ray Tune runs the trials, Optuna picks them.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="trial config and sweep defaults: " + "; ".join(
                            f"{name}: {PRESETS[name].description}" for name in sorted(PRESETS)) + "; default digits")
    parser.add_argument("--space", default=None,
                        help=f"search space, one of {', '.join(available_spaces())}; default: the preset's")
    parser.add_argument("--num-samples", type=_positive_int, default=None,
                        help="number of trials, the seed configuration included; default: the preset's")
    parser.add_argument("--max-concurrent", type=_positive_int, default=None,
                        help="trials running at once; default: the preset's")
    parser.add_argument("--name", default=None,
                        help="sweep name: folder <results-dir>/<name>, Optuna study and Tune "
                             "experiment name; default <preset>-<date>-<time>")
    parser.add_argument("--results-dir", default="results",
                        help="results root (local folder or s3://bucket/prefix): the stage cache "
                             "shared by sweeps, and one folder per sweep")
    parser.add_argument("--storage", default=None,
                        help="Optuna RDB URL (sqlite:///..., postgresql://...); default SQLite "
                             "<results-dir>/<name>/optuna.db (required when --results-dir is a URI)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None,
                        help="Optuna sampler; default: the preset's (gp, 4 start-up trials: bench/RESULTS.md 'Samplers')")
    parser.add_argument("--objectives", default=None,
                        help="comma-separated metric:max|min, e.g. val_auroc:max,params:min,latency_ms:min "
                             f"(latency_rel:min, the ratio to the uncompressed model timed on the trial's own device, where "
                             f"nodes differ; pcam-a100's default); metrics: {', '.join(OBJECTIVE_CHOICES)}")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="override a trial config key over the preset, e.g. --set finetune.epochs=1 "
                             "(repeatable; not a key the space searches)")
    parser.add_argument("--trial-resources", type=_resources, default=None, metavar="NAME=AMOUNT,...",
                        help="what Ray reserves for each trial's driver process (the Train workers ask for "
                             "their own: finetune.workers, finetune.cpus_per_worker), e.g. cpu=2,gpu=1 or a "
                             "custom resource of your nodes; default: the preset's (digits cpu=0.1, "
                             "pcam-local cpu=1, pcam-a100 cpu=2,gpu=1)")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (default 0)")
    parser.add_argument("--warm-start", nargs="+", default=None, metavar="NAME",
                        help="seed a new sweep with the finished sweeps NAME ... under --results-dir: their complete "
                             "trials that are configurations of this space are added as measured, and their front "
                             "is re-run first (at most half of --num-samples); other objectives are read from "
                             "what each trial recorded; refused when their data or other trial config differ")
    parser.add_argument("--ladder", type=_non_negative_int, default=None, metavar="N",
                        help="queue N rungs after the seed configuration: the seed with its thresholds lowered "
                             "together, spread over the space's range, so the front spans every size from the "
                             f"first trials; 0 = none; default {LADDER_RUNGS} for {LADDER_MIN_TRIALS} or more "
                             "trials, else 0")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="NAME",
                        help="continue the killed or stopped sweep NAME (or --name): same Tune "
                             "experiment, same Optuna study, settings from its sweep.json")
    parser.add_argument("--debug-trial", action="store_true",
                        help="run the seed trial (preset + --set) in this process without Ray "
                             "(breakpoints work) and print its metrics")
    parser.add_argument("--report", metavar="NAME", default=None,
                        help="rebuild the reports of the finished sweep NAME without running trials")
    parser.add_argument("--compare", nargs=2, metavar=("NAME1", "NAME2"), default=None,
                        help="compare two finished sweeps (same objectives): hypervolume of each against "
                             "one reference point and where each front attains what the other does not; "
                             "writes <results-dir>/compare-NAME1-NAME2/")
    parser.add_argument("--final-eval", action="store_true",
                        help="after the sweep (or with --report), score the reference and the "
                             "Pareto-optimal configs once on the test split: final_eval.csv/.md")
    parser.add_argument("--no-retime", action="store_true",
                        help="skip the re-timing pass at the end of a sweep (the reference and every "
                             "front point rebuilt and timed again, interleaved, in one process)")
    parser.add_argument("--retime", action="store_true",
                        help="with --report: run the re-timing pass again (without it the report reuses "
                             "the sweep's retime.csv, if any)")
    parser.add_argument("--retime-rounds", type=_positive_int, default=None,
                        help="rounds of the re-timing pass (default 7, the fewest giving a 95%% interval)")
    parser.add_argument("--replicates", type=_positive_int, default=None, metavar="R",
                        help="after the sweep (or with --report): fine-tune the reference again with R other "
                             "run.seed values and report the seed-to-seed spread (replicates.csv/.md). Costs R "
                             "full trials per config, training included (digits: pretrain + fine-tune, about "
                             "1-2 min each on 2 idle cores); off by default")
    parser.add_argument("--replicates-front", type=int, default=0, metavar="K",
                        help="with --replicates: also replicate the K best front points by the first objective")
    parser.add_argument("--margin", action="append", default=None, metavar="METRIC=VALUE",
                        help="non-inferiority margin of a quality objective for the recommendation (repeatable; "
                             "a report-time choice, so --report NAME --margin ... re-answers): a point is "
                             "non-inferior when its paired 95%% interval of the difference to the reference stays "
                             "above -VALUE; defaults val_auroc=0.005, val_auprc=0.01, val_accuracy=0.01")
    parser.add_argument("--budget", type=_budget, default=None, metavar="METRIC<=LIMIT,...",
                        help="bounds a deployment must meet, e.g. \"latency_ms<=0.8,params<=1e5\" (<= or >=, any "
                             "recorded metric): the sampler steers towards trials within them (Optuna constraints; "
                             "tpe, nsga2, gp) and only a point within them is recommended. Saved with the sweep; "
                             "--report NAME --budget ... re-answers a finished sweep ('none': no budget)")
    parser.add_argument("--prefer", default=None, metavar="OBJECTIVE",
                        help="cost objective the recommendation minimises among the qualifying front points "
                             "(params, latency_ms, ...); default the sweep's first cost objective")
    parser.add_argument("--export", metavar="NAME", default=None,
                        help="export one trial of the finished sweep NAME (with --trial) as a folder that "
                             "compress.load_compressed loads: weights, structure, config, metrics, model card")
    parser.add_argument("--trial", default=None, metavar="N",
                        help="with --export: the Optuna trial number as in pareto.md, 'reference', or "
                             "'recommended' (the point the last report recommended)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="with --export: the folder to write (must not exist); default "
                             "<results-dir>/<NAME>/export/trial-<N>")
    parser.add_argument("--onnx", action="store_true",
                        help="with --export: also write model.onnx, checked in ONNX Runtime (needs the "
                             "export extra)")
    parser.add_argument("--wandb", action="store_true",
                        help="log each trial to W&B (project vitsweep, group = sweep name) and the "
                             "Pareto table at the end; offline unless WANDB_API_KEY or WANDB_MODE=online")
    parser.add_argument("--smoke", action="store_true",
                        help="run the preset's real code path (architecture, image size, Ray Train "
                             "fine-tune, compression, evaluation, reports) in minutes: generated "
                             "PCam-layout data, random-init weights, 2 trials, space compress_only; "
                             "what to run right after `ray up`. With --debug-trial: its seed trial in "
                             "this process")
    parser.add_argument("--ray-dashboard", action="store_true",
                        help="start the Ray dashboard on 127.0.0.1 (local Ray only)")
    return parser


def _check_results_uri(text: str, parser: argparse.ArgumentParser) -> None:
    """Exit 2 with one line unless the object store behind --results-dir opens and has its bucket."""
    from trainables.storage import check_results_location, results_location

    try:
        check_results_location(results_location(text))
    except ValueError as err:
        parser.error(str(err))


def _results_dir(text: str) -> str:
    return text if is_uri(text) else str(Path(text).expanduser().resolve())


def _check_writable(folder: str | Path, flag: str, parser: argparse.ArgumentParser) -> None:
    """Exit 2 with one line when the local folder a command will write to cannot be written (a URI is
    left to the store)."""
    from trainables.writable import NotWritableError, check_writable_folder

    if is_uri(str(folder)):
        return
    try:
        check_writable_folder(folder)
    except NotWritableError as err:
        parser.error(f"{flag}: {err}")


def _check_local_inputs(flat: dict, parser: argparse.ArgumentParser, *, results_dir: str | None = None) -> None:
    """Exit 2 with one line naming the file when data or weights are missing or broken here.

    Trials of a local run (no RAY_ADDRESS) and `--debug-trial` run on this machine, so
    anything missing is an error before Ray starts. A sweep attached to a cluster only
    checks what is present here: the data and weights may live on the workers alone, and
    there the first trial that lacks them stops the sweep (tune.sweep).
    """
    from trainables.config import TrialConfig
    from trainables.data.datasets import DIGITS_PREFIX, PCAM_PREFIX, check_dataset
    from trainables.data.inputs import check_inputs
    from trainables.model import check_local_checkpoint

    cfg = TrialConfig.from_flat(flat)
    local = results_dir is not None or not os.environ.get("RAY_ADDRESS")
    try:
        if cfg.data.dataset == "pcam":
            root = cfg.data.root or "data/pcam"
            if local:
                check_inputs(cfg, root)
                return
            if cfg.model.weights:
                check_local_checkpoint(cfg.model.weights, cfg.model.backbone)
            if not is_uri(root) and any(Path(root).glob(f"{PCAM_PREFIX}_split_*")):
                check_dataset(root, PCAM_PREFIX, ("y",))
        else:
            if local:
                check_inputs(cfg, "")
            elif cfg.model.weights:
                check_local_checkpoint(cfg.model.weights, cfg.model.backbone)
            if results_dir is not None or cfg.data.root:
                from trainables.trial import TrialContext, data_root

                root = data_root(cfg, TrialContext(results_dir=results_dir or "results"))
                check_dataset(root, DIGITS_PREFIX, ("y", "digit"))
    except (OSError, ValueError) as err:
        parser.error(str(err).splitlines()[0] if str(err).strip() else type(err).__name__)


def _new_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SweepSettings:
    """Return the settings of a new sweep from the flags; every error ends in parser.error."""
    from trainables.config import parse_overrides

    preset = get_preset(args.preset or "digits")
    smoke = _smoke(preset) if args.smoke else None
    space = args.space or (smoke["space"] if smoke else preset.space)
    try:
        check_space(space)
        objectives = parse_objectives(args.objectives) if args.objectives else preset.objectives
        overrides = {**(smoke["overrides"] if smoke else {}), **parse_overrides(args.set or [])}
        base = build_base(preset, overrides, space)
        check_measured(args.budget or (), objectives, base)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    _check_local_inputs(base, parser)
    trial_resources = args.trial_resources or (smoke["trial_resources"] if smoke else dict(preset.trial_resources))
    try:
        check_trial_device(base, trial_resources)   # compress.quant, eval.runtime on the trials' device
    except ValueError as err:
        parser.error(str(err))
    name = args.name or f"{preset.name}-{'smoke-' if smoke else ''}{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or not name.strip() or name.startswith("."):
        parser.error(f"--name must be a plain folder name, got {name!r}")
    settings = SweepSettings(
        name=name, results_dir=_results_dir(args.results_dir), storage_url=args.storage,
        preset=preset.name, space=space, sampler=args.sampler or preset.sampler,
        seed=0 if args.seed is None else args.seed, objectives=tuple(objectives),
        num_samples=args.num_samples or (smoke["num_samples"] if smoke else preset.num_samples),
        # A smoke run's trials go one at a time: the second reuses the first one's fine-tune, and
        # on one machine two trial drivers would hold the CPUs its Train worker needs.
        max_concurrent=args.max_concurrent or (1 if smoke else preset.max_concurrent),
        trial_resources=trial_resources, max_failures=preset.max_failures, base=base, overrides=overrides,
        budget=args.budget or ())
    if args.ladder is not None and args.ladder + 1 > settings.num_samples:
        parser.error(f"--ladder {args.ladder}: the seed point and {args.ladder} rungs are more than the "
                     f"{settings.num_samples} trials of --num-samples; give at most {settings.num_samples - 1}")
    settings = dataclasses.replace(settings, ladder=default_ladder(settings.num_samples)
                                   if args.ladder is None else args.ladder)
    if args.warm_start:
        from tune.warm_start import WarmStartError, check_comparable, read_sources

        try:
            for source in read_sources(settings.results_dir, args.warm_start, settings.name):
                check_comparable(settings, source)
        except WarmStartError as err:
            parser.error(str(err))
        settings = dataclasses.replace(settings, warm_start=tuple(args.warm_start))
    return settings


def _smoke(preset) -> dict:
    """Return what --smoke changes in a sweep of `preset` (tune.smoke)."""
    from tune.smoke import SMOKE_SPACE, SMOKE_TRIALS, smoke_overrides, smoke_trial_resources

    return {"space": SMOKE_SPACE, "num_samples": SMOKE_TRIALS, "overrides": smoke_overrides(preset),
            "trial_resources": smoke_trial_resources(preset)}


def _saved_settings(name: str, args: argparse.Namespace, parser: argparse.ArgumentParser,
                    flag: str) -> SweepSettings:
    """Return sweep `name`'s saved settings; a defining flag given again must equal its saved value."""
    results_dir = _results_dir(args.results_dir)
    try:
        settings = read_settings(results_dir, name, args.storage)
    except (OSError, ValueError) as err:
        parser.error(f"cannot read sweep {name!r} under {results_dir}: {str(err).splitlines()[0]}")
    if settings is None:
        parser.error(f"{flag} {name}: no sweep named {name!r} under {results_dir} "
                     "(check --results-dir and the name)")
    for option, saved, given in _defining_values(settings, args):
        if given != saved:
            parser.error(f"{flag} {name} takes the sweep's saved settings, and {option} differs: "
                         f"saved {_shown(saved)}, given {_shown(given)}; drop {option} or give the saved value")
    # Where the sweep was found is where it is: a results folder moved since, or an object store
    # reached through another endpoint form (URI query or AWS_ENDPOINT_URL), is read from there.
    return dataclasses.replace(settings, results_dir=results_dir)


def _defining_values(settings: SweepSettings, args: argparse.Namespace) -> list[tuple[str, Any, Any]]:
    """Return (flag, saved value, given value) for each defining flag given on the command line."""
    saved = {"preset": settings.preset, "space": settings.space, "num_samples": settings.num_samples,
             "max_concurrent": settings.max_concurrent, "sampler": settings.sampler, "seed": settings.seed,
             "objectives": settings.objectives, "set": {k: str(v) for k, v in settings.overrides.items()},
             "trial_resources": dict(settings.trial_resources), "budget": settings.budget,
             "warm_start": settings.warm_start, "ladder": settings.ladder}
    values = []
    for name in _DEFINING_FLAGS:
        given = getattr(args, name)
        if given is None or (name == "budget" and args.report):  # --report --budget re-answers
            continue
        saved_value = saved[name]
        if name == "objectives":
            try:
                given = parse_objectives(given)
            except ValueError:
                pass  # shown as given
        elif name == "warm_start":
            given = tuple(given)
        elif name == "set":
            from trainables.config import parse_overrides

            try:
                given = {k: str(v) for k, v in parse_overrides(given).items()}
            except ValueError:
                given = list(given)
            if args.smoke and isinstance(given, dict):
                # --smoke adds overrides of its own: compare only what --set gives.
                saved_value = {k: v for k, v in saved_value.items() if k in given}
        values.append((f"--{name.replace('_', '-')}", saved_value, given))
    return values


def _shown(value: Any) -> str:
    if isinstance(value, tuple) and (not value or isinstance(value[0], Bound)):
        return budget_text(value)
    if isinstance(value, tuple) and all(isinstance(item, tuple) for item in value):
        return ",".join(f"{metric}:{mode}" for metric, mode in value)  # objectives
    if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
        return ",".join(f"{k}={v:g}" for k, v in value.items())  # trial resources
    if isinstance(value, dict):
        return " ".join(f"--set {k}={v}" for k, v in value.items()) or "no --set"
    return str(value)


def _check_recorded(settings: SweepSettings, parser: argparse.ArgumentParser) -> None:
    """Exit 2 with one line when the trials of the sweep did not record a metric its budget names."""
    import optuna

    from tune.budget import unrecorded

    study = optuna.load_study(study_name=settings.name, storage=_open_storage(settings, parser))
    missing = unrecorded(settings.budget, study)
    if missing:
        parser.error(f"--budget: the trials of sweep {settings.name!r} did not record {', '.join(missing)}")


def _open_storage(settings: SweepSettings, parser: argparse.ArgumentParser):
    from tune.study import make_storage

    try:
        return make_storage(settings.storage_url, settings.results_dir, settings.name)
    except ValueError as err:
        parser.error(str(err))
    except OSError as err:  # the default SQLite file's folder cannot be created
        parser.error(f"cannot create the sweep folder {settings.sweep_dir}: {err.strerror or err}")


def _debug_trial(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from trainables.config import TrialConfig, parse_overrides
    from trainables.trial import TrialContext, format_metrics, run_trial

    _check_writable(args.results_dir, "--results-dir", parser)
    preset = get_preset(args.preset or "digits")
    smoke = _smoke(preset) if args.smoke else None
    space = args.space or (smoke["space"] if smoke else preset.space)
    try:
        check_space(space)
        overrides = parse_overrides(args.set or [])
        # The seed configuration (flat keys, not the space's switch parameters), then what
        # --smoke shrinks, then --set: here overriding a searched key is the point.
        flat = {**preset.trial, **SEED_CONFIG, **(smoke["overrides"] if smoke else {}), **overrides}
        TrialConfig.from_flat(flat).check_applicable(overrides)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    if flat.get("data.root") and not is_uri(str(flat["data.root"])):
        flat["data.root"] = str(Path(flat["data.root"]).expanduser().resolve())
    _check_local_inputs(flat, parser, results_dir=_results_dir(args.results_dir))
    metrics = run_trial(flat, TrialContext(results_dir=_results_dir(args.results_dir)))
    print(format_metrics(metrics))
    return 0


def _check_ray(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Exit 2 with one line when the cluster in RAY_ADDRESS refuses this process or --ray-dashboard cannot start."""
    from tune.cluster import RayAccessError, check_cluster_access, check_dashboard_packages

    try:
        if os.environ.get("RAY_ADDRESS"):
            check_cluster_access(os.environ["RAY_ADDRESS"])
        elif args.ray_dashboard:
            check_dashboard_packages()
    except RayAccessError as err:
        parser.error(str(err))


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import optuna

    from tune.report.compare import common_reference_point, write_comparison
    from tune.report.summary import reference_point

    first, second = args.compare
    if first == second:
        parser.error(f"--compare needs two different sweeps, got {first!r} twice")
    settings = [_saved_settings(name, args, parser, "--compare") for name in args.compare]
    if settings[0].objectives != settings[1].objectives:
        parser.error(f"--compare: sweeps {first!r} and {second!r} have different objectives "
                     f"({settings[0].objectives} vs {settings[1].objectives})")
    out = settings[0].local_dir.parent / f"compare-{first}-{second}"
    _check_writable(out, "--compare", parser)
    studies = {s.name: optuna.load_study(study_name=s.name, storage=_open_storage(s, parser)) for s in settings}
    objectives = settings[0].objectives
    if any(not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
           for study in studies.values()):
        parser.error("--compare: both sweeps need at least one complete trial")
    point = common_reference_point([reference_point(study, objectives) for study in studies.values()], objectives)
    written = write_comparison(studies, objectives, point, out)
    print((out / "compare.md").read_text(encoding="utf-8"))
    print(f"results: {out}")
    for name in sorted(written):
        print(f"  {name}")
    return 0


def _retime(settings: SweepSettings, study, args: argparse.Namespace):
    """Return the re-timing pass's table: run now (end of a sweep, or --report --retime), else the saved one."""
    from optuna.trial import TrialState

    from tune.report.retime import DEFAULT_ROUNDS, read_retimed, retime_sweep

    run_now = args.retime if args.report else not args.no_retime
    if "latency_ms" not in settings.metric_names or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    if not run_now:
        return read_retimed(settings.local_dir)
    started = time.perf_counter()
    frame = retime_sweep(settings, study, rounds=args.retime_rounds or DEFAULT_ROUNDS)
    print(f"re-timing pass: {frame['number'].nunique()} configs, {int(frame['rounds'].max())} rounds, "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return frame


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import optuna

    from compress.onnx_export import OnnxExportError
    from tune.report.export import ExportError, export_trial

    if args.trial is None:
        parser.error("--export needs --trial N (a trial number from pareto.md) or --trial reference")
    settings = _saved_settings(args.export, args, parser, "--export")
    study = optuna.load_study(study_name=settings.name, storage=_open_storage(settings, parser))
    try:
        result = export_trial(settings, study, args.trial, args.out, onnx=args.onnx)
    except (ExportError, OnnxExportError, ImportError) as err:
        parser.error(str(err))
    print(f"exported trial {result.trial} of sweep {settings.name!r} to {result.path} "
          f"({result.size_bytes / 1e6:.2f} MB, {result.seconds:.1f} s)")
    onnx = result.metrics.get("onnx")
    if onnx:
        print(f"model.onnx: max |ORT - PyTorch| {onnx['max_abs_diff']:.2e} on {onnx['parity_images']} validation "
              f"images; {onnx['ort_latency_ms']:.3f} ms/img ORT vs {onnx['torch_latency_ms']:.3f} PyTorch "
              f"(batch {onnx['latency_batch']}, {onnx['threads']} threads)")
    print(f"load it: python -c \"from compress import load_compressed; print(load_compressed('{result.path}'))\"")
    return 0


def _decision(args: argparse.Namespace, settings: SweepSettings,
              parser: argparse.ArgumentParser) -> tuple[dict[str, float], str | None]:
    """Return (non-inferiority margins, preferred cost objective) from --margin/--prefer for this sweep's objectives."""
    from tune.report.verdicts import parse_margins, parse_prefer

    try:
        return parse_margins(args.margin or [], settings.objectives), parse_prefer(args.prefer, settings.objectives)
    except ValueError as err:
        parser.error(str(err))


def _finish(settings: SweepSettings, storage, args: argparse.Namespace,
            decision: tuple[dict[str, float], str | None]) -> int:
    import optuna

    from tune.callbacks import log_front_to_wandb
    from tune.report.summary import build_reports, final_eval, print_summary, verify
    from tune.study import default_storage_url

    study = optuna.load_study(study_name=settings.name, storage=storage)
    counts = verify(settings, study)
    import ray

    ray.shutdown()  # idle trial actors would share the cores the re-timing pass measures on
    retimed = _retime(settings, study, args)
    replicated = None
    if args.replicates:
        from tune.report.replicates import run_replicates

        replicated = run_replicates(settings, study, args.replicates, args.replicates_front)
        print(f"replicates: {settings.local_dir / 'replicates.md'}")
    margins, prefer = decision
    written = build_reports(settings, study, retimed, replicated, margins=margins, prefer=prefer)
    url = settings.storage_url or default_storage_url(settings.results_dir, settings.name)
    print_summary(settings, study, counts, written, url)
    if args.final_eval:
        frame = final_eval(settings, study)
        print(f"final evaluation on test ({len(frame)} configs): {settings.local_dir / 'final_eval.md'}")
    if args.wandb and "pareto.csv" in written:
        import pandas as pd

        from tune.report.reports import verdict_table

        front = pd.read_csv(written["pareto.csv"])
        mode = log_front_to_wandb(front, settings.name, settings.local_dir,
                                  verdicts=verdict_table(front, settings.objectives),
                                  answer=written["answer.md"].read_text(encoding="utf-8"))
        print(f"W&B ({mode}): Pareto table logged to project vitsweep, group {settings.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, check them, then run, resume or report the sweep; return the exit code."""
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    modes = [m for m, on in (("--resume", args.resume), ("--report", args.report),
                             ("--debug-trial", args.debug_trial), ("--compare", args.compare),
                             ("--export", args.export)) if on]
    if len(modes) > 1:
        parser.error(f"{' and '.join(modes)} exclude each other")
    export_only = [f"--{name}" for name in ("trial", "out", "onnx") if getattr(args, name)]
    if export_only and not args.export:
        parser.error(f"{', '.join(export_only)}: only valid with --export NAME")
    report_only = [f"--{name}" for name in ("margin", "prefer", "budget") if getattr(args, name) is not None]
    if report_only and (args.export or args.debug_trial or args.compare):
        parser.error(f"{', '.join(report_only)}: only valid with a sweep, --resume NAME or --report NAME "
                     "(--export --trial recommended takes the last report's recommendation)")
    if is_uri(args.results_dir):
        if not (args.storage or modes):
            parser.error(f"--results-dir {args.results_dir} is not a local folder, so the study "
                         "cannot be SQLite there: pass --storage (an Optuna RDB URL)")
        _check_results_uri(args.results_dir, parser)
    if args.export:
        return _export(args, parser)
    if args.debug_trial:
        return _debug_trial(args, parser)
    if (args.retime or args.retime_rounds) and not args.report and args.no_retime:
        parser.error("--no-retime excludes --retime and --retime-rounds")
    if args.replicates_front and not args.replicates:
        parser.error("--replicates-front K needs --replicates R")
    if args.replicates_front < 0:
        parser.error(f"--replicates-front must be >= 0, got {args.replicates_front}")
    if args.retime and not args.report:
        parser.error("--retime goes with --report NAME (a sweep re-times its front at the end unless --no-retime)")

    if args.compare:
        return _compare(args, parser)
    if args.report:
        settings = _saved_settings(args.report, args, parser, "--report")
        if args.budget is not None:  # a report-time choice, like --margin
            settings = dataclasses.replace(settings, budget=args.budget)
            _check_recorded(settings, parser)
        _check_writable(settings.local_dir, "--report", parser)
        decision = _decision(args, settings, parser)
        return _finish(settings, _open_storage(settings, parser), args, decision)

    from tune.sweep import run_tune

    if not args.resume:
        _check_writable(args.results_dir, "--results-dir", parser)
    _check_ray(args, parser)
    if args.resume:
        name = args.resume if isinstance(args.resume, str) else args.name
        if not name:
            parser.error("--resume needs the sweep's name: --resume NAME")
        settings = _saved_settings(name, args, parser, "--resume")
        decision = _decision(args, settings, parser)
        _check_writable(settings.local_dir, "--resume", parser)
        storage = _open_storage(settings, parser)
        from ray.tune import Tuner

        path, fs = tune_experiment_path(settings.results_dir, settings.name)
        # Killed before Tune wrote its first state: nothing to restore, start it afresh.
        resume = Tuner.can_restore(path, storage_filesystem=fs)
        if args.wandb:
            log.warning("--wandb on --resume: W&B logging follows the original run's setting")
    else:
        settings = _new_settings(args, parser)
        decision = _decision(args, settings, parser)
        try:
            exists = sweep_exists(settings.results_dir, settings.name, None)
        except OSError as err:
            parser.error(f"cannot read --results-dir {settings.results_dir}: {str(err).splitlines()[0]}")
        # A folder with files but no sweep in it (the study file is checked below): refuse
        # rather than mix a new sweep's reports with whatever is there.
        if not exists and not is_uri(settings.results_dir) and settings.local_dir.is_dir() \
                and any(settings.local_dir.iterdir()) and not (settings.local_dir / STUDY_DB_FILENAME).exists():
            parser.error(f"{settings.local_dir} already exists and is not empty (not a sweep this CLI "
                         "can resume); choose another --name or move that folder away")
        if exists:
            parser.error(f"{settings.sweep_dir} already holds a sweep named {settings.name!r}; "
                         f"pass --resume {settings.name} to continue it or choose another --name")
        storage = _open_storage(settings, parser)
        if sweep_exists(settings.results_dir, settings.name, storage):
            parser.error(f"the Optuna storage already has a study named {settings.name!r}; "
                         f"pass --resume {settings.name} or choose another --name")
        write_settings(settings)
        resume = False
    print(f"sweep {settings.name!r}: preset {settings.preset}, space {settings.space}, "
          f"{settings.num_samples} trials, {settings.max_concurrent} at once, sampler {settings.sampler}, "
          f"objectives {', '.join(f'{n}:{m}' for n, m in settings.objectives)}"
          + (f", seed point and {settings.ladder} ladder rungs first" if settings.ladder else "")
          + (f", warm start from {' '.join(settings.warm_start)}" if settings.warm_start else "")
          + (" (resumed)" if resume else ""), flush=True)
    bound = training_stage_bound(settings.space, settings.base)
    print(f"training stages space {settings.space} can request: at most {bound['finetune']} fine-tunes and "
          f"{bound['prehab']} prehab stages (each trained once, then shared through the cache)", flush=True)
    import ray

    from tune.stopping import InputMissing

    try:
        try:
            closed = run_tune(settings, storage, resume=resume, use_wandb=args.wandb and not args.resume,
                              dashboard=args.ray_dashboard)
        except InputMissing as err:
            print(f"error: sweep stopped: {err}", file=sys.stderr, flush=True)
            return 2
        if closed:
            print(f"marked Optuna trials {closed} FAIL: asked by the killed driver, never run by Tune")
        return _finish(settings, storage, args, decision)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
