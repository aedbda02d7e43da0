"""What Ray Train adds to one training stage: the pcam-a100 smoke trial's fine-tune, in-process and on Ray Train.

The same trial (ViT-S/16 at 224 px, LoRA, one epoch on 16 generated PCam-layout images, the
`--smoke` settings) runs twice on fresh results folders: once with the stage in this process
(`backend="local"`, what `--debug-trial` does) and once as a one-worker TorchTrainer run
(`backend="ray"`, what a sweep does), in one Ray session started beforehand. Printed: each
run's fine-tune stage seconds, its epoch time as the stage logged it, and the difference, which
is Ray Train's start, report and stop around the same training work (process starts and the
worker's imports included).

    python bench/bench_stage_backends.py
"""
import logging
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from trainables.trial import TrialContext, run_trial  # noqa: E402
from tune.presets import PRESETS  # noqa: E402
from tune.smoke import smoke_overrides  # noqa: E402
from tune.sweep import build_base  # noqa: E402


class EpochSeconds(logging.Handler):
    """Keeps the seconds of each "finetune epoch ..." line this process logs."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def emit(self, record):
        found = re.search(r"finetune epoch \d+/\d+:.*\(([\d.]+) s\)", record.getMessage())
        if found:
            self.seconds.append(float(found.group(1)))


def main() -> int:
    preset = PRESETS["pcam-a100"]
    flat = build_base(preset, {**smoke_overrides(preset), "data.train_limit": 16, "data.val_limit": 16},
                      "compress_only")
    epochs = EpochSeconds()
    logging.getLogger("trainables").addHandler(epochs)
    logging.getLogger("trainables").setLevel(logging.INFO)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    time.sleep(3)  # let Ray's own start settle
    try:
        stage = {}
        for backend in ("local", "ray"):
            with tempfile.TemporaryDirectory() as results:
                metrics = run_trial(dict(flat), TrialContext(results_dir=results, backend=backend,
                                                             show_progress=False))
            stage[backend] = metrics["stage_s_finetune"]
    finally:
        ray.shutdown()
    epoch = f"{epochs.seconds[0]:.1f} s" if epochs.seconds else "not logged here"
    print(f"device: {os.cpu_count()} CPUs; pcam-a100 smoke trial, fine-tune of 16 images at 224 px")
    print(f"fine-tune stage in-process {stage['local']:.1f} s (its epoch {epoch})")
    print(f"fine-tune stage on Ray Train {stage['ray']:.1f} s (epoch logged by the worker)")
    print(f"Ray Train adds {stage['ray'] - stage['local']:.1f} s ({stage['ray'] / stage['local']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
