import json

import pytest
import torch
from tiny_vit import make_model

from compress import CompressionPlan, TokenPlan, collect_input_stats, compress_model, count_params, keep_schedule


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tau_heads", 0.0, r"compress\.tau_heads must be in \(0, 1\], got 0\.0"),
        ("tau_mlp", 1.2, r"compress\.tau_mlp must be in \(0, 1\], got 1\.2"),
        ("tau_svd", -0.5, r"compress\.tau_svd must be in \(0, 1\], got -0\.5"),
        ("svd_space", "fisher", r"compress\.svd_space must be one of raw, whitened, got 'fisher'"),
        ("svd_targets", ("q", "attn"), r"compress\.svd_targets must name roles among"),
    ],
)
def test_plan_rejects_out_of_range_values_naming_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        CompressionPlan(**{field: value})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("r_max", 1.0, r"tokens\.r_max must be in \[0, 1\), got 1\.0"),
        ("r_max", -0.1, r"tokens\.r_max must be in \[0, 1\), got -0\.1"),
        ("alpha", 0.0, r"tokens\.alpha must be a finite number > 0, got 0\.0"),
        ("alpha", -1.0, r"tokens\.alpha must be a finite number > 0"),
    ],
)
def test_token_plan_rejects_out_of_range_values_naming_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        TokenPlan(**{field: value})


def test_plan_rejects_non_numeric_tau():
    with pytest.raises(TypeError, match="compress.tau_heads must be a real number"):
        CompressionPlan(tau_heads="0.9")


def test_plan_round_trips_through_a_dict():
    plan = CompressionPlan(tau_heads=0.89, tau_svd=0.975, svd_space="whitened", svd_targets=["q", "up"])
    assert CompressionPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    tokens = TokenPlan(r_max=0.5, alpha=2.0, fuse=True)
    assert TokenPlan.from_dict(json.loads(json.dumps(tokens.to_dict()))) == tokens


def test_plan_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown CompressionPlan keys \['tau_attention'\]"):
        CompressionPlan.from_dict({"tau_attention": 0.5})


def test_compress_model_leaves_the_input_model_untouched(model, pixels):
    before = model(pixels).last_hidden_state
    compress_model(model, CompressionPlan(tau_heads=0.6, tau_mlp=0.6, tau_svd=0.6))
    assert count_params(model) == count_params(make_model())
    assert torch.equal(model(pixels).last_hidden_state, before)


def test_report_is_json_serialisable_with_every_decision(model):
    _, report = compress_model(model, CompressionPlan(tau_heads=0.6, tau_mlp=0.6, tau_svd=0.6))
    record = json.loads(json.dumps(report.to_dict()))
    assert (len(record["heads"]), len(record["mlp"]), len(record["svd"])) == (2, 2, 12)
    assert record["params_after"] < record["params_before"]


def test_all_methods_together_report_the_real_count(model, pixels):
    compressed, report = compress_model(model, CompressionPlan(tau_heads=0.7, tau_mlp=0.7, tau_svd=0.7))
    assert report.params_after == count_params(compressed)
    assert compressed(pixels).last_hidden_state.shape == model(pixels).last_hidden_state.shape


def test_whitened_svd_without_calibration_says_what_to_pass(model):
    with pytest.raises(ValueError, match=r"needs calibration: pass calibration=collect_input_stats"):
        compress_model(model, CompressionPlan(tau_svd=0.9, svd_space="whitened"))


def test_whitened_svd_at_tau_one_needs_no_calibration(model):
    _, report = compress_model(model, CompressionPlan(svd_space="whitened"))
    assert report.svd == []


def test_precomputed_statistics_are_restricted_to_the_kept_units(model, calibration_batches):
    # With heads kept, layer 0's MLP input is unchanged, so its restricted down_proj statistics
    # equal statistics collected after pruning, and both routes choose the same ranks there.
    plan = CompressionPlan(tau_mlp=0.7, tau_svd=0.8, svd_space="whitened", svd_targets=("q", "down"))
    stats = collect_input_stats(model, calibration_batches)
    _, from_stats = compress_model(model, plan, calibration=stats)
    _, from_batches = compress_model(model, plan, calibration=calibration_batches)
    layer0 = [(d.module, d.kept) for d in from_stats.svd if d.layer == 0]
    assert layer0 == [(d.module, d.kept) for d in from_batches.svd if d.layer == 0]
    assert from_stats.mlp[0].applied


def test_calibration_values_must_be_input_stats(model):
    with pytest.raises(TypeError, match="calibration values must be InputStats"):
        compress_model(model, CompressionPlan(tau_svd=0.9, svd_space="whitened"), calibration={"x": 1})


def test_token_pruning_follows_the_plan(model, pixels):
    compressed, report = compress_model(model, CompressionPlan(), tokens=TokenPlan(r_max=0.5, alpha=1.2))
    assert report.tokens["schedule"] == keep_schedule(16, 2, 0.5, 1.2)
    assert compressed(pixels).last_hidden_state.shape[1] == 1 + 2 + report.tokens["schedule"][-1]


def test_no_token_pruning_at_r_max_zero(model):
    _, report = compress_model(model, CompressionPlan(tau_heads=0.9))
    assert report.tokens is None


def test_rejects_a_plan_of_the_wrong_type(model):
    with pytest.raises(TypeError, match="plan must be a CompressionPlan"):
        compress_model(model, {"tau_heads": 0.5})
