"""compress.quant: int8 and bf16 post-training quantization, its byte count, its storable state."""

import json

import pytest
import torch
from sklearn.metrics import roc_auc_score
from tiny_vit import TinyClassifier, make_classifier, tiny_config
from torch import nn

from compress import CompressionPlan, count_params, enable_token_pruning, load_compressed, save_compressed
from compress.quant import (
    check_quant_device, load_storable_state, model_bytes, quant_mode, quantize_model, quantized_linears,
    storable_state,
)
from compress.tokens import token_pruning_settings

# int8 may move the AUROC of the tiny random-init classifier by at most this much on 512 images
# (measured 0.002-0.004 over three seeds; the steep shaped spectra of make_classifier move it ~0.05).
INT8_AUROC_TOLERANCE = 0.02


def test_int8_quantizes_every_linear(classifier):
    linears = sum(isinstance(module, nn.Linear) for module in classifier.modules())
    quantized = quantize_model(classifier, "int8")
    assert len(quantized_linears(quantized)) == linears
    assert not any(isinstance(module, nn.Linear) for module in quantized.modules())


def test_int8_keeps_the_parameter_count(classifier):
    assert count_params(quantize_model(classifier, "int8")) == count_params(classifier)


def test_int8_stores_a_quarter_of_the_linear_weight_bytes():
    stack = nn.Sequential(*(nn.Linear(256, 256, bias=False) for _ in range(3)))
    ratio = model_bytes(quantize_model(stack, "int8")) / model_bytes(stack)
    assert 0.25 <= ratio < 0.251  # 1 byte a weight for 4, plus one scale and zero point per layer


def test_int8_auroc_stays_within_tolerance_of_fp32():
    torch.manual_seed(0)
    model = TinyClassifier(tiny_config()).eval()
    pixels = torch.randn(512, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(pixels)
        quantized_logits = quantize_model(model, "int8")(pixels)
    score = logits[:, 0] - logits[:, 1]
    noise = torch.randn(512, generator=torch.Generator().manual_seed(4)) * score.std()
    labels = (score + noise > (score + noise).median()).numpy()  # fp32 ranks these well, not perfectly
    fp32 = roc_auc_score(labels, score.numpy())
    int8 = roc_auc_score(labels, (quantized_logits[:, 0] - quantized_logits[:, 1]).numpy())
    assert 0.7 < fp32 < 1.0
    assert abs(int8 - fp32) <= INT8_AUROC_TOLERANCE


def test_bf16_stores_bf16_weights_and_keeps_float32_inputs_and_outputs(classifier, pixels):
    quantized = quantize_model(classifier, "bf16")
    assert {param.dtype for param in quantized.parameters()} == {torch.bfloat16}
    assert model_bytes(quantized) * 2 == model_bytes(classifier)
    with torch.no_grad():
        out = quantized(pixels)
        assert out.dtype == torch.float32
        assert torch.allclose(out, classifier.eval()(pixels), atol=0.05)


def test_none_is_the_model_itself(classifier):
    assert quantize_model(classifier, "none") is classifier


@pytest.mark.parametrize("mode", ["none", "int8", "bf16"])
def test_the_mode_is_read_back_from_the_model(classifier, mode):
    assert quant_mode(quantize_model(classifier, mode)) == mode


def test_token_pruning_survives_quantization(classifier, pixels):
    enable_token_pruning(classifier, 0.5, 1.0)
    quantized = quantize_model(classifier, "int8")
    assert token_pruning_settings(quantized.backbone) == token_pruning_settings(classifier.backbone)


def test_storable_state_loads_the_int8_weights_as_stored(classifier, pixels):
    quantized = quantize_model(classifier, "int8")
    other = quantize_model(make_classifier(seed=5), "int8")
    state = storable_state(quantized)
    assert all(not isinstance(tensor, tuple) for tensor in state.values())
    load_storable_state(other, state)
    with torch.no_grad():
        assert torch.equal(other(pixels), quantized(pixels))


def test_an_unknown_mode_is_one_line():
    with pytest.raises(ValueError, match=r"^compress.quant must be one of none, int8, bf16, got 'int4'$"):
        CompressionPlan(quant="int4")


def test_int8_on_cuda_is_refused_in_one_line():
    with pytest.raises(ValueError) as refused:
        check_quant_device("int8", "cuda")
    assert "compress.quant=int8" in str(refused.value) and "\n" not in str(refused.value)
    check_quant_device("int8", "cpu")


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_a_quantized_model_saves_and_loads_as_it_ran(classifier, pixels, tmp_path, mode):
    enable_token_pruning(classifier, 0.5, 1.0)
    quantized = quantize_model(classifier, mode)
    save_compressed(quantized, tmp_path, image_size=32)
    loaded = load_compressed(tmp_path)
    assert json.loads((tmp_path / "structure.json").read_text())["quant"] == mode
    assert quant_mode(loaded) == mode and token_pruning_settings(loaded.backbone) is not None
    with torch.no_grad():
        assert torch.equal(loaded(pixels), quantized(pixels))


def test_int8_weights_are_stored_as_one_byte_each(classifier, tmp_path):
    save_compressed(quantize_model(classifier, "int8"), tmp_path / "int8")
    save_compressed(classifier, tmp_path / "fp32")
    stored = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("int8", "fp32")}
    assert stored["int8"] < 0.45 * stored["fp32"]
