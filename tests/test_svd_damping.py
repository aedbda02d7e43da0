"""compress.svd_damping: the whitening damping as a searched knob, end to end (plan, config, space, keys)."""

import sys
from pathlib import Path

import optuna
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "compress"))
from tiny_vit import make_model  # noqa: E402

from compress import CompressionPlan, collect_input_stats, compress_model  # noqa: E402
from compress.whitening import DEFAULT_DAMPING  # noqa: E402
from search_spaces import SEED_CONFIG, config_values, load_space, load_table  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402

WHITENED = dict(tau_mlp=0.9, tau_svd=0.8, svd_space="whitened")


def _outputs(damping: float | None) -> torch.Tensor:
    torch.manual_seed(0)
    model = make_model()
    batches = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2 + i)) for i in range(2)]
    stats = collect_input_stats(model, batches)
    plan = CompressionPlan(**WHITENED) if damping is None else CompressionPlan(**WHITENED, svd_damping=damping)
    compressed, _ = compress_model(model, plan, calibration=stats)
    with torch.no_grad():
        return compressed(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))).pooler_output


def test_the_default_is_the_former_constant_and_a_larger_damping_changes_the_factors():
    assert CompressionPlan().svd_damping == DEFAULT_DAMPING == 1e-6
    default = _outputs(None)
    assert torch.equal(default, _outputs(1e-6))
    assert not torch.allclose(default, _outputs(1e-2))


@pytest.mark.parametrize("value", [0.0, -1e-6, float("inf")])
def test_a_damping_that_is_not_positive_names_the_key(value):
    with pytest.raises(ValueError, match="compress.svd_damping must be a finite number > 0"):
        TrialConfig.from_flat({"compress.svd_damping": value})


def test_it_is_a_config_key_that_keys_outcomes_and_recover_only_when_set():
    default, damped = TrialConfig.from_flat({}), TrialConfig.from_flat({"compress.svd_damping": "1e-4"})
    assert damped.compress.svd_damping == 1e-4 and damped.to_flat()["compress.svd_damping"] == 1e-4
    assert "compress.svd_damping" not in default.key_flat()
    assert damped.key_flat()["compress.svd_damping"] == 1e-4
    assert damped.recover_key_fields() != default.recover_key_fields()


def test_the_default_space_searches_it_for_whitened_svd_only():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        constants = load_space("default")(trial) or {}
        config = config_values({**trial.params, **constants})
        assert ("compress.svd_damping" in trial.params) == (trial.params["compress.svd_space"] == "whitened")
        seen.add(config.get("compress.svd_damping"))
        TrialConfig.from_flat(config)
        study.tell(trial, 0.0)
    assert {1e-8, 1e-6, 1e-4, 1e-2} <= seen


def test_the_seed_point_takes_the_former_constant():
    table = load_table("default")
    assert "compress.svd_damping" not in table.seed_point(dict(SEED_CONFIG))  # the seed's SVD is raw
    whitened = table.seed_point({**SEED_CONFIG, "compress.svd_space": "whitened"})
    assert whitened["compress.svd_damping"] == DEFAULT_DAMPING
