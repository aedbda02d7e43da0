import copy
import time

import pytest
import torch
from torch import nn

from trainables.config import TrialConfig
from tune.report.retime import TimedModel, summarize, time_interleaved

CFG = TrialConfig.from_flat({"eval.latency_repeats": 5, "eval.latency_warmup": 1, "eval.latency_batch": 2})


class _Sleepy(nn.Module):
    """A small conv net that also sleeps `sleep_s` per forward (a model that is clearly slower)."""

    def __init__(self, sleep_s: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(16, 2))
        self.sleep_s = sleep_s

    def forward(self, x):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.net(x)


def _timed(models):
    entries = [TimedModel(label=f"{role}-{i}", number=i, role=role, model=m, cfg=CFG, threads=1)
               for i, (role, m) in enumerate(models)]
    return summarize(entries, time_interleaved(entries, rounds=7, device=torch.device("cpu")))


def test_retiming_two_identical_models_gives_a_tie():
    base = _Sleepy(sleep_s=0.002)  # a sleep-dominated forward: stable enough on a loaded machine
    frame = _timed([("reference", base), ("front", copy.deepcopy(base))])
    row = frame[frame["role"] == "front"].iloc[0]
    assert row["verdict_latency_ms"] == "tie"
    assert row["rounds"] == 7 and row["threads"] == 1


def test_retiming_a_clearly_slower_model_gives_worse_and_a_faster_one_better():
    frame = _timed([("reference", _Sleepy(sleep_s=0.004)), ("front", _Sleepy(sleep_s=0.02)),
                    ("front", _Sleepy(sleep_s=0.0))])
    assert list(frame["verdict_latency_ms"]) == ["reference", "worse", "better"]
    slow = frame.iloc[1]
    assert slow["delta_latency_ms_lo"] > 0 and slow["latency_ms_retimed_lo"] <= slow["latency_ms_retimed"]


def test_retiming_restores_the_thread_count():
    before = torch.get_num_threads()
    _timed([("reference", _Sleepy())])
    assert torch.get_num_threads() == before


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match="rounds"):
        time_interleaved([], rounds=0, device=torch.device("cpu"))


def test_only_a_models_first_round_pays_the_trials_full_warmup(monkeypatch):
    import tune.report.retime as retime

    real, warmups = retime.measure_latency, []

    def recording(model, shape, **kwargs):
        warmups.append(kwargs["warmup"])
        return real(model, shape, **kwargs)

    monkeypatch.setattr(retime, "measure_latency", recording)
    cfg = TrialConfig.from_flat({"eval.latency_repeats": 2, "eval.latency_warmup": 3, "eval.latency_batch": 2})
    entries = [TimedModel(label=f"m-{i}", number=i, role="front", model=_Sleepy(), cfg=cfg, threads=1)
               for i in range(2)]
    time_interleaved(entries, rounds=3, device=torch.device("cpu"))
    assert warmups == [3, 3, 1, 1, 1, 1]
