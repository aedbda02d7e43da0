"""ONNX export of a model whose operator has no translation: one line naming it.

Parity with PyTorch in ONNX Runtime (compressed, token-pruned, dynamic batch) is checked end to end
in tests/tune/test_export.py."""

import onnxruntime  # noqa: F401  (the export extra is part of the dev install: a missing one fails here)
import numpy as np
import pytest
import torch

from compress.onnx_export import OnnxExportError, export_onnx


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


def test_onnx_of_a_temperature_scaled_model_returns_the_calibrated_logits(classifier, pixels, tmp_path):
    from compress import TemperatureScaled
    from compress.onnx_export import onnx_session, run_onnx

    path = export_onnx(TemperatureScaled(classifier, 3.0), tmp_path / "t.onnx", 32)
    with torch.no_grad():
        raw = classifier(pixels).numpy()
    exported = run_onnx(onnx_session(path), pixels)
    assert np.allclose(exported, raw / 3.0, atol=1e-5) and not np.allclose(exported, raw, atol=1e-3)
