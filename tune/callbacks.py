"""Tune callbacks of the sweep: a one-line-per-trial progress log, and W&B logging.

`ProgressLog` prints a compact line when a trial finishes or fails and appends the same
facts as JSON to `<sweep>/progress.jsonl`; that file is also the driver's record of which
Tune trials finished, across a killed and resumed driver (a restored Tuner unpickles its
own copies of the callbacks, so counters in this process would miss earlier trials).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from trainables.report_keys import TRIAL_ERROR_KEY
from trainables.storage import epoch_files, remote_epochs_path, results_location

log = logging.getLogger(__name__)

PROGRESS_FILENAME = "progress.jsonl"
REMOTE_POLL_S = 2.0   # how often the console lists an object store for new epochs
WANDB_PROJECT = "vitsweep"


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def format_trial_line(index: int, total: int, config: Mapping[str, Any],
                      result: Mapping[str, Any], objectives: Sequence[str]) -> str:
    """Return one progress line: index/total, searched params, objectives, cache hits, seconds."""
    params = " ".join(f"{_short(k)}={_fmt(v)}" for k, v in sorted(config.items()))
    scores = " ".join(f"{name} {_fmt(result[name])}" for name in objectives if name in result)
    hits = [k.removeprefix("cache_hit_") for k, v in result.items() if k.startswith("cache_hit_") and v]
    misses = [k.removeprefix("cache_hit_") for k, v in result.items() if k.startswith("cache_hit_") and not v]
    cache = f"hit {','.join(hits) or '-'} miss {','.join(misses) or '-'}"
    seconds = result.get("trial_s", result.get("time_total_s"))
    took = f"{float(seconds):.0f} s" if isinstance(seconds, (int, float)) else "? s"
    if result.get("outcome_replayed") is True:
        # A trial rerun after a resume reports what it measured before the driver died.
        took += ", measured before the resume"
    return f"[{index:>3}/{total}] {params} | {scores} | cache {cache} | {took}"


class ProgressLog(Callback):
    """Print one line per finished or failed trial and record it in a JSON-lines file."""

    def __init__(self, record_path: str, total: int, objectives: Sequence[str],
                 stream: TextIO | None = None, *, remote_epochs: tuple[str, str] | None = None):
        self.record_path = record_path
        self.total = total
        self.objectives = list(objectives)
        self._stream = stream
        # (results root URI, sweep name) when results live on an object store: the Ray Train
        # runs write one object per epoch under <results>/<sweep>/epochs/ (trainables.storage).
        self.remote_epochs = remote_epochs
        self.done = 0
        self.failed = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_stream"] = None  # sys.stdout does not pickle; Tune pickles its callbacks
        for name in ("_epoch_offsets", "_epoch_objects", "_epoch_polled"):
            state.pop(name, None)  # where this driver's console is; setup() starts anew
        return state

    def setup(self, **info) -> None:
        """Skip the epochs already recorded, so a resumed (or later) sweep prints only its own."""
        if self.remote_epochs:
            self._epoch_objects = set(self._epoch_object_paths())
            self._epoch_polled = time.monotonic()
            return
        self._epoch_offsets = {str(path): path.stat().st_size for path in self._epoch_files()}

    def _print(self, line: str) -> None:
        print(line, file=self._stream or sys.stdout, flush=True)

    def _record(self, trial, status: str, result: Mapping[str, Any]) -> None:
        entry = {"tune_trial_id": trial.trial_id, "status": status, "time": time.time(),
                 "config": dict(trial.config),
                 **{k: v for k, v in result.items()
                    if k in self.objectives or k in ("trial_s", TRIAL_ERROR_KEY)}}
        Path(self.record_path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.record_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        """Print and record a finished trial (a reported numerical failure counts as failed)."""
        self._print_new_epochs(force=True)
        result = trial.last_result or {}
        reason = result.get(TRIAL_ERROR_KEY)
        if reason:
            self.failed += 1
            self._print(f"[{self.done + self.failed:>3}/{self.total}] FAILED {trial.trial_id}: {reason}")
            self._record(trial, "failed", {TRIAL_ERROR_KEY: reason})
            return
        self.done += 1
        self._print(format_trial_line(self.done + self.failed, self.total, trial.config, result,
                                      self.objectives))
        self._record(trial, "complete", result)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        """Print and record a trial that failed after its retries, with where its error is."""
        self.failed += 1
        where = getattr(trial, "error_file", None) or getattr(trial, "path", "")
        self._print(f"[{self.done + self.failed:>3}/{self.total}] FAILED {trial.trial_id}: "
                    f"see {where}")
        self._record(trial, "error", {})

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        """Print training epochs that Ray Train runs reported since the last step."""
        self._print_new_epochs()

    def _epoch_files(self) -> list[Path]:
        return epoch_files(Path(self.record_path).parent.parent)

    def _epoch_object_paths(self) -> list[str]:
        import pyarrow.fs

        results_dir, sweep = self.remote_epochs
        selector = pyarrow.fs.FileSelector(remote_epochs_path(results_dir, sweep), allow_not_found=True)
        return sorted(info.path for info in results_location(results_dir).fs.get_file_info(selector)
                      if info.type == pyarrow.fs.FileType.File)

    def _print_new_remote_epochs(self, force: bool) -> None:
        # One listing of the sweep's epoch folder per poll; at most every REMOTE_POLL_S (Tune
        # calls on_step_end many times a second).
        now = time.monotonic()
        if not force and now - self.__dict__.get("_epoch_polled", 0.0) < REMOTE_POLL_S:
            return
        self._epoch_polled = now
        seen = self.__dict__.setdefault("_epoch_objects", set())
        fs = results_location(self.remote_epochs[0]).fs
        for path in self._epoch_object_paths():
            if path in seen:
                continue
            seen.add(path)
            with fs.open_input_stream(path) as handle:
                self._print(format_epoch_line(json.loads(handle.read().decode("utf-8"))))

    def _print_new_epochs(self, force: bool = False) -> None:
        if self.remote_epochs:
            self._print_new_remote_epochs(force)
            return
        offsets = self.__dict__.setdefault("_epoch_offsets", {})
        for path in self._epoch_files():
            with open(path, encoding="utf-8") as handle:
                handle.seek(offsets.get(str(path), 0))
                lines = handle.readlines()
                offsets[str(path)] = handle.tell()
            for line in lines:
                self._print(format_epoch_line(json.loads(line)))

    def get_state(self) -> dict:
        """Return the counters, so a resumed sweep keeps numbering where it stopped."""
        return {"done": self.done, "failed": self.failed}

    def set_state(self, state: dict) -> None:
        """Restore the counters saved by get_state."""
        self.done, self.failed = state["done"], state["failed"]


def format_epoch_line(record: Mapping[str, Any]) -> str:
    """Return one indented progress line for a training epoch reported by a Ray Train run."""
    stage, _, key = str(record.get("run", "?")).partition("-")
    parts = [f"      {stage} {key[:8]} epoch {int(record.get('epoch', -1)) + 1}"]
    for name in ("train_loss", "val_score"):
        if isinstance(record.get(name), (int, float)):
            parts.append(f"{name} {record[name]:.4f}")
    if isinstance(record.get("epoch_s"), (int, float)):
        parts.append(f"({record['epoch_s']:.1f} s)")
    return " ".join(parts)


def finished_trial_ids(record_path: str | Path) -> list[str]:
    """Return the Tune trial ids recorded as finished (complete or error) in a progress file."""
    path = Path(record_path)
    if not path.is_file():
        return []
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            ids.append(json.loads(line)["tune_trial_id"])
    return list(dict.fromkeys(ids))


def wandb_mode() -> str:
    """Return "online" when WANDB_MODE says so or WANDB_API_KEY is set, else "offline".

    The key is never read into this process's config: online logging authenticates
    through the environment or `wandb login`'s netrc file.
    """
    explicit = os.environ.get("WANDB_MODE")
    if explicit:
        return explicit
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_callback(group: str, local_dir: Path, excludes: Iterable[str] = ()) -> Callback:
    """Return Ray's WandbLoggerCallback: one W&B run per trial, grouped by sweep name."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    wandb_dir = local_dir / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)  # wandb 0.31 needs dir= to exist
    mode = wandb_mode()
    if mode == "online" and os.environ.get("WANDB_API_KEY"):
        log.warning("WANDB_API_KEY is passed to W&B's logging actors as a runtime_env variable, "
                    "which the Ray dashboard shows; prefer `wandb login` (netrc) on the head node")
    return WandbLoggerCallback(project=WANDB_PROJECT, group=group, excludes=list(excludes),
                               mode=mode, dir=str(wandb_dir))


def log_front_to_wandb(table, group: str, local_dir: Path, verdicts=None, answer: str = "") -> str:
    """Log the Pareto table (a pandas DataFrame) as a wandb.Table in its own run; return the run's mode.

    `verdicts` (tune.report.reports.verdict_table) is logged as a second table, and the first lines of
    `answer` (answer.md: the recommendation, then the dominance headline) go into the run's summary.
    """
    import wandb

    wandb_dir = local_dir / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    mode = wandb_mode()
    run = wandb.init(project=WANDB_PROJECT, group=group, name=f"{group}-pareto", job_type="pareto",
                     mode=mode, dir=str(wandb_dir), reinit="create_new")
    try:
        run.log({"pareto_front": wandb.Table(dataframe=table.astype(object).where(table.notna(), None))})
        if verdicts is not None:
            run.log({"verdicts": wandb.Table(dataframe=verdicts.astype(str))})
        lines = [line for line in answer.splitlines() if line.strip()]
        if lines:
            run.summary["recommendation"] = lines[0]
            run.summary["dominance"] = lines[1] if len(lines) > 1 else ""
    finally:
        run.finish()
    return mode
