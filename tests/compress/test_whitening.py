import pytest
import torch

from tiny_vit import make_model

from compress import (
    CompressionPlan, InputStats, collect_input_stats, compress_model, load_input_stats, save_input_stats,
)
from compress.config import DEFAULT_DAMPING
from compress.whitening import whitening_factor


def _layer0_normed_inputs(model, batches):
    captured = []
    handle = model.model.layer[0].norm1.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    handle.remove()
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in captured]).double()


def test_second_moment_is_xtx_over_n_streamed_over_batches(model, calibration_batches):
    inputs = _layer0_normed_inputs(model, calibration_batches)
    stats = collect_input_stats(model, calibration_batches, targets=["q"])["model.layer.0.attention.q_proj"]
    assert stats.num_samples == inputs.shape[0] == 2 * 4 * 19
    torch.testing.assert_close(stats.second_moment, inputs.T @ inputs / inputs.shape[0])


def test_q_k_v_share_one_statistics_object(model, calibration_batches):
    stats = collect_input_stats(model, calibration_batches)
    names = [f"model.layer.1.attention.{p}_proj" for p in "qkv"]
    assert stats[names[0]] is stats[names[1]] is stats[names[2]]
    assert stats[names[0]] is not stats["model.layer.1.attention.o_proj"]


def test_accepts_pixel_label_pairs_and_dicts(model, calibration_batches):
    plain = collect_input_stats(model, calibration_batches, targets=["o"])
    pairs = collect_input_stats(model, [(b, torch.zeros(4)) for b in calibration_batches], targets=["o"])
    dicts = collect_input_stats(model, [{"pixel_values": b} for b in calibration_batches], targets=["o"])
    name = "model.layer.1.attention.o_proj"
    assert torch.equal(plain[name].second_moment, pairs[name].second_moment)
    assert torch.equal(plain[name].second_moment, dicts[name].second_moment)


def test_runs_in_eval_mode_and_restores_training_flag(model, calibration_batches):
    model.train()
    eval_stats = collect_input_stats(model.eval(), calibration_batches, targets=["up"])
    model.train()
    train_stats = collect_input_stats(model, calibration_batches, targets=["up"])
    assert model.training
    name = "model.layer.1.mlp.up_proj"
    assert torch.equal(eval_stats[name].second_moment, train_stats[name].second_moment)


def test_rejects_empty_calibration(model):
    with pytest.raises(ValueError, match="batches must yield at least one batch"):
        collect_input_stats(model, [])


def test_rejects_unknown_batch_type(model):
    with pytest.raises(TypeError, match="batches must yield pixel tensors"):
        collect_input_stats(model, ["not pixels"])


def test_stats_round_trip_through_weights_only_torch_save(model, calibration_batches, tmp_path):
    stats = collect_input_stats(model, calibration_batches, targets=["q", "down"])
    save_input_stats(stats, tmp_path / "stats.pt")
    loaded = load_input_stats(tmp_path / "stats.pt")
    assert loaded.keys() == stats.keys()
    for name in stats:
        assert torch.equal(loaded[name].second_moment, stats[name].second_moment)
        assert loaded[name].num_samples == stats[name].num_samples
    assert loaded["model.layer.0.attention.q_proj"] is not loaded["model.layer.0.mlp.down_proj"]


def test_loaded_stats_keep_q_k_v_sharing(model, calibration_batches, tmp_path):
    save_input_stats(collect_input_stats(model, calibration_batches, targets=["q", "k"]), tmp_path / "stats.pt")
    loaded = load_input_stats(tmp_path / "stats.pt")
    assert loaded["model.layer.1.attention.q_proj"] is loaded["model.layer.1.attention.k_proj"]


def test_restricted_keeps_the_chosen_rows_and_columns():
    stats = InputStats(torch.arange(16, dtype=torch.float64).reshape(4, 4), 10)
    assert stats.restricted([1, 3]).second_moment.tolist() == [[5.0, 7.0], [13.0, 15.0]]


def test_cholesky_factor_reproduces_a_positive_definite_moment():
    inputs = torch.randn(200, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    moment = inputs.T @ inputs / 200
    factor = whitening_factor(moment, damping=0.0)
    assert factor.method == "cholesky"
    torch.testing.assert_close(factor.factor @ factor.factor.T, moment)


def _rank_deficient_moment():
    base = torch.randn(100, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    inputs = torch.cat([base, base.sum(1, keepdim=True), torch.zeros(100, 1)], dim=1)
    return inputs.T @ inputs / 100


def test_rank_deficient_moment_without_damping_falls_back_to_eigen():
    moment = _rank_deficient_moment()
    factor = whitening_factor(moment, damping=0.0)
    assert factor.method == "eigen"
    torch.testing.assert_close(factor.factor @ factor.factor.T, moment, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(factor.solve_right(factor.factor), torch.eye(4, dtype=torch.float64))


def test_damped_factor_of_a_rank_deficient_moment_is_finite_and_invertible():
    factor = whitening_factor(_rank_deficient_moment())
    inverse_check = factor.solve_right(factor.factor)
    assert torch.isfinite(inverse_check).all()
    torch.testing.assert_close(inverse_check, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=1e-6)


WHITENED = dict(tau_mlp=0.9, tau_svd=0.8, svd_space="whitened")


def _damped_outputs(damping: float | None) -> torch.Tensor:
    torch.manual_seed(0)
    model = make_model()
    batches = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2 + i)) for i in range(2)]
    stats = collect_input_stats(model, batches)
    plan = CompressionPlan(**WHITENED) if damping is None else CompressionPlan(**WHITENED, svd_damping=damping)
    compressed, _ = compress_model(model, plan, calibration=stats)
    with torch.no_grad():
        return compressed(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))).pooler_output


def test_svd_damping_default_is_the_former_constant_and_a_larger_damping_changes_the_factors():
    assert CompressionPlan().svd_damping == DEFAULT_DAMPING == 1e-6
    default = _damped_outputs(None)
    assert torch.equal(default, _damped_outputs(1e-6))
    assert not torch.allclose(default, _damped_outputs(1e-2))
