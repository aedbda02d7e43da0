"""The Optuna side of the sweep: storage, sampler, the searcher Ray Tune drives, checks.

The searcher is Ray Tune's ``OptunaSearch`` with four additions: the study's metric
names are set (optuna-dashboard labels its axes with them), each trial's secondary
metrics and config are attached as user attributes, a sweep with a budget records each
completed trial's constraint values (tune.budget), and every Tune trial ends in a
terminal Optuna state — ``OptunaSearch`` itself logs and swallows a rejected ``tell``,
which would leave the trial RUNNING.

Constraints are written by the searcher, not computed by a sampler's ``constraints_func``:
Optuna 5 deprecates that argument, and it runs inside ``tell`` on a trial whose values are
not stored yet, so a budget on an objective (params, latency_ms) could not be computed
there. TPE, NSGA-II and GP read the recorded values (``FrozenTrial.constraints``) however
they were written; the random sampler ignores them.
"""

import logging
import math
import numbers
import shlex
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
# The list-form system attribute the samplers read as FrozenTrial.constraints and the one
# optuna-dashboard 0.21 shows (it does not read set_constraint's "constraints:<key>" form).
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

# Set by trainables.trial.tune_trainable when a trial fails deterministically (no retry).
from trainables.report_keys import TRIAL_ERROR_KEY
from trainables.storage import is_uri
from tune.budget import Bound, constraint_values
from tune.sweep import SAMPLERS, STUDY_DB_FILENAME  # the sweep's settings and layout; re-exported here

logger = logging.getLogger(__name__)

MODES = ("max", "min")

# Tune's bookkeeping keys that carry nothing about the trial's outcome; the rest of a
# result (secondary metrics, where and how long it ran) goes into user attributes.
_TUNE_BOOKKEEPING_KEYS = frozenset(
    {
        "training_iteration",
        "timesteps_total",
        "episodes_total",
        "timestamp",
        "date",
        "time_this_iter_s",
        "time_since_restore",
        "timesteps_since_restore",
        "iterations_since_restore",
        "pid",
        "done",
        "trial_id",
        "experiment_tag",
        "checkpoint_dir_name",
        "should_checkpoint",
    }
)
TUNE_TRIAL_ID_ATTR = "tune_trial_id"
FAIL_REASON_ATTR = "fail_reason"
CONFIG_ATTR = "config"

class StorageUnavailableError(ValueError):
    """The Optuna storage URL cannot be opened (bad URL, unreachable server, bad path)."""


