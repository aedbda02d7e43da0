"""Inference latency and FLOP counts of a vision model on one device."""

import contextlib
import copy
import logging
import math
import platform
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyResult:
    """Timing of repeated forward passes; spreads are interquartile ranges (q75 - q25).

    latency_ms is the median over rounds of each round's median; [latency_ms_lo,
    latency_ms_hi] is the interval of median_interval over the round medians (`round_ms`).
    """

    latency_ms: float
    latency_ms_spread: float
    throughput_img_s: float
    batch_size: int
    device_name: str
    repeats: int
    rounds: int = 1
    latency_ms_lo: float = math.nan
    latency_ms_hi: float = math.nan
    round_ms: tuple[float, ...] = ()


def median_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Return (median, lo, hi): the distribution-free order-statistic interval of the median.

    The interval comes from scipy.stats.quantile_test (binomial order statistics); it
    needs at least 6-7 values for 95%. With fewer it is [min, max], whose coverage is
    only 1 - 2 * 0.5^n (75% for 3 values, 94% for 5), so time at least 7 rounds where
    the interval decides something (the re-timing pass does).
    """
    from scipy.stats import quantile_test

    values = [float(v) for v in values]
    if not values:
        raise ValueError("median_interval needs at least one value")
    median = statistics.median(values)
    if len(values) == 1:
        return median, median, median
    interval = quantile_test(values, q=median, p=0.5).confidence_interval(confidence)
    lo, hi = float(interval.low), float(interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = min(values), max(values)
    return median, lo, hi


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    device: str | torch.device | None = None,
    warmup: int = 3,
    repeats: int = 10,
    batch_size: int,
    rounds: int = 1,
    pause_s: float = 0.0,
) -> LatencyResult:
    """Return the median per-image latency (its interval and IQR) of `model` on random (batch_size, *input_shape) inputs.

    The timed runs come in `rounds` blocks of `repeats` runs, `pause_s` apart, after
    `warmup` untimed runs, each under torch.inference_mode with the device synchronised
    before and after. With m_r the median run time of block r:
    latency_ms = median_r(m_r) / batch_size, [latency_ms_lo, latency_ms_hi] =
    median_interval(m_r) / batch_size, throughput_img_s = batch_size / median_r(m_r),
    latency_ms_spread = IQR of the runs of the median block / batch_size. A burst of
    outside load that slows one block moves the median of several blocks little. `device`
    defaults to the model's; when given, the model is moved there in place. The model is
    timed in eval mode and its training flag restored.
    """
    _check_timing_arguments(input_shape, batch_size, warmup, repeats, rounds, pause_s)
    target = _model_device(model) if device is None else torch.device(device)
    model.to(target)
    inputs = torch.randn((batch_size, *input_shape), device=target, dtype=_model_dtype(model))

    blocks_s = []
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(inputs)
        for block in range(rounds):
            if block:
                time.sleep(pause_s)
            blocks_s.append(_timed_runs(model, inputs, target, repeats))
    return _latency_result(blocks_s, batch_size, target)


@dataclass(frozen=True)
class RelativeLatencyResult:
    """A model timed interleaved with a reference on one device: the paired ratio and both timings.

    latency_rel is the median over rounds of the per-round ratio model / reference;
    [latency_rel_lo, latency_rel_hi] is median_interval of those ratios (`round_ratios`).
    `model` and `reference` are each one's own LatencyResult over the same rounds.
    """

    latency_rel: float
    latency_rel_lo: float
    latency_rel_hi: float
    model: LatencyResult
    reference: LatencyResult
    round_ratios: tuple[float, ...]


def measure_relative_latency(
    model: nn.Module,
    reference: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    device: str | torch.device | None = None,
    warmup: int = 3,
    repeats: int = 10,
    batch_size: int,
    rounds: int = 7,
    pause_s: float = 0.0,
) -> RelativeLatencyResult:
    """Return `model`'s latency relative to `reference` on one device: the median paired ratio and its interval.

    Both get `warmup` untimed runs, then `rounds` rounds, `pause_s` apart; a round times
    a block of `repeats` runs of each model back to back on the same random
    (batch_size, *input_shape) input, each block after one untimed run (when warmup > 0)
    that brings its weights back after the other model ran. The order alternates (model
    then reference, reference then model, ...) so that a drift within a round does not
    favour one of them. With a_r and b_r the median run times of the model and the
    reference in round r: ratio_r = a_r / b_r, latency_rel = median_r(ratio_r),
    [latency_rel_lo, latency_rel_hi] = median_interval(ratio_r) (95%: use >= 7 rounds).
    Load that slows a whole round slows both blocks and cancels in its ratio, and so does
    a node whose device of the same kind runs faster or slower (clocks, thermals, its
    neighbours). The ratio still depends on the kind of device: a compression can pay off
    more on a CPU than on a GPU. `device` defaults to the model's; both models are moved
    there in place.
    """
    _check_timing_arguments(input_shape, batch_size, warmup, repeats, rounds, pause_s)
    target = _model_device(model) if device is None else torch.device(device)
    model.to(target)
    reference.to(target)
    # The reference's dtype: a bf16 model (compress.quant) casts float32 inputs itself.
    inputs = torch.randn((batch_size, *input_shape), device=target, dtype=_model_dtype(reference))

    model_blocks_s, reference_blocks_s = [], []
    timed = ((model, model_blocks_s), (reference, reference_blocks_s))
    with _eval_mode(model), _eval_mode(reference), torch.inference_mode():
        for which, _ in timed:
            for _ in range(warmup):
                which(inputs)
        for round_ in range(rounds):
            if round_:
                time.sleep(pause_s)
            for which, blocks_s in timed if round_ % 2 == 0 else timed[::-1]:
                for _ in range(min(1, warmup)):
                    which(inputs)
                blocks_s.append(_timed_runs(which, inputs, target, repeats))
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(model_blocks_s, reference_blocks_s)]
    latency_rel, lo, hi = median_interval(ratios)
    return RelativeLatencyResult(
        latency_rel=latency_rel, latency_rel_lo=lo, latency_rel_hi=hi,
        model=_latency_result(model_blocks_s, batch_size, target),
        reference=_latency_result(reference_blocks_s, batch_size, target),
        round_ratios=tuple(ratios),
    )


def _latency_result(blocks_s: list[list[float]], batch_size: int, target: torch.device) -> LatencyResult:
    """Return the LatencyResult of timed blocks of runs (seconds per batch), as measure_latency defines it."""
    repeats = len(blocks_s[0])
    round_ms = [statistics.median(block) * 1000.0 / batch_size for block in blocks_s]
    latency_ms, lo_ms, hi_ms = median_interval(round_ms)
    run_times_s = sorted(blocks_s, key=statistics.median)[(len(blocks_s) - 1) // 2]
    quartiles_s = statistics.quantiles(run_times_s, n=4) if repeats > 1 else [run_times_s[0]] * 3
    return LatencyResult(
        latency_ms=latency_ms,
        latency_ms_spread=(quartiles_s[2] - quartiles_s[0]) * 1000.0 / batch_size,
        throughput_img_s=1000.0 / latency_ms,
        batch_size=batch_size,
        device_name=device_name(target),
        repeats=repeats,
        rounds=len(blocks_s),
        latency_ms_lo=lo_ms,
        latency_ms_hi=hi_ms,
        round_ms=tuple(round_ms),
    )


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Put `model` in eval mode for the block; restore its training flag after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _timed_runs(model: nn.Module, inputs: torch.Tensor, target: torch.device, repeats: int) -> list[float]:
    """Return the wall seconds of `repeats` synchronised forward passes."""
    run_times_s = []
    for _ in range(repeats):
        _synchronize(target)
        start_s = time.perf_counter()
        model(inputs)
        _synchronize(target)
        run_times_s.append(time.perf_counter() - start_s)
    return run_times_s


def count_gflops(model: nn.Module, input_shape: tuple[int, int, int]) -> float:
    """Return GFLOPs per image (one multiply-add = 2 FLOPs) of a forward pass on a (1, *input_shape) input.

    Counted with torch.utils.flop_counter.FlopCounterMode on a deep copy of the model
    whose transformers sub-models are switched to eager attention, because the CPU
    scaled-dot-product-attention kernel is not counted (the eager matmuls are). The
    forward runs as the model is configured, so token-pruned models are counted with
    the token counts they actually process.
    """
    _check_input_shape(input_shape)
    counted = copy.deepcopy(model)
    _use_eager_attention(counted)
    counted.eval()
    inputs = torch.randn((1, *input_shape), device=_model_device(counted), dtype=_model_dtype(counted))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        counted(inputs)
    return counter.get_total_flops() / 1e9


def device_name(device: str | torch.device) -> str:
    """Return a human-readable name of `device`: the GPU model, or the CPU model and torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"{_cpu_model()} ({torch.get_num_threads()} threads)"


def _use_eager_attention(model: nn.Module) -> None:
    """Switch every transformers PreTrainedModel inside `model` to eager attention."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.config._attn_implementation != "eager":
            module.set_attn_implementation("eager")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        logger.debug("no /proc/cpuinfo; falling back to platform.processor()")
    return platform.processor() or platform.machine() or "unknown CPU"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    first = next(model.parameters(), None)
    return first.dtype if first is not None and first.is_floating_point() else torch.float32


def _check_timing_arguments(input_shape, batch_size, warmup, repeats, rounds, pause_s) -> None:
    _check_input_shape(input_shape)
    _check_count("batch_size", batch_size, minimum=1)
    _check_count("warmup", warmup, minimum=0)
    _check_count("repeats", repeats, minimum=1)
    _check_count("rounds", rounds, minimum=1)
    if isinstance(pause_s, bool) or not isinstance(pause_s, (int, float)) or not 0 <= pause_s < math.inf:
        raise ValueError(f"pause_s must be a finite number of seconds >= 0, got {pause_s!r}")


def _check_input_shape(input_shape) -> None:
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in input_shape)
    ):
        raise ValueError(f"input_shape must be (channels, height, width) of ints >= 1, got {input_shape!r}")


def _check_count(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
