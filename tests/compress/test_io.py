import json

import pytest
import torch
from tiny_vit import make_model

from compress import (
    CompressionPlan,
    LowRankLinear,
    TemperatureScaled,
    TokenPlan,
    compress_model,
    load_compressed,
    prune_attention_heads,
    save_compressed,
)


def _compressed(model):
    compressed, _ = compress_model(model, CompressionPlan(tau_heads=0.6, tau_mlp=0.7, tau_svd=0.7))
    return compressed


def test_bare_backbone_round_trip_gives_identical_outputs(model, pixels, tmp_path):
    compressed = _compressed(model)
    loaded = load_compressed(save_compressed(compressed, tmp_path / "m"))
    assert torch.equal(loaded(pixels).last_hidden_state, compressed(pixels).last_hidden_state)


def test_wrapper_round_trip_rebuilds_through_from_spec(classifier, pixels, tmp_path):
    compressed = _compressed(classifier)
    loaded = load_compressed(save_compressed(compressed, tmp_path / "c"))
    assert type(loaded) is type(classifier)
    assert torch.equal(loaded(pixels), compressed(pixels))


def test_loaded_model_has_the_saved_structure(model, tmp_path):
    compressed = _compressed(model)
    loaded = load_compressed(save_compressed(compressed, tmp_path / "m"))
    for saved, rebuilt in zip(compressed.model.layer, loaded.model.layer):
        assert rebuilt.attention.num_heads == saved.attention.num_heads
        assert rebuilt.mlp.up_proj.out_features == saved.mlp.up_proj.out_features
        for name in ("q_proj", "o_proj"):
            module = getattr(rebuilt.attention, name)
            assert isinstance(module, LowRankLinear) == isinstance(getattr(saved.attention, name), LowRankLinear)


def test_dtype_survives_the_round_trip(pixels, tmp_path):
    model = make_model(dtype=torch.bfloat16)
    prune_attention_heads(model, 0.6)
    loaded = load_compressed(save_compressed(model, tmp_path / "m"))
    assert loaded.model.layer[0].attention.q_proj.weight.dtype == torch.bfloat16
    assert torch.equal(loaded(pixels.bfloat16()).pooler_output, model(pixels.bfloat16()).pooler_output)


def test_token_pruning_is_re_enabled_on_load(model, pixels, tmp_path):
    compressed, _ = compress_model(model, CompressionPlan(tau_heads=0.8), tokens=TokenPlan(r_max=0.5))
    loaded = load_compressed(save_compressed(compressed, tmp_path / "m"))
    assert torch.equal(loaded(pixels).last_hidden_state, compressed(pixels).last_hidden_state)
    assert loaded(pixels).last_hidden_state.shape[1] < model(pixels).last_hidden_state.shape[1]


def test_structure_that_does_not_match_the_weights_names_file_and_key(model, tmp_path):
    prune_attention_heads(model, 0.6)
    directory = save_compressed(model, tmp_path / "m")
    structure = json.loads((directory / "structure.json").read_text())
    structure["layers"][0]["num_heads"] = 4
    (directory / "structure.json").write_text(json.dumps(structure))
    with pytest.raises(ValueError, match=r"model\.safetensors does not match.*model\.layer\.0\.attention\.\w_proj"):
        load_compressed(directory)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="structure.json"):
        load_compressed(tmp_path / "nothing")


def test_wrapper_without_spec_protocol_cannot_be_saved(model, tmp_path):
    wrapper = torch.nn.Sequential(model)
    with pytest.raises(TypeError, match=r"must provide spec\(\) -> dict and a classmethod from_spec"):
        save_compressed(wrapper, tmp_path / "s")


def test_fused_token_pruning_survives_save_and_load(tmp_path):
    from compress import enable_token_pruning
    from compress.tokens import token_pruning_settings

    model = make_model()
    enable_token_pruning(model, 0.5, 1.0, fuse=True)
    loaded = load_compressed(save_compressed(model, tmp_path / "m"))
    assert token_pruning_settings(loaded)["fuse"] is True
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).last_hidden_state, loaded(x).last_hidden_state)


def test_a_saved_temperature_divides_the_logits_unless_raw_ones_are_asked_for(classifier, pixels, tmp_path):
    folder = save_compressed(classifier, tmp_path / "t", temperature=2.5)
    calibrated, raw = load_compressed(folder), load_compressed(folder, calibrated=False)
    with torch.no_grad():
        expected = classifier(pixels)
        assert torch.allclose(calibrated(pixels), expected / 2.5, atol=1e-6)
        assert torch.equal(raw(pixels), expected)
    assert isinstance(calibrated, TemperatureScaled) and type(raw) is type(classifier)


def test_a_save_without_a_temperature_loads_as_temperature_one(classifier, pixels, tmp_path):
    folder = save_compressed(classifier, tmp_path / "old")  # what every export before temperatures wrote
    assert "temperature" not in json.loads((folder / "structure.json").read_text())
    loaded = load_compressed(folder)
    assert type(loaded) is type(classifier) and torch.equal(loaded(pixels), classifier(pixels))


def test_a_temperature_scaled_model_saves_its_temperature(classifier, pixels, tmp_path):
    loaded = load_compressed(save_compressed(TemperatureScaled(classifier, 0.7), tmp_path / "w"))
    assert loaded.temperature == 0.7 and torch.allclose(loaded(pixels), classifier(pixels) / 0.7, atol=1e-6)


def test_an_invalid_recorded_temperature_names_the_file(classifier, tmp_path):
    folder = save_compressed(classifier, tmp_path / "bad", temperature=2.0)
    structure = json.loads((folder / "structure.json").read_text())
    (folder / "structure.json").write_text(json.dumps({**structure, "temperature": -1}))
    with pytest.raises(ValueError, match=r"structure.json: temperature must be a finite number > 0, got -1"):
        load_compressed(folder)