def default_storage_url(results_dir: str | Path, name: str) -> str:
    """Return the SQLite URL of the sweep's study: ``sqlite:///<results_dir>/<name>/optuna.db``."""
    if is_uri(results_dir):
        raise ValueError(
            f"results_dir {str(results_dir)!r} is not a local folder, so the study's SQLite "
            "file cannot live there; pass an Optuna RDB URL as the storage "
            "(e.g. sqlite:////home/ray/studies/optuna.db or postgresql://host/db)"
        )
    if not name or "/" in name:
        raise ValueError(f"name must be a non-empty folder name without '/', got {name!r}")
    db_path = Path(results_dir).expanduser().resolve() / name / STUDY_DB_FILENAME
    return f"sqlite:///{db_path}"


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by ``***`` (safe to print or log)."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def make_storage(
    url: str | None, results_dir: str | Path, name: str
) -> optuna.storages.RDBStorage:
    """Return the opened Optuna storage: `url`, or SQLite in ``<results_dir>/<name>/``.

    Opening connects and creates the tables, so a bad URL fails here, before Ray starts,
    with a StorageUnavailableError naming the URL (password redacted).
    """
    if url is None:
        url = default_storage_url(results_dir, name)
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"storage must be an Optuna RDB URL such as sqlite:///path.db, got {url!r}")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # optuna-dashboard may read the file while the sweep writes; wait for its lock.
        engine_kwargs = {"connect_args": {"timeout": 30}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageUnavailableError(
            f"cannot open Optuna storage {redact_url(url)}: {first_line}"
        ) from exc


# GP's trials before its model, queued ones included: 4 rather than Optuna's 10, by measurement
# (bench/RESULTS.md, "Samplers"). With the seed point and a sweep's 4 ladder rungs queued first,
# the model starts right after them: one at a time it reached random search's 48-trial
# hypervolume in 8-12 trials on 10 of 10 seeds (5 gives the same trials there); 4 at once, the
# model proposes from the second batch on, which beat 5 and 10.
GP_STARTUP_TRIALS = 4


def make_sampler(name: str, seed: int | None, *, max_concurrent: int = 1,
                 startup_trials: int | None = None, multivariate: bool = True) -> optuna.samplers.BaseSampler:
    """Return the seeded Optuna sampler called `name` (tpe, nsga2, gp or random).

    `max_concurrent` > 1 means trials are asked while others run: TPE then lies about the
    running ones (constant liar, so it does not propose the same region again), GP always
    conditions on running trials (Optuna 5 picks q-batch log-EHVI when some are RUNNING),
    and NSGA-II and random draw each trial on its own (no model to fool). `startup_trials`
    is the number of trials before TPE or GP model the results, queued ones included (when
    None: Optuna's 10 for TPE, GP_STARTUP_TRIALS for GP) and NSGA-II's population size
    (Optuna's 50 when None). `multivariate`
    (TPE only): one joint density over the parameters, grouped by the conditional rows.
    """
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
    if startup_trials is not None and (startup_trials < 1 or (name == "nsga2" and startup_trials < 2)):
        raise ValueError(f"startup_trials must be >= {2 if name == 'nsga2' else 1} for {name}, got {startup_trials}")
    startup = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    if name == "tpe":
        with warnings.catch_warnings():
            # group= has been "experimental" since Optuna 2.8; the interface is stable.
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=multivariate, group=multivariate,
                constant_liar=max_concurrent > 1, **startup
            )
    if name == "nsga2":
        population = {} if startup_trials is None else {"population_size": startup_trials}
        return optuna.samplers.NSGAIISampler(seed=seed, **population)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False,
                                         n_startup_trials=startup_trials or GP_STARTUP_TRIALS)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def _attr_value(value: Any) -> Any:
    """Return `value` as a JSON-safe user-attribute value, or None to leave it out."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        # JSON has no NaN/inf; keep them visible as text rather than drop them.
        return value if math.isfinite(value) else str(value)
    return None


def _split_result(result: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (config, metrics) from a Tune result, flattened or not."""
    config: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for key, value in result.items():
        if key == "config" and isinstance(value, Mapping):
            config.update(value)
        elif key.startswith("config/"):
            config[key.removeprefix("config/")] = value
        else:
            metrics[key] = value
    return config, metrics


