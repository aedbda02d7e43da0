"""Input second moments of linear layers from calibration data, and their whitening factors."""

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compress.adapters import adapter_for
from compress.config import DEFAULT_DAMPING
from compress.targets import check_targets

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class WhiteningFactor:
    """A square root L of a second moment, S + delta*I ~= L L^T, with right-division by L."""

    factor: torch.Tensor
    method: str
    damping: float
    _eigenvalues_sqrt: torch.Tensor | None = field(default=None, repr=False)
    _eigenvectors: torch.Tensor | None = field(default=None, repr=False)

    def solve_right(self, rhs: torch.Tensor) -> torch.Tensor:
        """Return rhs @ L^{-1} (triangular solve for Cholesky, diag(1/sqrt(lambda)) Q^T for eigen)."""
        if self.method == "eigen":
            return (rhs / self._eigenvalues_sqrt) @ self._eigenvectors.T
        return torch.linalg.solve_triangular(self.factor, rhs, upper=False, left=False)


def whitening_factor(second_moment: torch.Tensor, damping: float = DEFAULT_DAMPING) -> WhiteningFactor:
    """Return L with S + delta*I = L L^T, delta = damping * mean(diag S), in float64.

    Cholesky first; when S + delta*I is not positive definite (rank deficiency with
    damping 0, or rounding), fall back to the eigen decomposition S = Q diag(lambda) Q^T
    with lambda clamped below at max(delta, 1e-12 * max lambda) and L = Q diag(sqrt(lambda)).
    """
    moment = second_moment.detach().to(torch.float64)
    moment = (moment + moment.T) / 2
    scale = moment.diagonal().mean().clamp_min(0).item()
    delta = damping * scale
    shifted = moment + delta * torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)
    factor, info = torch.linalg.cholesky_ex(shifted)
    if int(info) == 0:
        return WhiteningFactor(factor=factor, method="cholesky", damping=delta)
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)
    floor = max(delta, 1e-12 * max(eigenvalues.max().item(), 0.0), torch.finfo(torch.float64).tiny)
    roots = eigenvalues.clamp_min(floor).sqrt()
    logger.debug("second moment of size %d is not positive definite; using the eigen fallback", moment.shape[0])
    return WhiteningFactor(
        factor=eigenvectors * roots,
        method="eigen",
        damping=floor,
        _eigenvalues_sqrt=roots,
        _eigenvectors=eigenvectors,
    )


@dataclass(eq=False)
class InputStats:
    """S = X^T X / n for one linear's inputs (float64, CPU) and the number of rows n it averages."""

    second_moment: torch.Tensor
    num_samples: int
    _factors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def whitening(self, damping: float = DEFAULT_DAMPING) -> WhiteningFactor:
        """Return the (memoised) whitening factor of this second moment."""
        if damping not in self._factors:
            self._factors[damping] = whitening_factor(self.second_moment, damping)
        return self._factors[damping]

    def factor_as(self, dtype: torch.dtype, device: torch.device, damping: float = DEFAULT_DAMPING) -> torch.Tensor:
        """Return L in `dtype` on `device` (memoised, no grad) for use inside a training loss."""
        key = (damping, dtype, torch.device(device))
        if key not in self._factors:
            self._factors[key] = self.whitening(damping).factor.to(dtype=dtype, device=device)
        return self._factors[key]

    def restricted(self, index: torch.Tensor | list[int]) -> "InputStats":
        """Return the statistics of the input features `index` only: S[index][:, index]."""
        index = torch.as_tensor(index, dtype=torch.long)
        return InputStats(self.second_moment[index][:, index].clone(), self.num_samples)

    def to_dict(self) -> dict[str, Any]:
        """Return a dict of a tensor and an int that torch.save / torch.load(weights_only=True) round-trip."""
        return {"second_moment": self.second_moment, "num_samples": self.num_samples}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "InputStats":
        """Return the InputStats written by to_dict."""
        moment = record["second_moment"]
        if not isinstance(moment, torch.Tensor) or moment.ndim != 2 or moment.shape[0] != moment.shape[1]:
            raise ValueError("InputStats record must hold a square 'second_moment' tensor")
        return cls(moment.to(torch.float64), int(record["num_samples"]))


