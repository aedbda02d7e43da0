import pytest
import torch
from tiny_vit import make_classifier, make_model
from torch.nn import functional

from compress import CompressionPlan, compress_model, load_unit_scores, save_unit_scores, unit_scores

HEAD_DIM = 16
SILENT_HEAD, SILENT_UNIT = 2, 5


@pytest.fixture
def labelled_batches():
    generator = torch.Generator().manual_seed(3)
    return [(torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 3, (4,), generator=generator))
            for _ in range(2)]


def silenced_classifier():
    """Return the tiny classifier whose layer-0 head SILENT_HEAD outputs zero (its v rows are zero) and whose
    layer-0 MLP unit SILENT_UNIT never reaches the output (its down column is zero); weights elsewhere unchanged."""
    model = make_classifier()
    layer = model.backbone.model.layer[0]
    rows = slice(SILENT_HEAD * HEAD_DIM, (SILENT_HEAD + 1) * HEAD_DIM)
    with torch.no_grad():
        layer.attention.v_proj.weight[rows] = 0
        if layer.attention.v_proj.bias is not None:
            layer.attention.v_proj.bias[rows] = 0
        layer.mlp.down_proj.weight[:, SILENT_UNIT] = 0
    return model


@pytest.mark.parametrize("importance", ["taylor", "activation"])
def test_a_head_whose_output_is_zero_scores_lowest(importance, labelled_batches):
    scores = unit_scores(silenced_classifier(), importance, labelled_batches)
    heads = scores.heads[0]
    assert heads[SILENT_HEAD] == heads.min()
    assert (heads[torch.arange(4) != SILENT_HEAD] > heads[SILENT_HEAD]).all()


@pytest.mark.parametrize("importance", ["taylor", "activation"])
def test_an_mlp_unit_whose_output_is_zero_scores_lowest(importance, labelled_batches):
    units = unit_scores(silenced_classifier(), importance, labelled_batches).mlp[0]
    others = units[torch.arange(units.numel()) != SILENT_UNIT]
    assert units[SILENT_UNIT] < others.min()


def test_taylor_equals_the_definition_by_autograd(labelled_batches):
    model = make_classifier()
    scores = unit_scores(model, "taylor", labelled_batches)
    model.zero_grad()
    for pixels, labels in labelled_batches:
        (functional.cross_entropy(model(pixels), labels) / len(labelled_batches)).backward()
    for index, layer in enumerate(model.backbone.model.layer):
        attention, mlp = layer.attention, layer.mlp

        def saliency(param):
            return (param.detach().double() * param.grad.double()).abs()

        expected_heads = []
        for head in range(attention.num_heads):
            rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
            total = saliency(attention.o_proj.weight)[:, rows].sum()
            for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
                total = total + saliency(linear.weight)[rows].sum()
                if linear.bias is not None:
                    total = total + saliency(linear.bias)[rows].sum()
            expected_heads.append(total)
        expected_units = (saliency(mlp.up_proj.weight).sum(dim=1) + saliency(mlp.up_proj.bias)
                          + saliency(mlp.down_proj.weight).sum(dim=0))
        torch.testing.assert_close(scores.heads[index], torch.stack(expected_heads), rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(scores.mlp[index], expected_units, rtol=1e-5, atol=1e-12)


def test_taylor_writes_no_grad_and_restores_requires_grad(labelled_batches):
    model = make_classifier().train()
    model.backbone.model.layer[0].attention.q_proj.weight.requires_grad_(False)
    unit_scores(model, "taylor", labelled_batches)
    assert all(param.grad is None for param in model.parameters())
    assert not model.backbone.model.layer[0].attention.q_proj.weight.requires_grad
    assert model.training


def test_activation_is_the_mean_output_norm_of_each_head(calibration_batches):
    model = make_model()
    captured = []
    layer = model.model.layer[1]
    handle = layer.attention.o_proj.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    with torch.no_grad():
        for batch in calibration_batches:
            model(batch)
    handle.remove()
    z = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured]).double()
    weight = layer.attention.o_proj.weight.detach().double()
    expected = torch.stack([
        (z[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] @ weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM].T).norm(dim=1).mean()
        for h in range(4)
    ])
    scores = unit_scores(model, "activation", calibration_batches)
    torch.testing.assert_close(scores.heads[1], expected, rtol=1e-5, atol=0.0)


def test_energy_scores_are_the_notes_energies():
    model = make_model(gated=True)
    scores = unit_scores(model, "energy")
    for index, layer in enumerate(model.model.layer):
        o_weight = layer.attention.o_proj.weight.detach().double()
        heads = torch.stack([o_weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM].pow(2).sum() for h in range(4)])
        up, down, gate = (linear.weight.detach().double()
                          for linear in (layer.mlp.up_proj, layer.mlp.down_proj, layer.mlp.gate_proj))
        salience = up.norm(dim=1) * down.norm(dim=0) * gate.norm(dim=1)
        torch.testing.assert_close(scores.heads[index], heads)
        torch.testing.assert_close(scores.mlp[index], salience.pow(2))


def test_taylor_needs_labelled_batches(calibration_batches):
    with pytest.raises(TypeError, match="labelled batches"):
        unit_scores(make_classifier(), "taylor", calibration_batches)


def test_unknown_importance_names_the_key():
    with pytest.raises(ValueError, match="compress.importance must be one of energy, taylor, activation"):
        CompressionPlan(importance="magnitude")


def test_data_aware_plan_without_calibration_says_what_it_needs():
    with pytest.raises(ValueError, match="compress.importance='activation' needs scores"):
        compress_model(make_model(), CompressionPlan(tau_heads=0.5, importance="activation"))


def test_precomputed_scores_give_the_same_model_as_batches(labelled_batches, pixels, tmp_path):
    model = make_classifier()
    plan = CompressionPlan(tau_heads=0.6, tau_mlp=0.6, importance="taylor", allocation="global")
    save_unit_scores(unit_scores(model, "taylor", labelled_batches), str(tmp_path / "scores.pt"))
    from_batches, report_a = compress_model(model, plan, calibration=labelled_batches)
    from_cache, report_b = compress_model(model, plan, scores=load_unit_scores(str(tmp_path / "scores.pt")))
    assert [d.kept_indices for d in report_a.heads + report_a.mlp] == \
        [d.kept_indices for d in report_b.heads + report_b.mlp]
    assert report_a.params_after < report_a.params_before
    torch.testing.assert_close(from_batches(pixels), from_cache(pixels))


def test_scores_of_another_importance_are_refused(calibration_batches):
    model = make_model()
    with pytest.raises(ValueError, match="scores are 'activation' scores"):
        compress_model(model, CompressionPlan(tau_heads=0.5, importance="taylor"),
                       scores=unit_scores(model, "activation", calibration_batches))
