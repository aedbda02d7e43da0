"""The SVD-taps classifier head: the pooled token plus a spectral summary of the patch tokens at four depths.

At each tap (after layers L/4, L/2, 3L/4 and L) the patch tokens go through a bias-free
Linear(d, k); the singular value decomposition of that (tokens x k) matrix is taken, detached,
through the eigendecomposition of its k x k Gram matrix in float32 with autocast off. Per tap
it yields 2k + 2 numbers: the singular values normalised to sum 1 (k), the diagonal of V^T (k),
the off-diagonal energy of V^T (1) and the spectral entropy (1). The classifier
Linear(width + taps(2k+2), d) -> GELU -> LayerNorm -> Dropout(0.1) -> Linear(d, classes) reads
the pooled features concatenated with every tap's summary.

Because the decomposition is detached, no gradient reaches the tap projections: they are
fixed random projections (frozen here, so DDP sees no unused trainable parameter) and only the
classifier trains. Kept torch-only so that a saved model rebuilds without the training code.
"""

from __future__ import annotations

import torch
from torch import nn

TAP_RANK = 32
TAP_DROPOUT = 0.1


def tap_layers(num_layers: int) -> list[int]:
    """Return the 1-based layers after which the head taps: max(1, floor(i L / 4)) for i = 1..4, deduplicated."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    return sorted({max(1, (num_layers * i) // 4) for i in range(1, 5)})


def spectral_summary(projected: torch.Tensor) -> torch.Tensor:
    """Return the (batch, 2k + 2) spectral summary of `projected` (batch, tokens, k), detached.

    With Z the (tokens x k) matrix of one image and Z^T Z = V diag(s^2) V^T (s descending):
    p = s / sum(s); features = [p, diag(V^T), sum_{i != j} V_ij^2 / k, -sum p log p].
    Each eigenvector's sign is fixed so that its largest-magnitude entry is positive (a
    singular vector's sign is otherwise arbitrary). Non-finite values become 0.
    """
    with torch.no_grad(), torch.autocast(projected.device.type, enabled=False):
        z = projected.detach().float()
        gram = z.transpose(1, 2) @ z
        eigenvalues, vectors = torch.linalg.eigh(gram)        # ascending
        eigenvalues, vectors = eigenvalues.flip(-1), vectors.flip(-1)
        singular = eigenvalues.clamp_min(0.0).sqrt()
        largest = vectors.gather(1, vectors.abs().argmax(dim=1, keepdim=True))
        vectors = vectors * torch.where(largest < 0, -1.0, 1.0)
        share = singular / singular.sum(dim=-1, keepdim=True)
        diagonal = torch.diagonal(vectors, dim1=-2, dim2=-1)  # diag(V^T) = diag(V)
        rank = vectors.shape[-1]
        off_diagonal = ((vectors ** 2).sum(dim=(-2, -1)) - (diagonal ** 2).sum(dim=-1)) / rank
        entropy = -torch.xlogy(share, share).sum(dim=-1)
        summary = torch.cat([share, diagonal, off_diagonal[:, None], entropy[:, None]], dim=-1)
        return torch.nan_to_num(summary, nan=0.0, posinf=0.0, neginf=0.0)


class SVDTapsHead(nn.Module):
    """Classifier on pooled features and tap spectra; forward(pooled, taps) returns logits."""

    def __init__(self, in_features: int, hidden_size: int, num_classes: int, num_taps: int,
                 rank: int = TAP_RANK):
        super().__init__()
        for name, value in (("in_features", in_features), ("hidden_size", hidden_size),
                            ("num_classes", num_classes), ("num_taps", num_taps), ("rank", rank)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SVDTapsHead {name} must be an int >= 1, got {value!r}")
        self.in_features, self.out_features = in_features, num_classes
        self.num_taps, self.rank = num_taps, rank
        self.projections = nn.ModuleList(nn.Linear(hidden_size, rank, bias=False) for _ in range(num_taps))
        for param in self.projections.parameters():
            param.requires_grad_(False)
        self.classifier = nn.Sequential(
            nn.Linear(in_features + num_taps * (2 * rank + 2), hidden_size),
            nn.GELU(),
            nn.LayerNorm(hidden_size),
            nn.Dropout(TAP_DROPOUT),
            nn.Linear(hidden_size, num_classes),
        )

    def tap_features(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """Return the concatenated spectral summaries (batch, taps (2k+2)) of the taps' patch tokens."""
        if len(taps) != self.num_taps:
            raise ValueError(f"SVDTapsHead expects {self.num_taps} taps, got {len(taps)}")
        with torch.no_grad(), torch.autocast(taps[0].device.type, enabled=False):
            return torch.cat([spectral_summary(projection(tokens.float()))
                              for projection, tokens in zip(self.projections, taps)], dim=-1)

    def forward(self, pooled: torch.Tensor, taps: list[torch.Tensor]) -> torch.Tensor:
        features = self.tap_features(taps).to(pooled.dtype)
        return self.classifier(torch.cat([pooled, features], dim=-1))


def summary_width(num_taps: int, rank: int = TAP_RANK) -> int:
    """Return the number of tap features: taps (2k + 2)."""
    return num_taps * (2 * rank + 2)


__all__ = ["SVDTapsHead", "TAP_RANK", "spectral_summary", "summary_width", "tap_layers"]

