"""What compression decided, per layer and overall, as JSON-serialisable records."""

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerDecision:
    """One method's decision for one layer (heads, MLP) or one linear (SVD).

    `total`/`kept` count heads, hidden units or singular values (rank); `kept_indices` lists the
    kept heads or units (empty for SVD); `unit_width` is how many input channels of
    `input_pruned` (the linear reading the kept units) each unit owns.
    """

    method: str
    layer: int
    module: str
    total: int
    kept: int
    applied: bool
    params_removed: int = 0
    kept_indices: tuple[int, ...] = ()
    unit_width: int = 1
    input_pruned: str | None = None

    def input_channels(self) -> list[int]:
        """Return the input channels of `input_pruned` that survive: unit u owns [u*w, (u+1)*w)."""
        width = self.unit_width
        return [unit * width + offset for unit in self.kept_indices for offset in range(width)]

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as a JSON-able dict."""
        record = asdict(self)
        record["kept_indices"] = list(self.kept_indices)
        return record


@dataclass(frozen=True)
class CompressionReport:
    """Parameters before/after and every per-layer decision of one compress_model call."""

    params_before: int
    params_after: int
    heads: list[LayerDecision] = field(default_factory=list)
    mlp: list[LayerDecision] = field(default_factory=list)
    svd: list[LayerDecision] = field(default_factory=list)
    svd_space: str = "raw"
    tokens: dict[str, Any] | None = None
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def compression_ratio(self) -> float:
        """Return params_after / params_before."""
        return self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-able dict (decisions as lists of dicts)."""
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "compression_ratio": self.compression_ratio,
            "plan": dict(self.plan),
            "heads": [decision.to_dict() for decision in self.heads],
            "mlp": [decision.to_dict() for decision in self.mlp],
            "svd": [decision.to_dict() for decision in self.svd],
            "svd_space": self.svd_space,
            "tokens": self.tokens,
        }
