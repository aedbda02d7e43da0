"""The sweep: settings checked before Ray starts, the Tuner wiring, and resume.

Layout of one sweep under the results root (local folder or `s3://...`):

    <results>/cache/...            stage cache shared by every sweep of this root
    <results>/train/...            Ray Train runs of the training stages
    <results>/<name>/sweep.json    the settings, so --resume / --report need only the name
    <results>/<name>/optuna.db     the Optuna study (default storage, local results only)
    <results>/<name>/tune/         the Tune experiment (what Tuner.restore continues)
    <local>/<name>/progress.jsonl  one line per finished trial (also the record of finished ids)
    <local>/<name>/pareto.md ...   reports (see tune.report.summary)

`<local>` is `<results>` when that is a local folder, else `./results` on the driver.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.storage import is_uri, results_location
from tune.presets import Preset

log = logging.getLogger(__name__)

# optuna, torch (trainables.config) and Ray are imported where they are used, so the CLI's
# --help and argument errors stay fast.
SETTINGS_FILENAME = "sweep.json"
STUDY_DB_FILENAME = "optuna.db"
SAMPLERS = ("tpe", "nsga2", "gp", "random")
TUNE_DIRNAME = "tune"
LADDER_RUNGS = 4        # default_ladder: the rungs a sweep of LADDER_MIN_TRIALS or more queues
LADDER_MIN_TRIALS = 16
LADDER_ATTR = "ladder_rung"  # user attribute of a queued rung: its place on the ladder, 1 = the largest
# Metrics every trial reports that make sense as objectives (trainables.trial.run_trial).
# latency_rel: the trial's latency over the uncompressed reference's, timed interleaved on its own
# device (trainables.evaluate.evaluation.reference_model); naming it switches eval.latency_rel on.
# model_bytes: the weights as stored (compress.quant: int8 a quarter of fp32, bf16 a half).
OBJECTIVE_CHOICES = ("val_auroc", "params", "latency_ms", "latency_rel", "gflops", "val_auprc", "val_accuracy",
                     "val_ece", "val_nll", "val_brier", "val_ece_cal", "val_nll_cal", "params_ratio",
                     "throughput_img_s", "model_bytes")
_LOCAL_FALLBACK_DIR = "results"


def parse_objectives(text: str) -> tuple[tuple[str, str], ...]:
    """Return ((metric, "max"|"min"), ...) from "val_auroc:max,params:min,latency_ms:min"."""
    objectives = []
    for item in (part.strip() for part in text.split(",")):
        name, sep, mode = item.partition(":")
        if not sep or not name or mode not in ("max", "min"):
            raise ValueError(f"--objectives expects metric:max|min pairs separated by commas "
                             f"(e.g. val_auroc:max,params:min), got {item!r}")
        if name not in OBJECTIVE_CHOICES:
            raise ValueError(f"--objectives: unknown metric {name!r}; allowed: {', '.join(OBJECTIVE_CHOICES)}")
        objectives.append((name, mode))
    names = [n for n, _ in objectives]
    if len(set(names)) != len(names):
        raise ValueError(f"--objectives names a metric twice: {text!r}")
    return tuple(objectives)


@dataclass(frozen=True)
class SweepSettings:
    """Everything that defines one sweep; saved as sweep.json (no credentials)."""

    name: str
    results_dir: str                  # absolute local folder or URI
    storage_url: str | None           # None = SQLite in <results>/<name>/
    preset: str
    space: str
    sampler: str
    seed: int
    objectives: tuple[tuple[str, str], ...]
    num_samples: int
    max_concurrent: int
    trial_resources: Mapping[str, float]
    max_failures: int
    base: Mapping[str, Any]           # flat trial config: preset + --set overrides
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    budget: tuple = ()                # tune.budget.Bound terms (--budget); () = none
    warm_start: tuple[str, ...] = ()  # finished sweeps under results_dir whose trials seed this one
    ladder: int = 0                   # rungs queued after the seed point (--ladder; 0 in sweeps saved before it)

    @property
    def sweep_dir(self) -> str:
        """Return <results>/<name> as a person reads it (a local path, or s3://... without the URI's query)."""
        return results_location(self.results_dir).show(self.name)

    @property
    def local_dir(self) -> Path:
        """Return the driver-local folder for reports and the progress log."""
        if is_uri(self.results_dir):
            return Path(_LOCAL_FALLBACK_DIR).resolve() / self.name
        return Path(self.results_dir) / self.name

    @property
    def metric_names(self) -> list[str]:
        """Return the objective metric names, in order."""
        return [name for name, _ in self.objectives]

    def to_json(self) -> str:
        """Return the settings as JSON; a storage URL with a password is left out."""
        data = dataclasses.asdict(self)
        if self.storage_url and _has_password(self.storage_url):
            data["storage_url"] = None
            data["storage_needs_flag"] = True
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, storage_url: str | None = None) -> "SweepSettings":
        """Return the settings saved by to_json; `storage_url` replaces one left out for its password."""
        data = json.loads(text)
        if data.pop("storage_needs_flag", False):
            if storage_url is None:
                raise ValueError(f"sweep {data['name']!r} uses a storage URL with a password, "
                                 "which is not saved; pass it again with --storage")
            data["storage_url"] = storage_url
        elif storage_url is not None:
            data["storage_url"] = storage_url
        data["objectives"] = tuple(tuple(o) for o in data["objectives"])
        from tune.budget import Bound  # tune.budget imports this module

        data["budget"] = tuple(Bound(*term) for term in data.get("budget", ()))  # absent before budgets
        data["warm_start"] = tuple(data.get("warm_start", ()))  # absent from sweeps saved before warm starts
        return cls(**data)


