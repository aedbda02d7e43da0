"""Parameter counting."""

from torch import nn

from compress.quant import quantized_param_count


def count_params(model: nn.Module) -> int:
    """Return the number of distinct parameter elements of `model` (shared tensors counted once),
    the weights and biases of dynamic int8 Linears included (compress.quant: they hold no nn.Parameter)."""
    return sum(param.numel() for param in model.parameters()) + quantized_param_count(model)
