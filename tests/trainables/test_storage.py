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


def test_a_uri_query_stays_out_of_joined_paths(s3_server):
    from trainables.storage import results_location

    location = results_location(s3_server.uri("sweeps"))
    assert location.path("s1", "sweep.json") == "vitsweep-results/sweeps/s1/sweep.json"
    assert location.show("s1") == "s3://vitsweep-results/sweeps/s1"
    with location.fs.open_output_stream(location.path("s1", "sweep.json")) as handle:
        handle.write(b"{}")
    assert train_storage(s3_server.uri("sweeps"))[0] == "vitsweep-results/sweeps/train"


def test_a_uri_pyarrow_cannot_open_names_it():
    from trainables.storage import results_location

    with pytest.raises(ValueError, match=r"'s3://b/p\?color=red'.*Unexpected query parameter"):
        results_location("s3://b/p?color=red")


def test_a_missing_bucket_is_named(s3_server):
    from trainables.storage import check_results_location, results_location

    location = results_location(f"s3://no-such-bucket/x?endpoint_override={s3_server.endpoint}&scheme=http")
    with pytest.raises(ValueError, match="bucket 'no-such-bucket' does not exist"):
        check_results_location(location)
    check_results_location(results_location(s3_server.uri("x")))  # the fixture's bucket is there
