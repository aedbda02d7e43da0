"""Linear layers after surgery: the two-factor LowRankLinear and row/column slicing of either kind."""

import torch
from torch import nn
from torch.nn.utils import skip_init


class LowRankLinear(nn.Module):
    """y = expand(reduce(x)): a rank-r factorisation of an (out x in) Linear, bias kept on `expand`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.reduce = skip_init(nn.Linear, in_features, rank, bias=False, device=device, dtype=dtype)
        self.expand = skip_init(nn.Linear, rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_factors(
        cls, reduce_weight: torch.Tensor, expand_weight: torch.Tensor, bias: torch.Tensor | None
    ) -> "LowRankLinear":
        """Return a LowRankLinear with W ~= expand_weight @ reduce_weight and the given bias."""
        rank, in_features = reduce_weight.shape
        module = cls(
            in_features,
            expand_weight.shape[0],
            rank,
            bias=bias is not None,
            device=expand_weight.device,
            dtype=expand_weight.dtype,
        )
        with torch.no_grad():
            module.reduce.weight.copy_(reduce_weight)
            module.expand.weight.copy_(expand_weight)
            if bias is not None:
                module.expand.bias.copy_(bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def dense_weight(module: nn.Module) -> torch.Tensor:
    """Return the (out x in) weight a Linear or LowRankLinear applies (a product for the latter)."""
    if isinstance(module, LowRankLinear):
        return module.expand.weight @ module.reduce.weight
    if isinstance(module, nn.Linear):
        return module.weight
    raise TypeError(f"expected nn.Linear or LowRankLinear, got {type(module).__name__}")


def linear_bias(module: nn.Module) -> torch.Tensor | None:
    """Return the output bias of a Linear or LowRankLinear (None when it has none)."""
    return module.expand.bias if isinstance(module, LowRankLinear) else module.bias


def keep_outputs(module: nn.Module, index: torch.Tensor) -> nn.Module:
    """Return a new module computing only the output features `index` (rows of W and of the bias)."""
    index = index.to(dense_device(module))
    with torch.no_grad():
        if isinstance(module, LowRankLinear):
            bias = None if module.expand.bias is None else module.expand.bias[index]
            return LowRankLinear.from_factors(module.reduce.weight, module.expand.weight[index], bias)
        bias = None if module.bias is None else module.bias[index]
        return _linear_from(module.weight[index], bias, module.weight.requires_grad)


def keep_inputs(module: nn.Module, index: torch.Tensor) -> nn.Module:
    """Return a new module reading only the input features `index` (columns of W; bias unchanged)."""
    index = index.to(dense_device(module))
    with torch.no_grad():
        if isinstance(module, LowRankLinear):
            return LowRankLinear.from_factors(module.reduce.weight[:, index], module.expand.weight, module.expand.bias)
        return _linear_from(module.weight[:, index], module.bias, module.weight.requires_grad)


def dense_device(module: nn.Module) -> torch.device:
    """Return the device holding the weights of a Linear or LowRankLinear."""
    return (module.expand if isinstance(module, LowRankLinear) else module).weight.device


def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None, requires_grad: bool) -> nn.Linear:
    out_features, in_features = weight.shape
    layer = skip_init(
        nn.Linear, in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    layer.weight.data.copy_(weight)
    layer.weight.requires_grad_(requires_grad)
    if bias is not None:
        layer.bias.data.copy_(bias)
        layer.bias.requires_grad_(requires_grad)
    return layer
