"""One table, every compression method, the same promises (shapes, dtype, identity, params, save/load)."""

import pytest
import torch
from tiny_vit import make_classifier, make_model

from compress import (
    CompressionPlan,
    collect_input_stats,
    compress_model,
    count_params,
    load_compressed,
    prune_attention_heads,
    prune_mlp_neurons,
    save_compressed,
    truncate_svd,
    unit_scores,
)


def _whitened(model, tau, batches):
    return truncate_svd(model, tau, whitening=collect_input_stats(model, batches))


def _activation_global(prune, kind):
    def method(model, tau, batches):
        return prune(model, tau, getattr(unit_scores(model, "activation", batches), kind), "global")
    return method


METHODS = {
    "heads": lambda model, tau, batches: prune_attention_heads(model, tau),
    "mlp": lambda model, tau, batches: prune_mlp_neurons(model, tau),
    "heads_activation_global": _activation_global(prune_attention_heads, "heads"),
    "mlp_activation_global": _activation_global(prune_mlp_neurons, "mlp"),
    "svd_raw": lambda model, tau, batches: truncate_svd(model, tau),
    "svd_whitened": _whitened,
}
PLANS = {
    "heads": dict(tau_heads=0.6),
    "mlp": dict(tau_mlp=0.6),
    "heads_activation_global": dict(tau_heads=0.6, importance="activation", allocation="global"),
    "mlp_activation_global": dict(tau_mlp=0.6, importance="activation", allocation="global"),
    "svd_raw": dict(tau_svd=0.6),
    "svd_whitened": dict(tau_svd=0.6, svd_space="whitened"),
}
methods = pytest.mark.parametrize("method", list(METHODS))


@methods
def test_tau_one_is_identity(method, model, pixels, calibration_batches):
    before = model(pixels).last_hidden_state
    METHODS[method](model, 1.0, calibration_batches)
    assert torch.equal(model(pixels).last_hidden_state, before)


@methods
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_keeps_external_shapes_dtype_and_device(method, dtype, pixels, calibration_batches):
    model = make_model(dtype=dtype)
    before = model(pixels.to(dtype))
    METHODS[method](model, 0.6, [batch.to(dtype) for batch in calibration_batches])
    after = model(pixels.to(dtype))
    for name in ("last_hidden_state", "pooler_output"):
        assert (after[name].shape, after[name].dtype, after[name].device) == (
            before[name].shape,
            before[name].dtype,
            before[name].device,
        )


@methods
def test_outputs_stay_finite(method, model, pixels, calibration_batches):
    METHODS[method](model, 0.6, calibration_batches)
    assert torch.isfinite(model(pixels).last_hidden_state).all()


@methods
def test_decisions_account_for_every_removed_parameter(method, model, calibration_batches):
    params_before = count_params(model)
    decisions = METHODS[method](model, 0.6, calibration_batches)
    removed = sum(decision.params_removed for decision in decisions)
    assert removed > 0
    assert params_before - removed == count_params(model)


@methods
def test_compress_model_reports_the_real_parameter_count(method, model, calibration_batches):
    compressed, report = compress_model(model, CompressionPlan(**PLANS[method]), calibration=calibration_batches)
    assert (report.params_before, report.params_after) == (count_params(model), count_params(compressed))


@methods
def test_save_load_round_trip_gives_identical_outputs(method, tmp_path, pixels, calibration_batches):
    classifier = make_classifier()
    METHODS[method](classifier, 0.6, calibration_batches)
    save_compressed(classifier, tmp_path / "saved")
    loaded = load_compressed(tmp_path / "saved")
    assert torch.equal(loaded(pixels), classifier(pixels))
