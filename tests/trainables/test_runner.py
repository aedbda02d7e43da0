"""The Ray Train poll interval a stage runs with: 0.5 s unless the user's environment says otherwise."""

import os

from trainables.runner import TRAIN_POLL_ENV, set_train_poll_default


def test_poll_interval_defaults_to_half_a_second(monkeypatch):
    monkeypatch.delenv(TRAIN_POLL_ENV, raising=False)
    assert set_train_poll_default() == "0.5"
    assert os.environ[TRAIN_POLL_ENV] == "0.5"


def test_poll_interval_set_by_the_user_wins(monkeypatch):
    monkeypatch.setenv(TRAIN_POLL_ENV, "3")
    assert set_train_poll_default() == "3"
    assert os.environ[TRAIN_POLL_ENV] == "3"
