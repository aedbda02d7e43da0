"""ONNX export of a (compressed) model at a fixed image size with a dynamic batch, checked in ONNX Runtime.

Needs the optional `export` extra (onnx, onnxscript, onnxruntime). Token pruning exports as it
runs: at a fixed image size its schedule is static, so every layer's top-k has a constant k.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
_EXTRA = "install the export extra: pip install -e '.[export]'"
# How torch.onnx's exporter names the node it could not translate.
_OP_PATTERNS = (re.compile(r"target=torch\.ops\.([\w.]+)"), re.compile(r"op='([\w.]+)'"))


class OnnxExportError(RuntimeError):
    """The model (or one of its operators) does not export to ONNX."""


def export_onnx(model: nn.Module, path: str | Path, image_size: int, *, channels: int = 3) -> Path:
    """Write `model` as ONNX to `path` for (batch, channels, image_size, image_size) float inputs; return the path.

    The batch dimension is dynamic. Raises OnnxExportError with one line naming the
    operator when one has no ONNX translation.
    """
    _require("onnxscript")
    path = Path(path)
    dtype = next(model.parameters()).dtype
    # Batch 2, not 1: torch.export specialises a dimension whose example size is 1.
    example = torch.randn(2, channels, image_size, image_size, dtype=dtype)
    # Export a copy: tracing leaves state on the module that made later PyTorch forwards of the
    # same object ~2x slower here, which would bias the latency comparison that follows.
    model = copy.deepcopy(model).eval()
    try:
        torch.onnx.export(
            model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
            external_data=False,  # one self-contained file (fine below ONNX's 2 GB limit: ViT-B is 0.35 GB)
        )
    except Exception as error:  # the exporter raises many types; all end in one line here
        raise OnnxExportError(_one_line(error)) from error
    if not path.is_file():
        raise OnnxExportError(f"torch.onnx.export wrote no file at {path}")
    return path


def onnx_session(path: str | Path, threads: int = 1):
    """Return an onnxruntime InferenceSession on the CPU provider with `threads` intra-op threads."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, pixels: torch.Tensor) -> np.ndarray:
    """Return the session's logits for a batch of pixels."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: pixels.detach().cpu().numpy()})[0]


@torch.no_grad()
def onnx_max_abs_difference(model: nn.Module, session, pixels: torch.Tensor) -> float:
    """Return max |torch logits - ONNX Runtime logits| over a batch of pixels."""
    expected = model.eval()(pixels).float().cpu().numpy()
    return float(np.max(np.abs(run_onnx(session, pixels) - expected)))


def _one_line(error: BaseException) -> str:
    """Return what failed in one line: the operator with no ONNX translation when one is named."""
    text = "\n".join(str(e) for e in _chain(error))
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            return (f"ONNX export failed: operator {match.group(1)} has no ONNX translation "
                    f"(torch {torch.__version__}); exporting without --onnx still works")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"ONNX export failed: {first}"


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"ONNX export needs the {module} package: {_EXTRA}") from None
