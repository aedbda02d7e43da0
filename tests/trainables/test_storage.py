"""Tests for trainables.storage: URIs, atomic writes, the Ray Train folder layout."""

import pytest

from trainables.storage import EPOCHS_FILE, atomic_write, epoch_files, is_uri, train_storage


def test_is_uri_tells_a_scheme_from_a_path():
    assert is_uri("s3://bucket/prefix") and is_uri("memory://x")
    assert not is_uri("results") and not is_uri("/tmp/results")


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out" / "a.txt"
    atomic_write(target, lambda temp: temp.write_text("old"))

    def fail(temp):
        temp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_epoch_files_are_found_where_train_storage_puts_runs(tmp_path):
    storage_path, filesystem = train_storage(str(tmp_path))
    assert filesystem is None
    run = tmp_path / "train" / "finetune-abc"
    run.mkdir(parents=True)
    (run / EPOCHS_FILE).write_text("{}\n")
    assert storage_path == str((tmp_path / "train").resolve())
    assert epoch_files(tmp_path) == [run / EPOCHS_FILE]