class SweepSearch(OptunaSearch):
    """OptunaSearch with metric names, user attributes, budget constraints and a terminal state for every trial."""

    # A searcher pickled by a sweep from before budgets is restored without calling __init__.
    _budget: tuple[Bound, ...] = ()

    def __init__(
        self,
        space: Callable[[optuna.Trial], dict[str, Any] | None],
        metric: Sequence[str],
        mode: Sequence[str],
        storage: optuna.storages.BaseStorage,
        study_name: str,
        sampler: optuna.samplers.BaseSampler,
        points_to_evaluate: Sequence[Mapping[str, Any]] = (),
        budget: Sequence[Bound] = (),
    ):
        metric, mode = list(metric), list(mode)
        if not callable(space):
            raise TypeError(f"space must be a define-by-run function, got {type(space).__name__}")
        if not metric or len(metric) != len(mode):
            raise ValueError(
                f"metric and mode must be non-empty lists of equal length, got {metric} and {mode}"
            )
        if len(set(metric)) != len(metric):
            raise ValueError(f"metric names must be distinct, got {metric}")
        bad_modes = [m for m in mode if m not in MODES]
        if bad_modes:
            raise ValueError(f"mode entries must be 'max' or 'min', got {bad_modes}")
        super().__init__(
            space=space,
            metric=metric,
            mode=mode,
            sampler=sampler,
            study_name=study_name,
            storage=storage,
        )
        self._check_loaded_study_matches(metric, mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._ot_study.set_metric_names(metric)
        # Enqueued here rather than by OptunaSearch so a resumed sweep, which builds the
        # searcher again on the same study, does not enqueue the seed point twice.
        for point in points_to_evaluate:
            self._ot_study.enqueue_trial(dict(point), skip_if_exists=True)
        self._last_results: dict[str, dict[str, Any]] = {}
        self._budget = tuple(budget)

    @property
    def study(self) -> optuna.Study:
        """Return the Optuna study this searcher asks and tells."""
        return self._ot_study

    def _check_loaded_study_matches(self, metric: list[str], mode: list[str]) -> None:
        wanted = [
            optuna.study.StudyDirection.MAXIMIZE if m == "max" else optuna.study.StudyDirection.MINIMIZE
            for m in mode
        ]
        study = self._ot_study
        if study.directions != wanted:
            raise ValueError(
                f"study {study.study_name!r} exists in storage with directions "
                f"{[d.name.lower() for d in study.directions]}, but this sweep asks for {mode} "
                "; use another name or the objectives it was created with"
            )
        if study.metric_names is not None and list(study.metric_names) != metric:
            raise ValueError(
                f"study {study.study_name!r} exists in storage with metrics "
                f"{study.metric_names}, but this sweep asks for {metric}"
            )

    def suggest(self, trial_id: str) -> dict | None:
        """Return the next config and record the Tune trial id on the Optuna trial."""
        with warnings.catch_warnings():
            # Ray times the space function, inside which a model-based sampler fits its model on
            # each suggest (GP: about a second); its "took N seconds" advice is about training there.
            warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")
            config = super().suggest(trial_id)
        try:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID_ATTR, trial_id)
        except UpdateFinishedTrialError:
            logger.info("Optuna trial for Tune trial %s already finished in storage", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Remember the latest result, so an errored trial still gets its attributes."""
        self._last_results[trial_id] = dict(result)
        super().on_trial_result(trial_id, result)

    def _outcome(
        self, result: Mapping[str, Any] | None, error: bool
    ) -> tuple[list[float] | None, str | None]:
        """Return (objective values, None) for a good result, else (None, why it failed)."""
        if error:
            return None, "Tune trial errored (see the trial's error file)"
        if not result:
            return None, "Tune trial ended without reporting a result"
        if result.get(TRIAL_ERROR_KEY):
            return None, str(result[TRIAL_ERROR_KEY])
        missing = [m for m in self._metric if m not in result]
        if missing:
            return None, f"result lacks objective(s) {missing}"
        values = []
        for name in self._metric:
            value = result[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                return None, f"objective {name} is not a number: {value!r}"
            if not math.isfinite(float(value)):
                return None, f"objective {name} is not finite: {value}"
            values.append(float(value))
        try:
            constraint_values(self._budget, result)
        except ValueError as err:
            return None, str(err)
        return values, None

    def _user_attrs(
        self, result: Mapping[str, Any], trial_id: str, fail_reason: str | None
    ) -> dict[str, Any]:
        config, metrics = _split_result(result)
        attrs: dict[str, Any] = {TUNE_TRIAL_ID_ATTR: trial_id}
        for key, value in metrics.items():
            if key in self._metric or key in _TUNE_BOOKKEEPING_KEYS:
                continue
            converted = _attr_value(value)
            if converted is not None:
                attrs[key] = converted
        if config:
            safe_config = {k: _attr_value(v) for k, v in config.items()}
            attrs[CONFIG_ATTR] = {k: v for k, v in safe_config.items() if v is not None}
        if fail_reason is not None:
            attrs[FAIL_REASON_ATTR] = fail_reason
        return attrs

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Tell Optuna the trial's values (COMPLETE) or FAIL, with its user attributes."""
        if trial_id in self._completed_trials:
            logger.warning("Tune trial %s completed twice; the second completion is ignored", trial_id)
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            raise KeyError(f"Tune trial {trial_id} completed but was never suggested by this searcher")
        final = result if result else self._last_results.get(trial_id, {})
        values, fail_reason = self._outcome(result, error)
        try:
            for key, value in self._user_attrs(final, trial_id, fail_reason).items():
                ot_trial.set_user_attr(key, value)
        except UpdateFinishedTrialError:
            # A restored sweep reruns trials whose result Optuna already stored.
            logger.info(
                "Optuna trial %d (Tune trial %s) already finished in storage; kept as is",
                ot_trial.number,
                trial_id,
            )
        else:
            if fail_reason is None:
                if self._budget:
                    # Before tell, so no COMPLETE trial is ever seen without its constraints.
                    self._ot_study._storage.set_trial_system_attr(
                        ot_trial._trial_id, _CONSTRAINTS_KEY, constraint_values(self._budget, final))
                self._ot_study.tell(ot_trial, values, state=TrialState.COMPLETE, skip_if_finished=True)
            else:
                logger.warning("Optuna trial %d marked FAIL: %s", ot_trial.number, fail_reason)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL, skip_if_finished=True)
        self._completed_trials.add(trial_id)
        self._last_results.pop(trial_id, None)


