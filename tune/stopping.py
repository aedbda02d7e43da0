"""Stopping a sweep early: the first trial that finds its data or weights missing stops them all.

On a cluster only the workers may hold PCam and the weights, so the driver cannot check
them before the sweep starts; a trial checks them on its node (trainables.data.inputs) and
reports `input_error`. Every other trial would fail the same way, so this stopper ends
the sweep and leaves the one-line reason in a file for the driver to print.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune import Stopper

from trainables.report_keys import INPUT_ERROR_KEY
from trainables.storage import atomic_write

INPUT_ERROR_FILENAME = "input_error.txt"


class InputMissing(RuntimeError):
    """A trial found its data or weights missing on its node; the sweep was stopped."""


class StopOnMissingInput(Stopper):
    """Tune stopper: a result carrying `input_error` stops every trial; its line goes to `path`."""

    def __init__(self, path: str):
        self.path = path
        self.stopped = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        line = result.get(INPUT_ERROR_KEY)
        if line and not self.stopped:
            self.stopped = True
            atomic_write(Path(self.path), lambda temp: temp.write_text(f"{line}\n"))
        return bool(line)

    def stop_all(self) -> bool:
        return self.stopped
