"""Post-training quantization, the last step of a compressed model: dynamic int8 Linears or bf16 weights.

    none   the model as it is (fp32)
    int8   every nn.Linear (LowRankLinear's two factors included) becomes a dynamic int8 Linear:
           int8 weights with one fp32 scale each (per-tensor, symmetric), activations quantized
           on the fly per batch. torch.ao.quantization.quantize_dynamic (fbgemm/x86 kernels):
           CPU only. torchao 0.18's Int8DynamicActivationInt8WeightConfig was ~3x slower in eager
           mode on this CPU (a ViT-S MLP block, one thread: torch.ao 3.8 ms, torchao 9.7 ms,
           fp32 11.9 ms), so torch.ao it is, though its quantized-tensor API warns it is deprecated.
    bf16   every floating parameter and buffer in bfloat16; the model still takes and returns
           float32 (a cast at the input and the output), so callers feed it the same pixels.

A mode is applied after every structural step (heads, MLP, SVD, recovery fine-tune, token
pruning): a quantized model is for inference, no surgery or training after it.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from compress.config import check_quant

# What each device type can run; fp8 is not offered (no CPU kernel, and none checked on a GPU here).
DEVICE_MODES = {"cpu": ("none", "int8", "bf16"), "cuda": ("none", "bf16"), "mps": ("none", "bf16")}
_WHY_NOT = {"int8": "torch.ao dynamic int8 has CPU kernels only"}


def check_quant_device(mode: str, device: str | torch.device) -> None:
    """Raise ValueError (one line) when `device` cannot run quantization `mode`."""
    kind = torch.device(device).type
    allowed = DEVICE_MODES.get(kind, ("none",))
    if mode == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        allowed = ("none",)
    if mode not in allowed:
        reason = _WHY_NOT.get(mode, f"this {kind} device does not run it")
        raise ValueError(f"compress.quant={mode} cannot run on {kind} ({reason}); "
                         f"on {kind} use one of {', '.join(allowed)}, or set run.device=cpu")


def quantize_model(model: nn.Module, mode: str) -> nn.Module:
    """Return `model` quantized as `mode` (a new module for int8 and bf16, `model` itself for none), in eval mode."""
    check_quant(mode)
    if mode == "none":
        return model
    quantized = copy.deepcopy(model).eval()
    if mode == "int8":
        with warnings.catch_warnings():  # torch.ao's deprecation notices, one per module otherwise
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            return torch.ao.quantization.quantize_dynamic(quantized, {nn.Linear}, dtype=torch.qint8, inplace=True)
    quantized.to(torch.bfloat16)
    quantized.register_forward_pre_hook(_inputs_to_bf16)
    quantized.register_forward_hook(_output_to_float32)
    return quantized


def quant_mode(model: nn.Module) -> str:
    """Return the QUANT_MODES entry `model` was quantized with (read from its modules and dtypes)."""
    if any(isinstance(module, _DynamicLinear) for module in model.modules()):
        return "int8"
    if any(param.dtype == torch.bfloat16 for param in model.parameters()):
        return "bf16"
    return "none"


def quantized_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return (name, module) of every dynamic int8 Linear in `model`."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, _DynamicLinear)]


def quantized_param_count(model: nn.Module) -> int:
    """Return the weight and bias elements of the dynamic int8 Linears (they hold no nn.Parameter)."""
    count = 0
    for _, module in quantized_linears(model):
        weight, bias = module._weight_bias()
        count += weight.numel() + (bias.numel() if bias is not None else 0)
    return count


def model_bytes(model: nn.Module) -> int:
    """Return the bytes of `model`'s weights as stored: each parameter's elements x its element size,
    plus, per int8 Linear, 1 byte a weight + its scale and zero point (4 + 8 bytes) + its fp32 bias."""
    total = sum(param.numel() * param.element_size() for param in model.parameters())
    for _, module in quantized_linears(model):
        weight, bias = module._weight_bias()
        total += weight.numel() + 12 + (bias.numel() * bias.element_size() if bias is not None else 0)
    return total


def storable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return `model`'s state as plain tensors: an int8 Linear `name` becomes name.weight (int8),
    name.weight_scale (float64[1]), name.weight_zero_point (int64[1]) and name.bias (if any)."""
    linears = dict(quantized_linears(model))
    state = {name: tensor for name, tensor in model.state_dict().items()
             if not any(name.startswith(f"{prefix}.") for prefix in linears)}
    for name, module in linears.items():
        weight, bias = module._weight_bias()
        state[f"{name}.weight"] = weight.int_repr()
        state[f"{name}.weight_scale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
        state[f"{name}.weight_zero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
        if bias is not None:
            state[f"{name}.bias"] = bias
    return {name: tensor.detach().contiguous() for name, tensor in state.items()}


def load_storable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what storable_state wrote into `model` (quantized the same way); int8 weights are set as stored."""
    linears = dict(quantized_linears(model))
    plain = dict(state)
    for name, module in linears.items():
        values = plain.pop(f"{name}.weight")
        scale = float(plain.pop(f"{name}.weight_scale")[0])
        zero_point = int(plain.pop(f"{name}.weight_zero_point")[0])
        bias = plain.pop(f"{name}.bias", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            weight = torch._make_per_tensor_quantized_tensor(values, scale, zero_point)
        module.set_weight_bias(weight, None if bias is None else bias.float())
    # The int8 Linears load their own (just set) entries; every other key comes from `state`.
    full = model.state_dict()  # updated in place: its _metadata tells the int8 Linears their format
    full.update(plain)
    model.load_state_dict(full, assign=True)


_DynamicLinear = torch.ao.nn.quantized.dynamic.Linear


def _inputs_to_bf16(module: nn.Module, args: tuple) -> tuple:
    return tuple(arg.to(torch.bfloat16) if torch.is_tensor(arg) and arg.is_floating_point() else arg for arg in args)


def _output_to_float32(module: nn.Module, args: tuple, output):
    return output.float() if torch.is_tensor(output) else output
