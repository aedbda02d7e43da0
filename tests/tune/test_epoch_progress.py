"""The sweep's progress view shows Ray Train epochs as they are reported, each once."""

import io
import json

from trainables.runner import EPOCHS_FILE, EpochLog
from tune.callbacks import ProgressLog


def test_reported_epochs_are_printed_once_in_order(tmp_path):
    run_dir = tmp_path / "train" / "finetune-0123456789abcdef0123"
    log = EpochLog(str(run_dir / EPOCHS_FILE), run_dir.name)
    out = io.StringIO()
    progress = ProgressLog(str(tmp_path / "sweep" / "progress.jsonl"), 4, ["val_auroc"], stream=out)
    log.after_report(None, [{"epoch": 0, "train_loss": 0.7, "val_score": 0.9, "epoch_s": 2.0}], None)
    progress.on_step_end(0, [])
    log.after_report(None, [{"epoch": 1, "train_loss": 0.5, "val_score": 0.95, "epoch_s": 1.5}], None)
    progress.on_step_end(1, [])
    progress.on_step_end(2, [])
    lines = out.getvalue().splitlines()
    assert lines == [
        "      finetune 01234567 epoch 1 train_loss 0.7000 val_score 0.9000 (2.0 s)",
        "      finetune 01234567 epoch 2 train_loss 0.5000 val_score 0.9500 (1.5 s)",
    ]
    assert json.loads((run_dir / EPOCHS_FILE).read_text().splitlines()[1])["epoch"] == 1
