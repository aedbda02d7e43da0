"""Warm starts: a new sweep begins with the evidence of finished ones (--warm-start NAME ...).

The finished sweeps' complete trials that are configurations of the new sweep (same data, same
trial config outside the searched keys, every value inside the new space) are added to the new
study as they were measured (Optuna's add_trials; with this sweep's objectives read from what
each trial recorded, where the objectives differ), each with the user
attribute ``warm_start_from`` = "<sweep>#<trial number>"; the sampler models them from the
first trial on. Their Pareto front is then queued after the seed point (and the ladder), so this sweep
measures those configurations again itself (user attribute ``warm_start_front``). Added
trials are not Tune trials: --num-samples counts this sweep's own trials only, and neither
they nor the re-runs of their front can be the reference (tune.report.reports.reference_row).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WARM_START_ATTR = "warm_start_from"        # on an added trial: "<sweep>#<number>"
WARM_FRONT_ATTR = "warm_start_front"       # on a queued re-run of an added front point: "<sweep>#<number>"
SUMMARY_ATTR = "warm_start"                # on the study: {sweep: {"trials": n, "added": a, ...}, "front": f}
# Where a trial runs, not what it measures: a warm start may change them.
PLACEMENT_KEYS = frozenset({"data.loader_workers", "finetune.cpus_per_worker", "finetune.threads_per_worker",
                            "finetune.accelerator_type"})
# The user attributes of a finished trial that belong to its own sweep's Tune run.
_DROPPED_ATTRS = frozenset({"tune_trial_id", "fail_reason"})


class WarmStartError(ValueError):
    """A named sweep cannot seed this one (missing, or its objectives are not comparable)."""


@dataclass
class WarmStart:
    """What the finished sweeps give a new one: trials to add, front points to queue, counts per sweep."""

    trials: list = field(default_factory=list)                    # optuna FrozenTrials for add_trials
    front: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (params, origin), best first
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def read_sources(results_dir: str, names: Sequence[str], new_name: str):
    """Return the saved settings (tune.sweep.SweepSettings) of the finished sweeps `names` under `results_dir`.

    Raises WarmStartError (one line) for a name that is no sweep there, or this sweep's own name.
    """
    import dataclasses

    from tune.sweep import read_settings

    sources = []
    for name in names:
        if name == new_name:
            raise WarmStartError(f"--warm-start {name}: that is this sweep's own name; name finished sweeps")
        try:
            settings = read_settings(results_dir, name)
        except (OSError, ValueError) as err:
            raise WarmStartError(f"--warm-start {name}: cannot read its sweep.json: {str(err).splitlines()[0]}") from err
        if settings is None:
            raise WarmStartError(f"--warm-start {name}: no sweep named {name!r} under {results_dir}")
        sources.append(dataclasses.replace(settings, results_dir=results_dir))
    if len(set(names)) != len(names):
        raise WarmStartError(f"--warm-start names a sweep twice: {' '.join(names)}")
    return sources


def _typed_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
    from trainables.config import TrialConfig

    return TrialConfig.from_flat(dict(flat)).to_flat()


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_comparable(new, old) -> None:
    """Raise WarmStartError (one line) unless sweep `old`'s objective values mean what `new`'s will.

    Both are tune.sweep.SweepSettings. Compared: the data (every data.* key but the loader's
    workers), then the rest of the trial config outside the keys either space searches and the
    placement keys (PLACEMENT_KEYS). The objectives may differ: every trial records every metric
    an objective can name, so a trial's values are read again for this sweep's (trial_values).
    """
    from search_spaces import searched_keys

    where = f"--warm-start {old.name}"
    old_base, new_base = _typed_flat(old.base), _typed_flat(new.base)
    searched = searched_keys(old.space) | searched_keys(new.space)
    differing = sorted(key for key in set(old_base) | set(new_base)
                       if key not in PLACEMENT_KEYS and key not in searched and old_base.get(key) != new_base.get(key))
    data = [key for key in differing if key.startswith("data.")]
    other = [key for key in differing if not key.startswith("data.")]
    for keys, what in ((data, "other data"), (other, "another trial config")):
        if keys:
            shown = "; ".join(f"{key} {_shown(old_base.get(key))} there, {_shown(new_base.get(key))} here"
                              for key in keys)
            raise WarmStartError(f"{where}: its trials measured {what} ({shown}), so their objective values "
                                 "cannot be compared with this sweep's")


def _point_in_space(trial, old, new) -> dict[str, Any] | None:
    """Return old sweep `old`'s trial as a point of `new`'s space, or None when it is no configuration of it.

    The trial's full config (old base + its values) is read as the new space's parameters
    (Table.seed_point: a row the old space did not search takes the value the old trial ran
    with); it fits when every value lies in the new distributions and the new sweep, given
    that point, would run the same config (outside PLACEMENT_KEYS).
    """
    from search_spaces import config_values, load_table

    table = load_table(new.space)
    ran = _typed_flat({**old.base, **config_values(trial.params)})
    point = table.seed_point(ran)
    if not table.holds(point):
        return None
    would_run = _typed_flat({**new.base, **config_values(point)})
    if any(ran.get(key) != would_run.get(key) for key in set(ran) | set(would_run) if key not in PLACEMENT_KEYS):
        return None
    return point


def load_warm_start(new, sources: Sequence) -> WarmStart:
    """Return the trials and front that the finished sweeps `sources` give sweep `new` (SweepSettings each).

    Raises WarmStartError (one line) when a source cannot be compared (check_comparable).
    """
    import optuna

    from tune.study import make_storage

    studies = []
    for old in sources:
        check_comparable(new, old)
        try:
            study = optuna.load_study(study_name=old.name, storage=make_storage(old.storage_url, old.results_dir, old.name))
        except KeyError as err:
            raise WarmStartError(f"--warm-start {old.name}: its Optuna storage holds no study {old.name!r}") from err
        studies.append((old, study.get_trials(deepcopy=False)))
    return warm_start_of(new, studies)


def warm_start_of(new, studies: Sequence[tuple[Any, Sequence]]) -> WarmStart:
    """Return what finished trials give sweep `new`: `studies` pairs each comparable sweep's settings
    (checked by check_comparable) with its Optuna trials. load_warm_start reads them from storage."""
    import optuna
    from optuna.trial import TrialState

    from search_spaces import config_values, load_table
    from tune.study import CONFIG_ATTR

    from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

    from tune.budget import constraint_values

    budget = tuple(getattr(new, "budget", ()))
    distributions = load_table(new.space).distributions()
    warm = WarmStart()
    candidates: list[tuple[list[float], dict[str, Any], str]] = []
    for old, trials in studies:
        counts = {"trials": 0, "added": 0, "outside": 0, "not_complete": 0, "unrecorded": 0}
        for trial in trials:
            counts["trials"] += 1
            if trial.state != TrialState.COMPLETE or trial.values is None:
                counts["not_complete"] += 1
                continue
            values = trial_values(trial, old.objectives, new.objectives)
            if values is not None:
                try:
                    # Every complete trial of a budgeted sweep carries its constraints (tune.study.SweepSearch);
                    # the samplers refuse a study where some do and some do not.
                    constraints = constraint_values(budget, {**trial.user_attrs, **dict(
                        zip((name for name, _ in new.objectives), values))})
                except ValueError:
                    values = None
            if values is None:
                counts["unrecorded"] += 1
                continue
            try:
                point = _point_in_space(trial, old, new)
            except (TypeError, ValueError) as err:  # written by a version whose keys are gone
                log.info("--warm-start %s: trial %d is not a config of this version: %s", old.name, trial.number, err)
                point = None
            if point is None:
                counts["outside"] += 1
                continue
            origin = f"{old.name}#{trial.number}"
            attrs = {k: v for k, v in trial.user_attrs.items() if k not in _DROPPED_ATTRS}
            attrs[CONFIG_ATTR] = config_values(point)  # what this sweep's reports and exports rebuild
            warm.trials.append(optuna.trial.create_trial(
                params=point, distributions={name: distributions[name] for name in point},
                values=values, user_attrs={**attrs, WARM_START_ATTR: origin},
                system_attrs={_CONSTRAINTS_KEY: constraints} if budget else None))
            candidates.append((values, point, origin))
            counts["added"] += 1
        warm.counts[old.name] = counts
    warm.front = _front(candidates, [mode for _, mode in new.objectives])
    return warm


def trial_values(trial, old_objectives: Sequence[tuple[str, str]],
                 new_objectives: Sequence[tuple[str, str]]) -> list[float] | None:
    """Return a finished trial's values for `new_objectives`: each from its own objective of that name,
    else from the metric it recorded as a user attribute; None when one is missing or not a finite number
    (a sweep from before that metric existed)."""
    recorded = {**trial.user_attrs, **dict(zip((name for name, _ in old_objectives), trial.values))}
    values = []
    for name, _ in new_objectives:
        value = recorded.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            return None
        values.append(float(value))
    return values


def _front(candidates: list[tuple[list[float], dict[str, Any], str]], modes: Sequence[str]) -> list[tuple[dict, str]]:
    """Return the (params, origin) of the non-dominated candidates, best first by the first objective,
    one per distinct point."""
    import moocore

    if not candidates:
        return []
    values = np.array([c[0] for c in candidates], dtype=float)
    keep = moocore.is_nondominated(values, maximise=[mode == "max" for mode in modes])
    order = sorted(np.flatnonzero(keep), key=lambda i: (-values[i, 0] if modes[0] == "max" else values[i, 0], i))
    front, seen = [], set()
    for index in order:
        _, point, origin = candidates[index]
        key = tuple(sorted(point.items()))
        if key not in seen:
            seen.add(key)
            front.append((point, origin))
    return front


def apply_warm_start(study, warm: WarmStart, max_front: int) -> int:
    """Add `warm`'s trials to `study` and queue at most `max_front` of its front points; return how many
    were queued. Does nothing on a study that was warm-started already (a resumed sweep)."""
    if SUMMARY_ATTR in study.user_attrs:
        return 0
    seeds = [trial.system_attrs.get("fixed_params") for trial in study.get_trials(deepcopy=False)]
    study.add_trials(warm.trials)
    queued = 0
    for point, origin in warm.front:
        if queued >= max_front:
            break
        if point in seeds:  # the seed point runs already
            continue
        study.enqueue_trial(point, user_attrs={WARM_FRONT_ATTR: origin})
        queued += 1
    study.set_user_attr(SUMMARY_ATTR, {"sweeps": warm.counts, "front": len(warm.front), "queued": queued})
    return queued


def warm_start_notes(study) -> list[str]:
    """Return pareto.md's line on where the study's warm-start trials came from ([] without a warm start)."""
    summary = study.user_attrs.get(SUMMARY_ATTR)
    if not summary:
        return []
    own = sum(1 for trial in study.get_trials(deepcopy=False) if WARM_START_ATTR not in trial.user_attrs)
    parts = []
    for name, counts in summary["sweeps"].items():
        left = [f"{counts[key]} {what}" for key, what in (("outside", "outside this space or config"),
                                                          ("not_complete", "not complete"),
                                                          ("unrecorded", "without this sweep's objectives or "
                                                                         "budget metrics"))
                if counts.get(key)]
        parts.append(f"{counts['added']} of the {counts['trials']} trials of sweep {name!r}"
                     + (f" ({', '.join(left)}: left out)" if left else ""))
    queued = summary["queued"]
    added = sum(counts["added"] for counts in summary["sweeps"].values())
    return [f"Warm start: {added} trials added as measured, {'; '.join(parts)} (user attribute {WARM_START_ATTR}); "
            f"{queued} of their {summary['front']} front configurations re-run here first ({WARM_FRONT_ATTR}). "
            f"This sweep ran {own} trials of its own; the front and hypervolume count both."]


def front_queue_size(num_samples: int) -> int:
    """Return how many warm-start front points a sweep of `num_samples` trials re-runs: at most half, so
    the sampler still chooses the rest."""
    return num_samples // 2