def _has_password(url: str) -> bool:
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).password is not None
    except sqlalchemy.exc.ArgumentError:
        return False


def read_settings(results_dir: str, name: str, storage_url: str | None = None) -> SweepSettings | None:
    """Return the saved settings of sweep `name` under `results_dir`, or None if there is none."""
    import pyarrow.fs

    location = results_location(results_dir)
    path = location.path(name, SETTINGS_FILENAME)
    if location.fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with location.fs.open_input_stream(path) as handle:
        return SweepSettings.from_json(handle.read().decode("utf-8"), storage_url)


def write_settings(settings: SweepSettings) -> None:
    """Write sweep.json into <results>/<name>/."""
    location = results_location(settings.results_dir)
    location.fs.create_dir(location.path(settings.name), recursive=True)
    with location.fs.open_output_stream(location.path(settings.name, SETTINGS_FILENAME)) as handle:
        handle.write(settings.to_json().encode("utf-8"))


def build_base(preset: Preset, overrides: Mapping[str, Any], space_name: str) -> dict[str, Any]:
    """Return the flat trial config (preset + overrides), validated with the space's seed point.

    Raises ValueError/TypeError naming the key for a bad override, and ValueError when an
    override sets a key the space searches (the searcher's value would silently win).
    """
    from search_spaces import config_values, searched_keys
    from trainables.config import TrialConfig

    base = {**preset.trial, **overrides}
    typed = TrialConfig.from_flat(base).to_flat()
    base = {key: typed.get(key, value) for key, value in base.items()}  # "--set k=3" -> 3
    searched = searched_keys(space_name)
    clash = sorted(set(overrides) & searched)
    if clash:
        raise ValueError(f"--set {', '.join(clash)}: searched by space {space_name!r}, so the "
                         "override would be ignored; pick a space that does not search it")
    if "finetune.method" not in searched:
        # With the method fixed, a --set option it does not use is a contradiction. (Preset
        # values are defaults for whichever method runs, and a searched method varies.)
        TrialConfig.from_flat(base).check_applicable(overrides)
    for point in seed_config_points(space_name, base):
        TrialConfig.from_flat({**base, **config_values(point)})
    check_training_starts(space_name, TrialConfig.from_flat(base).finetune.epochs)
    data = base.get("data.root")
    if data and not is_uri(str(data)):
        # Trials run with another working directory; relative data paths would break there.
        base["data.root"] = str(Path(data).expanduser().resolve())
    return base