def target_linears(model: nn.Module, targets: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """Return {qualified name: linear} of the model's target roles (compress.targets), layer by layer."""
    adapter = adapter_for(model)
    roles = check_targets("targets", targets)
    return {f"{name}.{adapter.linear_path(role)}": module
            for name, layer in adapter.layers(model) for role in roles
            if (module := adapter.linear(layer, role)) is not None}


def collect_input_stats(
    model: nn.Module, batches: Iterable[Any], targets: Iterable[str] | None = None
) -> dict[str, InputStats]:
    """Return {qualified linear name: InputStats} with S = sum_batches X^T X / n over the targets' inputs.

    `batches` yields pixel tensors, (pixels, labels) pairs or dicts with 'pixel_values'. The model
    runs in eval mode under no_grad; its training flag is restored afterwards. Linears that see the
    same input tensor (q, k, v) share one accumulation and one InputStats object.
    """
    modules = target_linears(model, targets)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(modules, 0)
    # Each distinct input tensor gets a serial number; linears with equal serial histories
    # (q, k, v read the same normed hidden states) share one InputStats.
    histories: dict[str, list[int]] = {name: [] for name in modules}
    latest: dict[str, Any] = {"tensor": None, "gram": None, "serial": -1}

    def make_hook(name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            features = inputs[0]
            if features is not latest["tensor"]:
                rows = features.detach().reshape(-1, features.shape[-1]).to(torch.float64)
                latest.update(tensor=features, gram=(rows.T @ rows).cpu(), serial=latest["serial"] + 1)
            gram = latest["gram"]
            sums[name] = gram.clone() if name not in sums else sums[name].add_(gram)
            counts[name] += features.numel() // features.shape[-1]
            histories[name].append(latest["serial"])

        return hook

    forward_with_hooks(model, batches, [(module, make_hook(name)) for name, module in modules.items()],
                       after_batch=lambda: latest.update(tensor=None, gram=None))
    stats: dict[str, InputStats] = {}
    by_history: dict[tuple[int, ...], InputStats] = {}
    for name in modules:
        if name not in sums:
            raise RuntimeError(f"{name} was never called during calibration; does the model's forward bypass it?")
        history = tuple(histories[name])
        if history not in by_history:
            by_history[history] = InputStats(sums[name] / counts[name], counts[name])
        stats[name] = by_history[history]
    return stats


def save_input_stats(stats: Mapping[str, InputStats], path: str) -> None:
    """Write `stats` with torch.save as {name: to_dict()} (shared statistics stored once)."""
    torch.save({name: item.to_dict() for name, item in stats.items()}, path)


def load_input_stats(path: str) -> dict[str, InputStats]:
    """Return the statistics written by save_input_stats (loaded with weights_only=True)."""
    records = torch.load(path, map_location="cpu", weights_only=True)
    # Pickling keeps a shared tensor one object; keep its InputStats shared too, so factors are computed once.
    by_tensor: dict[int, InputStats] = {}
    stats = {}
    for name, record in records.items():
        key = id(record["second_moment"])
        if key not in by_tensor:
            by_tensor[key] = InputStats.from_dict(record)
        stats[name] = by_tensor[key]
    return stats


def forward_with_hooks(model: nn.Module, batches: Iterable[Any], pre_hooks: Iterable[tuple[nn.Module, Callable]],
                       after_batch: Callable[[], Any] | None = None) -> int:
    """Run `model` on each batch's pixels in eval mode under no_grad with the forward pre-hooks attached;
    return the number of batches (ValueError when none). Hooks and the training flag are restored."""
    was_training = model.training
    device = next(model.parameters()).device
    handles = [module.register_forward_pre_hook(hook) for module, hook in pre_hooks]
    num_batches = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                model(batch_pixels(batch).to(device))
                num_batches += 1
                if after_batch is not None:
                    after_batch()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if num_batches == 0:
        raise ValueError("batches must yield at least one batch of pixels, got none")
    return num_batches


def batch_pixels(batch: Any) -> torch.Tensor:
    """Return the pixel tensor of a calibration batch (a tensor, a (pixels, labels) pair or a dict)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping) and "pixel_values" in batch:
        return batch["pixel_values"]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        "batches must yield pixel tensors, (pixels, labels) pairs or dicts with 'pixel_values', "
        f"got {type(batch).__name__}"
    )
