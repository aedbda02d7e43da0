"""Tests for trainables.writable: an output location is checked before work, leaving nothing behind."""

import sys
from pathlib import Path

import pytest

from trainables.writable import NotWritableError, check_writable_file, check_writable_folder


def test_a_missing_folder_under_a_writable_one_passes_and_is_not_created(tmp_path):
    check_writable_folder(tmp_path / "a" / "b")
    check_writable_file(tmp_path / "c" / "metrics.json")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_under_a_file_is_refused_naming_both(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(NotWritableError) as caught:
        check_writable_folder(tmp_path / "notes.txt" / "results")
    assert str(caught.value) == f"{tmp_path / 'notes.txt' / 'results'}: {tmp_path / 'notes.txt'} is not a folder"


def test_a_file_where_a_folder_is_expected_and_a_folder_where_a_file_is_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(NotWritableError, match="is a file, not a folder"):
        check_writable_folder(tmp_path / "notes.txt")
    with pytest.raises(NotWritableError, match="is a folder, not a file"):
        check_writable_file(tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_a_folder_in_proc_is_refused_in_one_line():
    with pytest.raises(NotWritableError) as caught:
        check_writable_folder("/proc/x")
    message = str(caught.value)
    assert message.startswith("/proc/x: cannot create anything in /proc: ") and "\n" not in message
    assert not Path("/proc/x").exists()