class StudyIncompleteError(RuntimeError):
    """Some Tune trials have no terminal state in the Optuna study."""


def verify_study(study: optuna.Study, tune_trial_ids: Iterable[str]) -> dict[str, int]:
    """Return the study's trial counts by state; raise if a finished Tune trial is not terminal.

    Every id in `tune_trial_ids` (the sweep's finished Tune trials) must name exactly one
    Optuna trial, in state COMPLETE, FAIL or PRUNED; no trial may be left RUNNING.
    """
    trials = study.get_trials(deepcopy=False)
    by_tune_id: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        tune_id = trial.user_attrs.get(TUNE_TRIAL_ID_ATTR)
        if tune_id is not None:
            by_tune_id.setdefault(tune_id, []).append(trial)
    problems = []
    for tune_id in tune_trial_ids:
        matches = by_tune_id.get(tune_id, [])
        if not matches:
            problems.append(f"Tune trial {tune_id} has no Optuna trial")
        elif len(matches) > 1:
            problems.append(f"Tune trial {tune_id} has {len(matches)} Optuna trials")
        elif not matches[0].state.is_finished():
            problems.append(f"Tune trial {tune_id} is {matches[0].state.name} in the study")
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    if running:
        problems.append(f"Optuna trials {running} are still RUNNING")
    if problems:
        raise StudyIncompleteError(
            f"study {study.study_name!r} does not match the sweep: " + "; ".join(problems)
        )
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def close_orphans(study: optuna.Study, keep_tune_trial_ids: Iterable[str] = ()) -> list[int]:
    """Mark RUNNING trials FAIL (except those of `keep_tune_trial_ids`); return their numbers.

    On resume, trials asked after the driver's last experiment checkpoint are unknown
    to Tune and would stay RUNNING forever; Tune trials that will resume are kept.
    """
    keep = set(keep_tune_trial_ids)
    closed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(TUNE_TRIAL_ID_ATTR) in keep:
            continue
        study._storage.set_trial_user_attr(
            trial._trial_id, FAIL_REASON_ATTR, "orphaned by an interrupted sweep"
        )
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        closed.append(trial.number)
    if closed:
        logger.warning("marked orphaned Optuna trials %s as FAIL", closed)
    return closed


def dashboard_command(storage_url: str, port: int = 8080) -> str:
    """Return the shell command that opens optuna-dashboard on `storage_url` (password redacted)."""
    return f"optuna-dashboard {shlex.quote(redact_url(storage_url))} --host 127.0.0.1 --port {port}"
