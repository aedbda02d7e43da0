"""The runtime a trial's model is scored and timed on (eval.runtime): eager PyTorch, or ONNX Runtime.

With onnxruntime, the float model (before compress.quant) is exported to ONNX in a temporary
folder; int8 goes through ONNX Runtime's own dynamic quantizer (int8 weights, per-tensor, its
MatMul/Gemm kernels), since the torch int8 model does not export. The session (CPU provider,
the trial's torch thread count) is wrapped as an nn.Module, so the evaluation and latency code
runs it as it runs a PyTorch model: the AUROC is the AUROC of the model that was timed.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


class OrtModel(nn.Module):
    """An ONNX Runtime session as a module: float32 pixels in, float32 logits out, on the CPU."""

    def __init__(self, session, quant: str, onnx_bytes: bytes):
        super().__init__()
        self.session, self.quant = session, quant
        self.onnx_bytes = onnx_bytes   # the model the session runs (int8: as ONNX Runtime quantized it)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        from compress.onnx_export import run_onnx

        return torch.from_numpy(run_onnx(self.session, pixels.float())).to(pixels.device)


def onnxruntime_model(float_model: nn.Module, quant: str, image_size: int, *, threads: int) -> OrtModel:
    """Return `float_model` exported to ONNX (int8: then quantized by ONNX Runtime) in an ORT session."""
    from compress.onnx_export import export_onnx, onnx_session

    with tempfile.TemporaryDirectory(prefix="vitsweep-ort-") as folder:
        path = export_onnx(float_model, Path(folder) / "model.onnx", image_size)
        if quant == "int8":
            path = quantize_onnx_int8(path, Path(folder) / "model.int8.onnx")
        session = onnx_session(path, threads=threads)  # the session holds the model; the files can go
        return OrtModel(session, quant, path.read_bytes())


def quantize_onnx_int8(source: Path, target: Path) -> Path:
    """Write ONNX Runtime's dynamic int8 quantization of the model at `source` to `target`; return `target`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The exporter's value_info keeps shapes seen while tracing (batch 2); ONNX Runtime's quantizer
    # re-infers shapes and refuses where they differ, so it infers them afresh from the inputs.
    model = onnx.load(str(source))
    del model.graph.value_info[:]
    onnx.save(model, str(source))
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return target


def runtime_model(model: nn.Module, float_model: nn.Module, runtime: str, quant: str, image_size: int,
                  *, threads: int | None = None) -> nn.Module:
    """Return what `runtime` scores and times: `model` itself (torch) or an OrtModel of `float_model` whose
    session runs `threads` intra-op threads (default: torch's, as the trial times PyTorch with)."""
    if runtime == "torch":
        return model
    log.info("exporting the trial's model to ONNX Runtime (quant %s)", quant)
    return onnxruntime_model(float_model, quant, image_size, threads=threads or torch.get_num_threads())


def check_runtime_device(runtime: str, device: torch.device) -> None:
    """Raise ValueError (one line) when `runtime` cannot time on `device` (ONNX Runtime: the CPU provider only)."""
    if runtime == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"eval.runtime=onnxruntime times on ONNX Runtime's CPU provider, but the trial runs on "
                         f"{device.type}; set run.device=cpu or eval.runtime=torch")