def seed_config_points(space_name: str, base: Mapping[str, Any], ladder: int = 0) -> list[dict[str, Any]]:
    """Return the seed point of a sweep over `space_name` on the trial config `base`, then `ladder`
    rungs (search_spaces.ladder_points: the seed with its thresholds lowered together).

    A row without a reference value ("the preset's", as `finetune.method`) that `base` leaves
    out takes the trial config's default, which is what the preset's own trial runs with: left
    out, Optuna would sample it and the reference trial would be a random configuration (digits
    on the default space drew a LoRA fine-tune for it while the preset fine-tunes in full).
    """
    from search_spaces import ladder_points, load_table, seed_points
    from trainables.config import TrialConfig

    defaults = TrialConfig.from_flat(dict(base)).to_flat()  # switches are not config keys
    open_rows = {row.name: defaults[row.name] for row in load_table(space_name).rows
                 if row.reference is None and row.name in defaults}
    return seed_points(space_name, {**open_rows, **base}) + ladder_points(space_name, {**open_rows, **base}, ladder)


def default_ladder(num_samples: int) -> int:
    """Return the ladder rungs a sweep of `num_samples` trials queues by default (--ladder): 4 from 16
    trials on (bench/RESULTS.md, "Samplers"), none below, where they would be a quarter of the sweep."""
    return LADDER_RUNGS if num_samples >= LADDER_MIN_TRIALS else 0


def check_training_starts(space_name: str, epochs: int) -> None:
    """Raise ValueError (one line) when space `space_name` can ask to prune tokens while fine-tuning
    from an epoch after the fine-tune's last (`epochs`): every such trial would be refused."""
    from search_spaces import load_table

    for row in load_table(space_name):
        if row.name != "tokens.train_from_epoch":
            continue
        late = [choice for choice in getattr(row.distribution, "choices", ())
                if isinstance(choice, int) and choice > epochs]
        if late:
            raise ValueError(f"space {space_name!r} prunes tokens while fine-tuning from epoch {max(late)} "
                             f"(tokens.train_from_epoch), but the fine-tune has finetune.epochs={epochs}: "
                             f"--set finetune.epochs={max(late)} or more, or choose a space without it")


def training_stage_bound(space_name: str, base: Mapping[str, Any]) -> dict[str, int]:
    """Return {"finetune": F, "prehab": P}: the most distinct fine-tune and prehab stages a sweep
    over `space_name` on the trial config `base` can request, however many trials it runs.

    F counts the distinct fine-tune keys (trainables.stages.finetune_key_config) over every
    assignment of the space's TRAINING_ROWS["finetune"] (conditions respected, each row
    categorical); the space's other rows do not key a fine-tune. A prehab stage is keyed by
    its fine-tune and its own section, so P = F x (distinct prehab sections with lambda > 0
    over the assignments of TRAINING_ROWS["prehab"]). A space without TRAINING_ROWS searches
    no training key: F = 1, and P = 1 when base's prehab.lambda > 0, else 0.
    """
    import json

    from search_spaces import config_values, load_table, training_rows
    from trainables.config import TrialConfig
    from trainables.stages import finetune_key_config

    rows, table = training_rows(space_name), load_table(space_name)

    def configs(names) -> list[TrialConfig]:
        return [TrialConfig.from_flat({**base, **config_values(values)})
                for values in _assignments(table.only(names) if names else None)]

    finetunes = {json.dumps(finetune_key_config(cfg), sort_keys=True, default=str)
                 for cfg in configs(rows.get("finetune", ()))}
    prehabs = {json.dumps(dataclasses.asdict(cfg.prehab), sort_keys=True)
               for cfg in configs(rows.get("prehab", ())) if cfg.prehab.enabled}
    return {"finetune": len(finetunes), "prehab": len(finetunes) * len(prehabs)}


def _assignments(table) -> list[dict[str, Any]]:
    """Return every assignment of a table of categorical rows (a row is set only where its
    condition holds; an off switch adds its constants); [{}] for no table."""
    from optuna.distributions import CategoricalDistribution

    partial: list[dict[str, Any]] = [{}]
    for row in table or ():
        if not isinstance(row.distribution, CategoricalDistribution):
            raise ValueError(f"{row.name} keys a training stage but is not categorical: "
                             "the stages a sweep requests would be unbounded")
        grown = []
        for values in partial:
            if not row.applies(values):
                grown.append(values)
                continue
            for choice in row.distribution.choices:
                extra = dict(row.off) if row.off is not None and not choice else {}
                grown.append({**values, **extra, row.name: choice})
        partial = grown
    return partial


