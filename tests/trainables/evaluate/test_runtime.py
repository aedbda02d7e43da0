"""trainables.evaluate.runtime: the model a trial scores and times on eval.runtime."""

import pytest
import torch

from compress.quant import quantize_model
from trainables.config import TrialConfig
from trainables.evaluate.runtime import OrtModel, check_runtime_device, runtime_model
from trainables.model import build_classifier

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def classifier():
    cfg = TrialConfig.from_flat({})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_classifier(cfg.model.backbone, 2, None, cfg.model.pooling).eval()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_torch_runtime_is_the_model_itself(classifier):
    assert runtime_model(classifier, classifier, "torch", "none", 32) is classifier


def test_onnxruntime_fp32_gives_the_torch_logits_with_the_trials_threads(classifier, pixels):
    ort = runtime_model(classifier, classifier, "onnxruntime", "none", 32, threads=1)
    assert isinstance(ort, OrtModel)
    assert ort.session.get_session_options().intra_op_num_threads == 1
    with torch.no_grad():
        assert torch.allclose(ort(pixels), classifier(pixels), atol=1e-4)


def test_onnxruntime_int8_is_quantized_by_onnx_runtime(classifier, pixels):
    ort = runtime_model(quantize_model(classifier, "int8"), classifier, "onnxruntime", "int8", 32, threads=1)
    with torch.no_grad():
        float_logits, int8_logits = classifier(pixels), ort(pixels)
    assert any(node.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul")
               for node in _graph(ort).node)
    assert not torch.equal(int8_logits, float_logits)
    assert (int8_logits - float_logits).abs().max() < 0.25 * float_logits.abs().max()


def test_onnxruntime_on_cuda_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^eval.runtime=onnxruntime [^\n]*run.device=cpu"):
        check_runtime_device("onnxruntime", torch.device("cuda"))


def _graph(ort: OrtModel):
    import onnx

    return onnx.load_from_string(ort.onnx_bytes).graph


def test_latency_rel_on_onnxruntime_divides_by_the_reference_in_onnx_runtime():
    from trainables.evaluate.evaluation import reference_model

    cfg = TrialConfig.from_flat({"eval.runtime": "onnxruntime", "eval.latency_rel": True})
    reference = reference_model(cfg, torch.device("cpu"))
    assert isinstance(reference, OrtModel) and reference.quant == "none"
    assert reference_model(cfg, torch.device("cpu")) is reference  # exported once per process
