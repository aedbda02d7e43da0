"""ONNX export of a model whose operator has no translation: one line naming it.

Parity with PyTorch in ONNX Runtime (compressed, token-pruned, dynamic batch) is checked end to end
in tests/tune/test_export.py."""

import onnxruntime  # noqa: F401  (the export extra is part of the dev install: a missing one fails here)
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