def check_space(name: str) -> None:
    """Raise ValueError naming the available spaces when `name` is not one of them."""
    from search_spaces import available_spaces

    if name not in available_spaces():
        raise ValueError(f"--space: unknown search space {name!r}; available: {', '.join(available_spaces())}")


def sweep_exists(results_dir: str, name: str, storage: optuna.storages.BaseStorage | None) -> bool:
    """Return True when `name` already has settings, a Tune experiment or an Optuna study."""
    import optuna

    if read_settings(results_dir, name) is not None:
        return True
    from ray.tune import Tuner

    path, fs = tune_experiment_path(results_dir, name)
    if Tuner.can_restore(path, storage_filesystem=fs):
        return True
    return storage is not None and name in optuna.get_all_study_names(storage)


def tune_experiment_path(results_dir: str, name: str):
    """Return (path, filesystem or None) of the sweep's Tune experiment folder."""
    location = results_location(results_dir)
    if location.remote:
        return location.path(name, TUNE_DIRNAME), location.fs
    return str(Path(results_dir) / name / TUNE_DIRNAME), None


def _init_ray(dashboard: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        # A Ray job on a cluster: connect to it; resources are the cluster's.
        ray.init(log_to_driver=False)
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Trial processes log per-epoch lines and progress bars; the progress log here is
    # the readable view, and each trial's output stays in its folder.
    ray.init(include_dashboard=dashboard, log_to_driver=False)


def _drop_unused_wandb_key() -> None:
    """Remove WANDB_API_KEY from this process's environment when W&B runs offline.

    Ray's WandbLoggerCallback copies the key into its logging actor's runtime_env, which
    Ray writes in plain text to runtime_env_agent.log and shows on its dashboard; offline
    runs need no key, and a resumed sweep restores that callback from its pickle.
    """
    from tune.callbacks import wandb_mode

    if wandb_mode() in ("offline", "dryrun", "disabled") and os.environ.pop("WANDB_API_KEY", None) is not None:
        log.info("W&B is offline: WANDB_API_KEY is not passed on to Ray")


def make_trainable(settings: SweepSettings):
    """Return the Tune trainable: tune_trainable with the base config, context and resources."""
    from ray import tune

    from trainables.trial import TrialContext, tune_trainable

    from search_spaces import config_values

    context = TrialContext(results_dir=settings.results_dir, backend="ray", show_progress=False,
                           max_failures=settings.max_failures, sweep=settings.name)
    return tune.with_resources(
        tune.with_parameters(tune_trainable, base=dict(settings.base), context=context,
                             objectives=tuple(name for name, _ in settings.objectives),
                             to_config=config_values),
        dict(settings.trial_resources),
    )


def make_searcher(settings: SweepSettings, storage: optuna.storages.BaseStorage):
    """Return the SweepSearch on the sweep's study, the seed configuration queued first, then the
    settings.ladder rungs (search_spaces.ladder_points), then what the sweeps of settings.warm_start
    give it (tune.warm_start)."""
    from search_spaces import load_table
    from tune.study import SweepSearch, make_sampler

    seed, *rungs = seed_config_points(settings.space, settings.base, settings.ladder)
    searcher = SweepSearch(
        load_table(settings.space).for_device(trial_device_type(settings.base, settings.trial_resources)).suggest,
        metric=settings.metric_names,
        mode=[mode for _, mode in settings.objectives],
        storage=storage,
        study_name=settings.name,
        sampler=make_sampler(settings.sampler, settings.seed, max_concurrent=settings.max_concurrent),
        points_to_evaluate=[seed],
        budget=settings.budget,
    )
    for rung, point in enumerate(rungs, 1):  # after the seed point; skipped on a resume, as the seed is
        searcher.study.enqueue_trial(point, user_attrs={LADDER_ATTR: rung}, skip_if_exists=True)
    if settings.warm_start:
        from tune.warm_start import apply_warm_start, front_queue_size, load_warm_start, read_sources

        warm = load_warm_start(settings, read_sources(settings.results_dir, settings.warm_start, settings.name))
        apply_warm_start(searcher.study, warm, front_queue_size(settings.num_samples))
    return searcher


def trial_device_type(base: Mapping[str, Any], trial_resources: Mapping[str, Any]) -> str:
    """Return the device type the sweep's trials evaluate on: run.device where set, else cuda when Ray
    gives each trial a GPU, else what this machine picks (trials without a GPU see none under Ray)."""
    from trainables.train.sessions import pick_device

    requested = str(base.get("run.device", "auto"))
    if requested != "auto":
        return requested
    if float(trial_resources.get("gpu", 0) or 0) > 0:
        return "cuda"
    return "mps" if pick_device("auto").type == "mps" else "cpu"


def check_trial_device(base: Mapping[str, Any], trial_resources: Mapping[str, Any]) -> None:
    """Raise ValueError (one line) when the trials' device cannot run the base config's compress.quant or
    eval.runtime (a searched compress.quant is cut to the device's modes: Table.for_device)."""
    import torch

    from compress.quant import check_quant_device
    from trainables.config import TrialConfig
    from trainables.evaluate.runtime import check_runtime_device

    cfg, device = TrialConfig.from_flat(dict(base)), torch.device(trial_device_type(base, trial_resources))
    check_quant_device(cfg.compress.quant, device)
    check_runtime_device(cfg.eval.runtime, device)


def _callbacks(settings: SweepSettings, use_wandb: bool) -> list:
    from tune.callbacks import PROGRESS_FILENAME, ProgressLog, wandb_callback

    remote = (settings.results_dir, settings.name) if is_uri(settings.results_dir) else None
    callbacks = [ProgressLog(str(settings.local_dir / PROGRESS_FILENAME), settings.num_samples,
                             settings.metric_names, remote_epochs=remote)]
    if use_wandb:
        callbacks.append(wandb_callback(settings.name, settings.local_dir))
    return callbacks


def run_tune(settings: SweepSettings, storage: optuna.storages.BaseStorage, *, resume: bool,
             use_wandb: bool = False, dashboard: bool = False) -> list[int]:
    """Run (or continue) the Tune experiment to the end; return orphaned Optuna trials marked FAIL."""
    import optuna
    from ray import tune

    from tune.stopping import INPUT_ERROR_FILENAME, InputMissing, StopOnMissingInput
    from tune.study import close_orphans

    # Checkpoint the experiment after every event: with the default period a killed
    # driver left Optuna trials that Tune re-ran on resume (Ray 2.60). A kill between
    # Optuna's tell and the next checkpoint still reruns one; tune_trainable then reports
    # the outcome it stored the first time, so Optuna and Tune agree.
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"
    _drop_unused_wandb_key()
    _init_ray(dashboard)
    path, fs = tune_experiment_path(settings.results_dir, settings.name)
    trainable = make_trainable(settings)
    stop_file = settings.local_dir / INPUT_ERROR_FILENAME
    stop_file.unlink(missing_ok=True)
    if resume:
        # Errored trials stay errored: their Optuna trial is already FAIL and a rerun
        # would not be told to Optuna again (SweepSearch ignores a second completion).
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, storage_filesystem=fs)
    else:
        storage_path = path.rsplit("/", 1)[0]
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=make_searcher(settings, storage),
                                        num_samples=settings.num_samples,
                                        max_concurrent_trials=settings.max_concurrent,
                                        # One actor per concurrent slot, not per trial: saves
                                        # the 4-5 s process start + imports of each trial.
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=TUNE_DIRNAME, storage_path=storage_path, storage_filesystem=fs,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=_callbacks(settings, use_wandb), verbose=0,
                stop=StopOnMissingInput(str(stop_file)),
            ),
        )
    tuner.fit()
    study = optuna.load_study(study_name=settings.name, storage=storage)
    closed = close_orphans(study)
    if stop_file.is_file():
        raise InputMissing(stop_file.read_text().strip())
    return closed


__all__ = [
    "OBJECTIVE_CHOICES", "SAMPLERS", "STUDY_DB_FILENAME", "SweepSettings", "build_base", "check_space",
    "check_trial_device", "make_searcher", "trial_device_type",
    "make_trainable", "parse_objectives", "read_settings", "run_tune", "check_training_starts", "training_stage_bound",
    "sweep_exists", "tune_experiment_path", "write_settings",
]
