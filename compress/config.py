"""What a compression run is asked to do, as data: CompressionPlan, TokenPlan and the name tables
they validate against. Imports no torch, so configs, search spaces and the CLI can check a value
without loading the model code (compress.plan.compress_model applies a plan).
"""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from compress.checks import check_choice, check_fraction, check_half_open_unit, check_positive
from compress.targets import DEFAULT_TARGETS, check_targets

SVD_SPACES = ("raw", "whitened")
ALLOCATIONS = ("per_layer", "global")                   # compress.allocation
IMPORTANCES = ("energy", "taylor", "activation")        # compress.importance
QUANT_MODES = ("none", "int8", "bf16")                  # compress.quant
# compress.prehab: the rank surrogates by name, and the one that also needs the outputs' Fisher.
REGULARIZER_NAMES = ("stable_rank", "nuclear_ratio", "effective_rank", "nuclear_ratio+effective_rank")
FISHER_WEIGHTED = "fisher_weighted"
PENALTY_KINDS = (*REGULARIZER_NAMES, FISHER_WEIGHTED)
POOLINGS = ("cls", "mean", "cls+mean")                  # compress.classifier
HEADS = ("linear", "mlp", "svd_taps")
DEFAULT_DAMPING = 1e-6                                  # compress.whitening.whitening_factor


def check_allocation(name: str, value: str) -> str:
    """Return `value` if it names an allocation; ValueError naming `name` otherwise."""
    return check_choice(name, value, ALLOCATIONS)


def check_importance(name: str, value: str) -> str:
    """Return `value` if it names an importance score; ValueError naming `name` otherwise."""
    return check_choice(name, value, IMPORTANCES)


def check_quant(mode: str, key: str = "compress.quant") -> str:
    """Return `mode` if it is one of QUANT_MODES; raise ValueError naming `key` otherwise."""
    return check_choice(key, mode, QUANT_MODES)


@dataclass(frozen=True)
class CompressionPlan:
    """How much of each structural method to apply; every tau keeps that fraction of energy (1 = off).

    The flat config's `compress.*` section (trainables.config), validated here once.
    """

    tau_heads: float = 1.0
    tau_mlp: float = 1.0
    tau_svd: float = 1.0
    svd_space: str = "raw"
    svd_targets: tuple[str, ...] = DEFAULT_TARGETS
    # Whitened SVD factors S + svd_damping * mean(diag S) * I (compress.whitening.whitening_factor).
    svd_damping: float = DEFAULT_DAMPING
    # Which heads / MLP units count most (compress.importance) and how tau spreads over layers
    # (compress.allocation); energy / per_layer is the notes' rule.
    importance: str = "energy"
    allocation: str = "per_layer"
    # Post-training quantization (compress.quant): none, int8 or bf16. Not applied by compress_model:
    # it ends the trial's model, after any recovery fine-tune (compress.quantize_model).
    quant: str = "none"

    def __post_init__(self) -> None:
        for name in ("tau_heads", "tau_mlp", "tau_svd"):
            object.__setattr__(self, name, check_fraction(f"compress.{name}", getattr(self, name)))
        check_choice("compress.svd_space", self.svd_space, SVD_SPACES)
        object.__setattr__(self, "svd_targets", check_targets("compress.svd_targets", self.svd_targets))
        object.__setattr__(self, "svd_damping", check_positive("compress.svd_damping", self.svd_damping))
        check_importance("compress.importance", self.importance)
        check_allocation("compress.allocation", self.allocation)
        check_quant(self.quant)

    @property
    def whitened_svd(self) -> bool:
        """Whether SVD truncates in the whitened space (then input statistics of the model are needed)."""
        return self.svd_space == "whitened" and self.tau_svd < 1.0 and bool(self.svd_targets)

    @property
    def needs_scores(self) -> bool:
        """Whether heads or MLP units are pruned by a data-aware importance (calibration scores needed)."""
        return self.importance != "energy" and (self.tau_heads < 1.0 or self.tau_mlp < 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as a JSON-able dict (svd_targets as a list)."""
        return _record(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "CompressionPlan":
        """Return the plan for a dict of field values; ValueError naming any unknown key."""
        return _from_record(cls, record)


@dataclass(frozen=True)
class TokenPlan:
    """Inference-time token pruning: layer l keeps max(1, floor(n_{l-1} (1 - r_max ((l+1)/L)^alpha))) patch tokens.

    r_max = 0 is off. `fuse` adds one token holding the CLS-attention-weighted mean of the
    dropped ones (compress.tokens.enable_token_pruning). The flat config's `tokens.*` section.
    """

    r_max: float = 0.0
    alpha: float = 1.0
    fuse: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "r_max", check_half_open_unit("tokens.r_max", self.r_max))
        object.__setattr__(self, "alpha", check_positive("tokens.alpha", self.alpha))
        if not isinstance(self.fuse, bool):
            raise TypeError(f"tokens.fuse must be a bool, got {self.fuse!r}")

    @property
    def enabled(self) -> bool:
        """Whether any token is pruned (r_max > 0)."""
        return self.r_max > 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as a JSON-able dict."""
        return _record(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "TokenPlan":
        """Return the plan for a dict of field values; ValueError naming any unknown key."""
        return _from_record(cls, record)


def _record(plan: Any) -> dict[str, Any]:
    record = asdict(plan)
    for name, value in record.items():
        if isinstance(value, tuple):
            record[name] = list(value)
    return record


def _from_record(cls: type, record: Mapping[str, Any]) -> Any:
    known = {item.name for item in fields(cls)}
    unknown = sorted(set(record) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; allowed: {sorted(known)}")
    values = dict(record)
    if "svd_targets" in values and not isinstance(values["svd_targets"], str):
        values["svd_targets"] = tuple(values["svd_targets"])
    return cls(**values)
