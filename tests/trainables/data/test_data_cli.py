"""Tests for trainables.data.cli: the data commands."""

import pytest

from trainables.data import cli as data
from trainables.data.datasets import DIGITS_PREFIX, data_fingerprint, ensure_digits


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return ensure_digits(tmp_path_factory.mktemp("cli") / "digits")


def test_cli_check_prints_the_fingerprint(digits_root, capsys):
    assert data.main(["check", "--root", str(digits_root), "--prefix", DIGITS_PREFIX]) == 0
    assert data_fingerprint(digits_root, DIGITS_PREFIX) in capsys.readouterr().out


def test_cli_reports_a_missing_split_without_traceback(tmp_path, capsys):
    assert data.main(["check", "--root", str(tmp_path)]) == 1
    assert "run: python -m trainables.data download" in capsys.readouterr().err
