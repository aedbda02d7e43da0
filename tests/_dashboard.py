"""optuna-dashboard as the suite starts it, and the Pareto front it must serve.

The dashboard runs from this interpreter's optuna_dashboard package (its `run_server`), not
from whatever `optuna-dashboard` is first on PATH: outside the virtual environment that may be
another install, or none. The package has no `__main__`, hence `-c`.
"""

import subprocess
import sys

import optuna

_RUN_SERVER = ("import sys, optuna_dashboard; "
               "optuna_dashboard.run_server(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]))")


def start_dashboard(storage_url: str, port: int) -> subprocess.Popen:
    """Start optuna-dashboard on 127.0.0.1:`port` serving `storage_url`; the caller terminates it."""
    return subprocess.Popen([sys.executable, "-c", _RUN_SERVER, storage_url, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def brute_force_front(study: optuna.Study) -> set[int]:
    """Return the numbers of the COMPLETE trials that no other COMPLETE trial dominates."""
    signs = [-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    losses = {t.number: [s * v for s, v in zip(signs, t.values)]
              for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    return {number for number, mine in losses.items()
            if not any(all(o <= m for o, m in zip(other, mine)) and any(o < m for o, m in zip(other, mine))
                       for other in losses.values())}
