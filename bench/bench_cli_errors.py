"""How long the CLI takes to refuse a bad config value, and what it imports on the way.

    python bench/bench_cli_errors.py [--runs 7]

Each case runs `python tune/run.py ARGS` in a fresh process (exit 2 expected) in turn with the
same command preceded by `import torch, transformers` — what every config error cost while the
config layer imported the model code (issue 33: 4.6-8.1 s) — and prints the median wall seconds
of both, their ratio, and whether torch was imported by the refusal itself.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUN = str(Path(__file__).resolve().parents[1] / "tune" / "run.py")
CASES = {
    "bad --set value": ["--set", "compress.tau_mlp=1.2"],
    "malformed --objectives": ["--objectives", "val_auroc:max,foo"],
    "unknown --set key": ["--set", "compress.tau_mpl=0.9"],
}
PROGRAM = """
import runpy, sys
{preload}
sys.argv = [{run!r}, *{args!r}]
try:
    runpy.run_path({run!r}, run_name="__main__")
except SystemExit as stop:
    code = stop.code
print(code, "torch" in sys.modules)
"""


def run_once(args: list[str], preload: str) -> tuple[float, str]:
    """Return (wall seconds, the child's last line: exit code and whether torch was imported)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROGRAM.format(preload=preload, run=RUN, args=args)],
                          capture_output=True, text=True, timeout=300)
    return time.perf_counter() - started, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    print(f"{'case':<24} {'refusal s':>10} {'with torch s':>13} {'ratio':>7}  exit, torch imported")
    for name, args in CASES.items():
        plain, heavy, said = [], [], ""
        for _ in range(runs):   # in turn, so drifting load hits both alike
            seconds, said = run_once(args, "")
            plain.append(seconds)
            heavy.append(run_once(args, "import torch, transformers")[0])
        ratio = statistics.median(p / h for p, h in zip(plain, heavy))
        print(f"{name:<24} {statistics.median(plain):>10.3f} {statistics.median(heavy):>13.3f} {ratio:>7.3f}  {said}")


if __name__ == "__main__":
    main()
