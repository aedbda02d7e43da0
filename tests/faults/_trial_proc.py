"""Runs one trial in this process (run_trial, local backend) and prints its metrics as JSON.

usage: _trial_proc.py RESULTS_DIR [--kill-at-publish STAGE] [--cache-wait-s S] KEY=VALUE ...

--kill-at-publish STAGE: die by SIGKILL at the moment the stage cache publishes the entry
of STAGE, i.e. at the rename of its finished staging folder (files and manifest written)
onto the entry's path; first print `KILLED-AT-PUBLISH <staging> <entry> <files>` to stderr.
--cache-wait-s S: give up waiting for another process's cache entry after S seconds.
"""

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from trainables.config import parse_overrides
from trainables.trial import TrialContext, run_trial


def _kill_at_publish(stage: str) -> None:
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        # trainables.cache publishes a local entry with os.rename(staging, entry)
        if ".staging-" in str(src) and f"/cache/{stage}/" in str(dst):
            files = sorted(p.relative_to(src).as_posix() for p in Path(src).rglob("*") if p.is_file())
            print(f"KILLED-AT-PUBLISH {src} {dst} {','.join(files)}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rename(src, dst, *args, **kwargs)

    os.rename = rename


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--kill-at-publish", metavar="STAGE")
    parser.add_argument("--cache-wait-s", type=float)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.kill_at_publish:
        _kill_at_publish(args.kill_at_publish)
    context = TrialContext(results_dir=args.results, show_progress=False, cache_wait_s=args.cache_wait_s)
    print(json.dumps(run_trial(parse_overrides(args.overrides), context)))


if __name__ == "__main__":
    main()
