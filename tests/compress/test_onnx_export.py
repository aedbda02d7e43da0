"""ONNX export: parity with PyTorch in ONNX Runtime (token pruning included), and a one-line error."""

import onnxruntime  # noqa: F401  (the export extra is part of the dev install: a missing one fails here)
import pytest
import torch
from tiny_vit import shape_spectra, tiny_config
from transformers import DINOv3ViTModel

from compress import CompressionPlan, compress_model
from compress.classifier import ViTClassifier
from compress.onnx_export import OnnxExportError, export_onnx, onnx_max_abs_difference, onnx_session, run_onnx


@pytest.mark.slow
def test_compressed_token_pruned_model_matches_pytorch_in_onnx_runtime(tmp_path):
    torch.manual_seed(0)
    model = ViTClassifier(DINOv3ViTModel(tiny_config()), num_classes=2).eval()
    shape_spectra(model.backbone)
    plan = CompressionPlan(tau_heads=0.7, tau_mlp=0.8, tau_svd=0.8, r_max=0.5, alpha=1.0)
    compressed, report = compress_model(model, plan)
    assert report.tokens["schedule"][-1] < 16
    session = onnx_session(export_onnx(compressed, tmp_path / "m.onnx", 32), threads=1)
    for batch in (1, 5):  # the batch dimension is dynamic
        pixels = torch.randn(batch, 3, 32, 32)
        assert run_onnx(session, pixels).shape == (batch, 2)
        assert onnx_max_abs_difference(compressed, session, pixels) <= 1e-4


class _Spectrum(torch.nn.Module):
    """A module using an operator (SVD) that has no ONNX translation."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, pixels):
        return torch.linalg.svdvals(pixels.flatten(2)) * self.scale


def test_an_operator_without_onnx_translation_fails_with_one_line_naming_it(tmp_path):
    with pytest.raises(OnnxExportError) as caught:
        export_onnx(_Spectrum(), tmp_path / "m.onnx", 8)
    message = str(caught.value)
    assert "\n" not in message
    assert "aten._linalg_svd" in message
    assert not (tmp_path / "m.onnx").exists()
