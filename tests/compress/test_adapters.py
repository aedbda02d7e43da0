import pytest
from tiny_vit import make_model
from torch import nn

from compress.adapters import adapter_for, adapter_named


def test_finds_layers_in_forward_order_inside_a_wrapper(classifier):
    names = [name for name, _ in adapter_for(classifier).layers(classifier)]
    assert names == ["backbone.model.layer.0", "backbone.model.layer.1"]


def test_gate_role_is_absent_from_a_plain_mlp(model):
    adapter = adapter_for(model)
    assert adapter.linear(model.model.layer[0], "gate") is None


def test_gate_role_is_found_in_a_gated_mlp():
    model = make_model(gated=True, shaped=False)
    adapter = adapter_for(model)
    assert adapter.linear(model.model.layer[0], "gate") is model.model.layer[0].mlp.gate_proj


def test_rejects_module_without_supported_layers_naming_the_argument():
    with pytest.raises(TypeError, match="net must contain transformer layers"):
        adapter_for(nn.Linear(2, 2), argument="net")


def test_rejects_a_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        adapter_for("vit")


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="unknown model family 'swin'"):
        adapter_named("swin")
