"""Runs `python tune/run.py ARGS` with one fault: the driver SIGKILLs itself right after Optuna is
told its first COMPLETE trial, before Tune's experiment checkpoint records that the trial ended —
the one crash after which Tune reruns a trial Optuna already holds (tests/faults/test_driver_kill.py).

usage: _kill_after_tell.py ARGS...   (the arguments of tune/run.py)
"""

import os
import signal
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tune.run import main  # noqa: E402

_tell = optuna.Study.tell


def _tell_then_die(self, trial, values=None, state=None, skip_if_finished=False):
    told = _tell(self, trial, values, state=state, skip_if_finished=skip_if_finished)
    if told.state == TrialState.COMPLETE:
        print(f"killing the driver after telling Optuna trial {told.number} COMPLETE", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return told


if __name__ == "__main__":
    optuna.Study.tell = _tell_then_die
    sys.exit(main(sys.argv[1:]))
