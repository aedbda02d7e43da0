"""The sweep's progress view shows Ray Train epochs as they are reported, each once."""

import io
import json
import pickle

from trainables.storage import EPOCHS_FILE
from trainables.train.entry import EpochLog
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


def _epoch(log: EpochLog, epoch: int) -> None:
    log.after_report(None, [{"epoch": epoch, "train_loss": 0.5, "val_score": 0.9, "epoch_s": 1.0}], None)


def test_resumed_sweep_prints_only_epochs_after_its_start(tmp_path):
    # A killed driver's sweep: one run trained 2 epochs before the kill, another finished.
    interrupted = tmp_path / "train" / "finetune-aaaaaaaaaaaaaaaaaaaa"
    finished = tmp_path / "train" / "pretrain-bbbbbbbbbbbbbbbbbbbb"
    before = EpochLog(str(interrupted / EPOCHS_FILE), interrupted.name)
    _epoch(before, 0)
    _epoch(before, 1)
    _epoch(EpochLog(str(finished / EPOCHS_FILE), finished.name), 0)
    # The resumed driver unpickles the callback saved with the Tuner (before any step of
    # the first driver), then Tune calls setup().
    saved = ProgressLog(str(tmp_path / "sweep" / "progress.jsonl"), 4, ["val_auroc"])
    resumed = pickle.loads(pickle.dumps(saved))
    out = io.StringIO()
    resumed._stream = out
    resumed.setup(total_num_samples=4)
    resumed.on_step_end(1, [])
    _epoch(EpochLog(str(interrupted / EPOCHS_FILE), interrupted.name), 2)  # the resumed run
    fresh = tmp_path / "train" / "finetune-cccccccccccccccccccc"
    _epoch(EpochLog(str(fresh / EPOCHS_FILE), fresh.name), 0)  # a run started after the resume
    resumed.on_step_end(2, [])
    assert out.getvalue().splitlines() == [
        "      finetune aaaaaaaa epoch 3 train_loss 0.5000 val_score 0.9000 (1.0 s)",
        "      finetune cccccccc epoch 1 train_loss 0.5000 val_score 0.9000 (1.0 s)",
    ]


def test_epochs_of_runs_on_an_object_store_are_printed_once_in_order(s3_server, monkeypatch, tmp_path):
    # Results on S3: the Train runs write one object per epoch under <results>/<sweep>/epochs/,
    # and the console lists that folder (at most every REMOTE_POLL_S; 0 here).
    from trainables.storage import remote_epochs_path, results_location
    import tune.callbacks

    monkeypatch.setattr(tune.callbacks, "REMOTE_POLL_S", 0.0)
    results = s3_server.uri(f"epochs/{tmp_path.name}")
    folder, fs = remote_epochs_path(results, "sw"), results_location(results).fs
    earlier = EpochLog(folder, "pretrain-bbbbbbbbbbbbbbbbbbbb", fs)
    _epoch(earlier, 0)  # before this driver started: not printed again
    out = io.StringIO()
    progress = pickle.loads(pickle.dumps(ProgressLog(str(tmp_path / "progress.jsonl"), 4, ["val_auroc"],
                                                     remote_epochs=(results, "sw"))))
    progress._stream = out
    progress.setup(total_num_samples=4)
    run = EpochLog(folder, "finetune-aaaaaaaaaaaaaaaaaaaa", fs)
    _epoch(run, 0)
    progress.on_step_end(0, [])
    _epoch(run, 1)
    progress.on_step_end(1, [])
    progress.on_step_end(2, [])
    assert out.getvalue().splitlines() == [
        "      finetune aaaaaaaa epoch 1 train_loss 0.5000 val_score 0.9000 (1.0 s)",
        "      finetune aaaaaaaa epoch 2 train_loss 0.5000 val_score 0.9000 (1.0 s)",
    ]
