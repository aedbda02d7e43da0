"""The compression plan a trial applies, and compress_model, which runs heads -> MLP -> SVD -> tokens."""

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from compress.adapters import adapter_for
from compress.allocation import check_allocation
from compress.checks import check_fraction, check_half_open_unit, check_positive
from compress.heads import prune_attention_heads
from compress.importance import UnitScores, check_importance, unit_scores
from compress.mlp import prune_mlp_neurons
from compress.params import count_params
from compress.quant import check_quant
from compress.report import CompressionReport, LayerDecision
from compress.svd import truncate_svd
from compress.targets import DEFAULT_TARGETS, check_targets
from compress.tokens import enable_token_pruning
from compress.whitening import DEFAULT_DAMPING, InputStats, collect_input_stats

logger = logging.getLogger(__name__)

SVD_SPACES = ("raw", "whitened")
KEYED_WHEN_SET = "keyed_when_set"     # dataclass field metadata: see keyed_when_set


def keyed_when_set(default: Any) -> Any:
    """Return a dataclass field whose value keys caches only when it differs from `default`.

    For fields added after cache keys were in use: at their default they leave every
    earlier key (and stored outcome) valid.
    """
    return field(default=default, metadata={KEYED_WHEN_SET: True})


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
    svd_damping: float = keyed_when_set(DEFAULT_DAMPING)
    # Which heads / MLP units count most (compress.importance) and how tau spreads over layers
    # (compress.allocation); energy / per_layer is the notes' rule.
    importance: str = keyed_when_set("energy")
    allocation: str = keyed_when_set("per_layer")
    # Post-training quantization (compress.quant): none, int8 or bf16. Not applied by compress_model:
    # it ends the trial's model, after any recovery fine-tune (compress.quantize_model).
    quant: str = keyed_when_set("none")

    def __post_init__(self) -> None:
        for name in ("tau_heads", "tau_mlp", "tau_svd"):
            object.__setattr__(self, name, check_fraction(f"compress.{name}", getattr(self, name)))
        if self.svd_space not in SVD_SPACES:
            raise ValueError(f"compress.svd_space must be one of {', '.join(SVD_SPACES)}, got {self.svd_space!r}")
        object.__setattr__(self, "svd_targets", check_targets("compress.svd_targets", self.svd_targets))
        object.__setattr__(self, "svd_damping", check_positive("compress.svd_damping", self.svd_damping))
        check_importance("compress.importance", self.importance)
        check_allocation("compress.allocation", self.allocation)
        check_quant(self.quant)

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


Calibration = Mapping[str, InputStats] | Iterable[Any]


def compress_model(
    model: nn.Module,
    plan: CompressionPlan,
    calibration: Calibration | None = None,
    tokens: TokenPlan | None = None,
    scores: UnitScores | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """Return (a compressed deep copy of `model`, its report); `model` itself is not modified.

    Order: attention heads (plan.tau_heads) -> MLP units (tau_mlp) -> truncated SVD (tau_svd,
    raw or whitened) -> token pruning (`tokens`; skipped when None or at r_max = 0).
    Heads and units are ranked by plan.importance and kept by plan.allocation. A data-aware
    importance (taylor, activation) uses `scores` of `model` (compress.importance.unit_scores,
    e.g. cached by a trial) or, when None, computes them from `calibration` batches.
    Whitened SVD with tau_svd < 1 needs `calibration`: either {name: InputStats} collected on the
    uncompressed model (o/down statistics are restricted to the kept heads/units here) or an
    iterable of batches, from which statistics are collected on the pruned model.
    """
    if not isinstance(plan, CompressionPlan):
        raise TypeError(f"plan must be a CompressionPlan, got {type(plan).__name__}")
    if tokens is not None and not isinstance(tokens, TokenPlan):
        raise TypeError(f"tokens must be a TokenPlan or None, got {type(tokens).__name__}")
    adapter_for(model)
    whitened_svd = plan.svd_space == "whitened" and plan.tau_svd < 1.0 and plan.svd_targets
    if whitened_svd and calibration is None:
        raise ValueError(
            "compress.svd_space='whitened' needs calibration: pass calibration=collect_input_stats(model, batches) "
            "(statistics of the uncompressed model) or calibration=<iterable of pixel batches>"
        )
    if scores is not None and not isinstance(scores, UnitScores):
        raise TypeError(f"scores must be UnitScores or None, got {type(scores).__name__}")
    if plan.needs_scores and scores is None:
        if calibration is None or isinstance(calibration, Mapping):
            raise ValueError(
                f"compress.importance={plan.importance!r} needs scores=unit_scores(model, {plan.importance!r}, "
                "batches) or calibration=<iterable of labelled pixel batches>"
            )
        calibration = list(calibration)  # read again below when whitened SVD collects statistics
        scores = unit_scores(model, plan.importance, calibration)
    if scores is not None and plan.needs_scores and scores.importance != plan.importance:
        raise ValueError(f"scores are {scores.importance!r} scores, but compress.importance is {plan.importance!r}")
    params_before = count_params(model)
    compressed = copy.deepcopy(model)
    # Data-aware scores are those of the unpruned model, MLP units' included; energy is read
    # from the weights at each step (None), as the notes do.
    head_scores, mlp_scores = (scores.heads, scores.mlp) if plan.needs_scores else (None, None)
    heads = prune_attention_heads(compressed, plan.tau_heads, head_scores, plan.allocation)
    mlp = prune_mlp_neurons(compressed, plan.tau_mlp, mlp_scores, plan.allocation)
    svd: list[LayerDecision] = []
    if plan.tau_svd < 1.0 and plan.svd_targets:
        whitening = None
        if whitened_svd:
            whitening = _statistics_for(compressed, calibration, [*heads, *mlp], plan.svd_targets)
        svd = truncate_svd(compressed, plan.tau_svd, whitening=whitening, targets=plan.svd_targets,
                           damping=plan.svd_damping)
    token_summary = None
    if tokens is not None and tokens.enabled:
        token_summary = enable_token_pruning(compressed, tokens.r_max, tokens.alpha, fuse=tokens.fuse)
    report = CompressionReport(
        params_before=params_before,
        params_after=count_params(compressed),
        heads=heads,
        mlp=mlp,
        svd=svd,
        svd_space=plan.svd_space,
        tokens=token_summary,
        plan={**plan.to_dict(), **({"tokens": tokens.to_dict()} if tokens is not None else {})},
    )
    logger.info("compressed %d -> %d parameters", report.params_before, report.params_after)
    return compressed, report


def _statistics_for(
    model: nn.Module, calibration: Calibration, pruning: list[LayerDecision], targets: tuple[str, ...]
) -> dict[str, InputStats]:
    """Return statistics valid for the pruned `model`: restricted precomputed ones, or freshly collected."""
    if not isinstance(calibration, Mapping):
        return collect_input_stats(model, calibration, targets=targets)
    stats = dict(calibration)
    bad = [name for name, item in stats.items() if not isinstance(item, InputStats)]
    if bad:
        raise TypeError(f"calibration values must be InputStats; {bad[0]!r} is {type(stats[bad[0]]).__name__}")
    for decision in pruning:
        if decision.applied and decision.input_pruned in stats:
            stats[decision.input_pruned] = stats[decision.input_pruned].restricted(decision.input_channels())
    return stats
