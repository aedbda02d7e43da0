"""The one selection rule every compression method uses: keep a fraction tau of the energy."""

import torch

from compress.checks import check_fraction


def keep_count(energies: torch.Tensor, tau: float) -> int:
    """Return the smallest K with sum of the K largest energies >= tau * total energy (K >= 1).

    With e_(1) >= ... >= e_(n) sorted, K = min{k : sum_{i<=k} e_(i) >= tau * sum_j e_(j)}.
    tau = 1 keeps every unit, zero-energy ones included, so it is always an exact no-op.
    """
    check_fraction("tau", tau)
    values = torch.as_tensor(energies).detach().flatten().to(torch.float64)
    count = values.numel()
    if count == 0:
        raise ValueError("energies must hold at least one value, got an empty tensor")
    if not torch.isfinite(values).all() or (values < 0).any():
        raise ValueError("energies must be finite and non-negative")
    if tau == 1.0:
        return count
    cumulative = torch.sort(values, descending=True).values.cumsum(0)
    reached = cumulative >= tau * cumulative[-1]
    return max(1, int(torch.argmax(reached.to(torch.int8)).item()) + 1)


def select_units(energies: torch.Tensor, tau: float) -> torch.Tensor:
    """Return the ascending indices of the keep_count(energies, tau) highest-energy units (ties: lower index)."""
    count = keep_count(energies, tau)
    values = torch.as_tensor(energies).detach().flatten().to(torch.float64)
    order = torch.sort(values, descending=True, stable=True).indices
    return torch.sort(order[:count]).values
