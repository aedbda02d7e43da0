"""Take a trial away: rebuild its model from the stage cache and write a folder `compress` alone loads.

The folder (Hugging Face layout): model.safetensors + structure.json (compress.save_compressed, with
the trial's validation temperature, which compress.load_compressed applies to the logits),
config.json (the flat trial config), metrics.json (what the sweep recorded, test metrics when
--final-eval ran, export-time latencies), README.md (a model card) and, with --onnx,
model.onnx checked in ONNX Runtime. It is built in a hidden sibling folder and renamed into
place at the end, so a failed export leaves nothing at the destination.

Imports tune.trials (the front, the trial's config and temperature), tune.study, tune.sweep and
trainables; tune.notes (the recorded recommendation) inside find_trial. Nothing in tune imports it
but the CLI.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from trainables.writable import NotWritableError, check_writable_folder
from tune.study import CONFIG_ATTR, TUNE_TRIAL_ID_ATTR
from tune.sweep import SweepSettings
from tune.trials import front_frame, trial_config, trial_temperature

log = logging.getLogger(__name__)

REFERENCE = "reference"
RECOMMENDED = "recommended"
PARITY_IMAGES = 16
ONNX_TOLERANCE = 1e-4
# An int8 trial's model.onnx is ONNX Runtime's own int8 quantization of the float model (the torch
# int8 model does not export): two int8 models, whose activations are quantized differently
# (ORT: uint8 asymmetric; torch's fbgemm: 7-bit quint8), so they agree to this fraction of the
# largest |logit| of the parity images, not to float precision (a random-init digits model: 0.09).
ONNX_INT8_RELATIVE_TOLERANCE = 0.15
RELOAD_TOLERANCE = 1e-6
CONFIG_FILE, METRICS_FILE, CARD_FILE, ONNX_FILE = "config.json", "metrics.json", "README.md", "model.onnx"
DINOV3_LICENSE_LINK = "https://ai.meta.com/resources/models-and-libraries/dinov3-license/"
# Per-trial bookkeeping that says nothing about the model (and where the sweep ran, which a
# folder meant to be shared should not carry).
_NOT_METRICS = {CONFIG_ATTR, TUNE_TRIAL_ID_ATTR, "hostname", "node_ip"}


class ExportError(ValueError):
    """The export cannot start or finish; the message is one line a user acts on."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what it measured."""

    path: Path
    trial: int
    seconds: float
    size_bytes: int
    metrics: dict[str, Any]


def default_out(settings: SweepSettings, number: int) -> Path:
    """Return <sweep folder>/export/trial-<number>."""
    return settings.local_dir / "export" / f"trial-{number}"


def find_trial(study: optuna.Study, settings: SweepSettings,
               which: str) -> tuple[optuna.trial.FrozenTrial, str, bool]:
    """Return (the COMPLETE trial `which` names: a number, 'reference' or 'recommended' (the last
    report's recommendation, tune.notes); its role: reference, front or dominated; whether it is on the front)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    table = front_frame(settings, study)
    rows = list(zip(table["number"].astype(int), table["role"])) if not table.empty else []
    # The reference is listed twice when it is also on the front: once per role.
    reference = [n for n, role in rows if role == REFERENCE]
    front = {n for n, role in rows if role == "front"}
    if which == REFERENCE:
        if not reference:
            raise ExportError(f"sweep {settings.name!r} has no complete reference trial (the seed "
                              "configuration); pass --trial N with a trial number from pareto.md")
        number = reference[0]
    elif which == RECOMMENDED:
        from tune.notes import recorded_recommendation

        number, line = recorded_recommendation(study)
        if line is None:
            raise ExportError(f"sweep {settings.name!r} records no recommendation (its reports predate it); run "
                              f"python tune/run.py --report {settings.name} first")
        if number is None:
            raise ExportError(f"sweep {settings.name!r} has no recommended point: {line}")
    else:
        try:
            number = int(which)
        except ValueError:
            raise ExportError(f"--trial must be a trial number (as in pareto.md), 'reference' or 'recommended', "
                              f"got {which!r}") from None
    if number not in trials:
        span = f"0..{max(trials)}" if trials else "none"
        raise ExportError(f"sweep {settings.name!r} has no trial {number} (its trials: {span})")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise ExportError(f"trial {number} of sweep {settings.name!r} is {trial.state.name}, not COMPLETE: "
                          "only a finished trial has a model and metrics to export")
    role = REFERENCE if number in reference[:1] else "front" if number in front else "dominated"
    return trial, role, number in front


def export_trial(settings: SweepSettings, study: optuna.Study, which: str, out: str | Path | None = None,
                 *, onnx: bool = False, show_progress: bool = False) -> ExportResult:
    """Rebuild trial `which` from its cached stages and write its export folder; return where and what."""
    from trainables.config import TrialConfig
    from trainables.trial import TrialContext, build_trial_model

    started = time.perf_counter()
    trial, role, on_front = find_trial(study, settings, which)
    destination = Path(out) if out is not None else default_out(settings, trial.number)
    if destination.exists():
        raise ExportError(f"{destination} already exists; remove it or pass another --out")
    try:
        check_writable_folder(destination.parent)
    except NotWritableError as err:
        raise ExportError(f"cannot write the export folder {destination}: {err}; pass another --out") from err
    flat = trial_config(trial, settings.base)
    if onnx and TrialConfig.from_flat(flat).compress.quant == "bf16":
        raise ExportError(f"--onnx: trial {trial.number} is compress.quant=bf16, which ONNX Runtime's CPU provider "
                          "does not run; export it without --onnx")
    context = TrialContext(results_dir=settings.results_dir, backend="local", show_progress=show_progress,
                           max_failures=settings.max_failures)
    built = build_trial_model(flat, context)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        metrics = _write_folder(staging, settings, trial, role, on_front, built, onnx=onnx,
                                temperature=trial_temperature(settings, trial))
        if destination.exists():
            raise ExportError(f"{destination} appeared while exporting; remove it or pass another --out")
        _open_permissions(staging)
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in destination.iterdir() if f.is_file())
    seconds = time.perf_counter() - started
    log.info("exported trial %d of %s to %s (%.1f s, %d bytes)", trial.number, settings.name, destination,
             seconds, size)
    return ExportResult(destination, trial.number, seconds, size, metrics)


def _open_permissions(folder: Path) -> None:
    """Give the folder and its files the modes the umask allows (mkdtemp and safetensors make them private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _write_folder(folder: Path, settings: SweepSettings, trial, role: str, on_front: bool, built, *,
                  onnx: bool, temperature: float | None) -> dict[str, Any]:
    """Write every file of the export into `folder`; return the metrics written. The model is saved, checked
    and converted to ONNX as deployed: with its logits divided by `temperature` when there is one."""
    from compress import TemperatureScaled, load_compressed, save_compressed

    cfg = built.cfg
    model = built.model.cpu().eval()
    if temperature is not None:
        model = TemperatureScaled(model, temperature).eval()
    save_compressed(model, folder, image_size=cfg.data.image_size, extra={
        "surgery": built.report.to_dict(),
        "preprocessing": _preprocessing(cfg),
    })
    pixels = _validation_pixels(cfg, built.data_root)
    with torch.no_grad():
        reload_diff = float((load_compressed(folder)(pixels) - model(pixels)).abs().max())
    if not reload_diff <= RELOAD_TOLERANCE:
        raise ExportError(f"the saved model's logits differ from the rebuilt trial's by {reload_diff:.3g} "
                          f"(> {RELOAD_TOLERANCE}): the export is not faithful")
    _write_json(folder / CONFIG_FILE, cfg.to_flat())
    metrics = {
        "sweep": settings.name,
        "trial": trial.number,
        "role": role,
        "on_front": on_front,
        "objectives": dict(zip(settings.metric_names, trial.values)),
        "sweep_metrics": {**dict(zip(settings.metric_names, trial.values)),
                          **{k: v for k, v in trial.user_attrs.items() if k not in _NOT_METRICS}},
        "test_metrics": _final_eval_metrics(settings, trial.number),
        "data_fingerprint": built.data_fingerprint,
        "reload_max_abs_diff": reload_diff,
        "temperature": temperature,
    }
    if onnx:
        # An int8 trial's ONNX is quantized from the float model: it carries the same temperature.
        float_model = built.float_model.cpu().eval()
        if temperature is not None:
            float_model = TemperatureScaled(float_model, temperature).eval()
        metrics["onnx"] = _export_onnx(folder, model, cfg, pixels, trial.user_attrs, float_model=float_model)
    _write_json(folder / METRICS_FILE, metrics)
    _write_model_card(folder / CARD_FILE, settings, cfg, metrics, built)
    return metrics


def _preprocessing(cfg) -> dict[str, Any]:
    """Return how an image becomes the model's input (what trainables.data.datasets does)."""
    from trainables.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    return {"layout": "NCHW float32 RGB", "image_size": cfg.data.image_size,
            "resize": "bilinear, antialiased", "scale": "pixel / 255",
            "mean": list(IMAGENET_MEAN) if cfg.data.normalize else None,
            "std": list(IMAGENET_STD) if cfg.data.normalize else None}


def _validation_pixels(cfg, data_root: str) -> torch.Tensor:
    """Return the first PARITY_IMAGES validation images as the model sees them."""
    from trainables.data.datasets import make_dataset

    dataset = make_dataset(cfg, data_root, "valid", limit=PARITY_IMAGES)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _final_eval_metrics(settings: SweepSettings, number: int) -> dict[str, Any] | None:
    """Return the trial's test_* metrics from final_eval.csv, or None when --final-eval did not score it."""
    import pandas as pd

    path = settings.local_dir / "final_eval.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    rows = frame[frame["number"] == number]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return {k: _plain(row[k]) for k in frame.columns if k.startswith("test_")}


def _trial_threads(user_attrs: dict[str, Any]) -> int:
    """Return the CPU thread count the trial's latency was measured with (from its device name)."""
    match = re.search(r"\((\d+) threads?\)", str(user_attrs.get("device", "")))
    return int(match.group(1)) if match else torch.get_num_threads()


def _export_onnx(folder: Path, model, cfg, pixels: torch.Tensor, user_attrs: dict[str, Any], *,
                 float_model) -> dict[str, Any]:
    """Write model.onnx, check it against PyTorch in ONNX Runtime, time both; return the figures.

    An int8 trial's ONNX is `float_model` quantized by ONNX Runtime, checked against the torch
    int8 model within ONNX_INT8_RELATIVE_TOLERANCE of its largest |logit|; fp32 within ONNX_TOLERANCE.
    """
    from compress.onnx_export import export_onnx, onnx_max_abs_difference, onnx_session
    from trainables.evaluate.runtime import onnxruntime_model

    threads = _trial_threads(user_attrs)
    tolerance = ONNX_TOLERANCE
    if cfg.compress.quant == "int8":
        ort = onnxruntime_model(float_model, "int8", cfg.data.image_size, threads=threads)
        (folder / ONNX_FILE).write_bytes(ort.onnx_bytes)
        session = ort.session
        with torch.no_grad():
            tolerance = ONNX_INT8_RELATIVE_TOLERANCE * float(model(pixels).abs().max())
    else:
        export_onnx(model, folder / ONNX_FILE, cfg.data.image_size)
        session = onnx_session(folder / ONNX_FILE, threads=threads)
    difference = onnx_max_abs_difference(model, session, pixels)
    if not difference <= tolerance:
        raise ExportError(f"model.onnx disagrees with PyTorch ({cfg.compress.quant}) by {difference:.3g} on "
                          f"{len(pixels)} validation images (allowed {tolerance:.3g}); not exported")
    e = cfg.eval
    torch_ms, ort_ms = paired_cpu_latency(model, session, cfg.data.image_size, batch_size=e.latency_batch,
                                          threads=threads, warmup=e.latency_warmup, repeats=e.latency_repeats,
                                          rounds=e.latency_rounds, pause_s=e.latency_pause_s)
    return {"max_abs_diff": difference, "parity_images": len(pixels), "tolerance": tolerance,
            "quant": cfg.compress.quant,
            "latency_batch": cfg.eval.latency_batch, "threads": threads,
            "torch_latency_ms": torch_ms, "ort_latency_ms": ort_ms, "ort_over_torch": ort_ms / torch_ms,
            "device": _cpu_name(threads)}


def paired_cpu_latency(model, session, image_size: int, *, batch_size: int, threads: int, warmup: int,
                       repeats: int, rounds: int, pause_s: float) -> tuple[float, float]:
    """Return (PyTorch, ONNX Runtime) median ms per image on CPU for (batch_size, 3, image_size, image_size).

    The two are timed in alternating blocks of `repeats` runs, `rounds` blocks each, with torch
    held to `threads` threads (the session was opened with as many); each reports the median of
    its least disturbed block, since other processes can only add time.
    """
    from compress.onnx_export import run_onnx

    pixels = torch.randn(batch_size, 3, image_size, image_size)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    runners = {"torch": lambda: model(pixels), "ort": lambda: run_onnx(session, pixels)}
    blocks: dict[str, list[float]] = {name: [] for name in runners}
    try:
        with torch.inference_mode():
            for run in runners.values():
                for _ in range(warmup):
                    run()
            for block in range(rounds):
                if block:
                    time.sleep(pause_s)
                for name, run in runners.items():
                    times = []
                    for _ in range(repeats):
                        begin = time.perf_counter()
                        run()
                        times.append(time.perf_counter() - begin)
                    blocks[name].append(statistics.median(times))
    finally:
        torch.set_num_threads(previous)
    return min(blocks["torch"]) * 1000.0 / batch_size, min(blocks["ort"]) * 1000.0 / batch_size


def _cpu_name(threads: int) -> str:
    from trainables.evaluate.latency import device_name

    return re.sub(r"\(\d+ threads?\)", f"({threads} threads)", device_name("cpu"))


def _license(cfg) -> dict[str, str]:
    """Return the model card's licence fields: DINOv3's for Meta's weights, the project's otherwise."""
    if cfg.model.weights:
        return {"license": "other", "license_name": "dinov3-license", "license_link": DINOV3_LICENSE_LINK,
                "text": "Fine-tuned and compressed from Meta's DINOv3 weights: use is governed by the "
                        f"DINOv3 License ({DINOV3_LICENSE_LINK})."}
    return {"license": "apache-2.0",
            "text": "Trained from random initialisation by vitsweep (no third-party weights); "
                    "Apache-2.0 like the project."}


def _data_line(cfg, fingerprint: str) -> str:
    if cfg.data.dataset == "pcam":
        return (f"PatchCamelyon (PCam, Zenodo record 2546921, CC0) at {cfg.data.image_size} px; "
                f"data fingerprint `{fingerprint}`.")
    return (f"scikit-learn's digits (UCI Optical Recognition of Handwritten Digits), binary target "
            f"digit >= 5, as 32x32 RGB in PCam's HDF5 layout; data fingerprint `{fingerprint}`.")


def _base_model(cfg) -> str:
    from trainables.model import HF_IDS

    if cfg.model.weights:
        return cfg.model.weights
    if cfg.pretrain.epochs > 0:
        return (f"{cfg.model.backbone} (DINOv3 architecture, random init, pretrained by vitsweep on the "
                f"10 digit classes for {cfg.pretrain.epochs} epochs)")
    return f"{cfg.model.backbone} (random init; {HF_IDS.get(cfg.model.backbone, 'no public checkpoint')})"


def _write_model_card(path: Path, settings: SweepSettings, cfg, metrics: dict[str, Any], built) -> None:
    """Write README.md: a Hugging Face model card (YAML front matter, then the sections)."""
    from trainables.model import HF_IDS

    licence = _license(cfg)
    sweep = metrics["sweep_metrics"]
    front = ["---", f"license: {licence['license']}"]
    if "license_name" in licence:
        front += [f"license_name: {licence['license_name']}", f"license_link: {licence['license_link']}"]
    if cfg.model.weights and cfg.model.weights in HF_IDS.values():
        front.append(f"base_model: {cfg.model.weights}")
    front += ["library_name: pytorch", "pipeline_tag: image-classification",
              "tags: [vision-transformer, dinov3, compressed, pruning, low-rank, vitsweep]", "---", ""]
    number = metrics["trial"]
    plan = {k: v for k, v in cfg.to_flat().items() if k.split(".")[0] in ("finetune", "compress", "tokens", "prehab")}
    lines = [
        f"# {settings.name} trial {number} ({metrics['role']})", "",
        f"A {cfg.model.backbone} image classifier ({cfg.model.num_classes} classes, {cfg.data.image_size} px) "
        f"fine-tuned and structurally compressed by a vitsweep multi-objective sweep ({settings.name!r}, "
        f"trial {number}: {_role_text(metrics)}).", "",
        "## Compressed from", "",
        f"- Base model: {_base_model(cfg)}",
        f"- Parameters: {_fmt(sweep.get('params_uncompressed'))} before compression, {_fmt(sweep.get('params'))} "
        f"after (ratio {_fmt(sweep.get('params_ratio'))})",
        f"- What the surgery did (per layer in `structure.json`): {_surgery_line(built)}",
        "- Trial settings: " + ", ".join(f"`{k}={','.join(v) if isinstance(v, tuple) else v}`"
                                         for k, v in sorted(plan.items())), "",
        "## Data", "", _data_line(cfg, metrics["data_fingerprint"]), "",
        "## Metrics", "",
        "Validation split as the sweep scored it; test split only when `--final-eval` ran. "
        "Every recorded figure is in `metrics.json`.", "",
        "| metric | value |", "|---|---|",
    ]
    for name in ("val_auroc", "val_auprc", "val_accuracy", "val_sens_at_95spec", "val_ece", "val_nll", "val_brier",
                 "val_temperature", "val_ece_cal", "val_nll_cal"):
        if name in sweep:
            interval = ""
            if f"{name}_lo" in sweep and f"{name}_hi" in sweep:
                interval = f" [{_fmt(sweep[f'{name}_lo'])}, {_fmt(sweep[f'{name}_hi'])}]"
            lines.append(f"| {name} | {_fmt(sweep[name])}{interval} |")
    for name, value in (metrics["test_metrics"] or {}).items():
        lines.append(f"| {name} | {_fmt(value)} |")
    lines += ["", "## Cost", "", "| figure | value | measured on |", "|---|---|---|",
              f"| parameters | {_fmt(sweep.get('params'))} | |",
              f"| GFLOPs per image | {_fmt(sweep.get('gflops'))} | |",
              f"| latency (sweep, batch {_fmt(sweep.get('latency_batch'))}) | {_fmt(sweep.get('latency_ms'))} ms/img "
              f"| {sweep.get('device', '?')} |"]
    if "latency_rel" in sweep:
        lines.append(f"| latency / uncompressed model's (paired rounds) | {_fmt(sweep['latency_rel'])} "
                     f"[{_fmt(sweep.get('latency_rel_lo'))}, {_fmt(sweep.get('latency_rel_hi'))}] "
                     f"| {sweep.get('device', '?')} |")
    onnx = metrics.get("onnx")
    if onnx:
        lines += [f"| latency PyTorch at export (batch {onnx['latency_batch']}) | {_fmt(onnx['torch_latency_ms'])} "
                  f"ms/img | {onnx['device']} |",
                  f"| latency ONNX Runtime CPU at export (batch {onnx['latency_batch']}) | "
                  f"{_fmt(onnx['ort_latency_ms'])} ms/img | {onnx['device']} |"]
    lines += ["", "## Use it", "",
              "Needs torch, transformers and the vitsweep `compress` package (nothing from the sweep):", "",
              "```python", "import torch", "from compress import load_compressed", "",
              'model = load_compressed("path/to/this/folder")   # eval mode, structure and token pruning restored',
              f"pixels = torch.randn(1, 3, {cfg.data.image_size}, {cfg.data.image_size})  # see preprocessing below",
              "probs = model(pixels).softmax(-1)", "```", "", _calibration_line(metrics["temperature"]), "",
              f"Preprocessing: RGB, resized to {cfg.data.image_size}x{cfg.data.image_size} (bilinear, antialiased), "
              "scaled to [0, 1]" + (", then normalised with the ImageNet mean/std (in `structure.json`)."
                                    if cfg.data.normalize else "."),
              "", "Evaluate it on any data in PCam's HDF5 layout:", "", "```bash",
              "python -m trainables.evaluate --model path/to/this/folder --data DATA_ROOT --split test --json test.json",
              "```", ""]
    if onnx:
        lines += [f"`model.onnx` takes `pixel_values` (batch, 3, {cfg.data.image_size}, {cfg.data.image_size}) "
                  "and returns `logits`" + (" (divided by the temperature, as `load_compressed` returns them)"
                                            if metrics["temperature"] is not None else "") + "; "
                  f"it matched PyTorch ({onnx.get('quant', 'none')}) within "
                  f"{onnx['tolerance']:.3g} on {onnx['parity_images']} "
                  "validation images in ONNX Runtime (CPU).", ""]
    lines += ["## Licence", "", licence["text"], ""]
    path.write_text("\n".join(front + lines), encoding="utf-8")


def _calibration_line(temperature: float | None) -> str:
    if temperature is None:
        return "Calibration: none recorded (the sweep kept no validation predictions); the logits are the model's own."
    return (f"Calibration: the logits come divided by the temperature T = {temperature:.4g}, fitted on the "
            "validation split by NLL (`temperature` in `structure.json`; val_ece_cal and val_nll_cal above are "
            "cross-fitted within that split). `load_compressed(path, calibrated=False)` returns the raw logits.")


def _role_text(metrics: dict[str, Any]) -> str:
    if metrics["role"] == REFERENCE:
        return "the reference (seed configuration)" + (", also on the Pareto front" if metrics["on_front"] else "")
    return "on the Pareto front" if metrics["on_front"] else "dominated, not on the Pareto front"


def _surgery_line(built) -> str:
    report = built.report.to_dict()
    heads = [d["kept"] for d in report["heads"]] or None
    mlp = [d["kept"] for d in report["mlp"]] or None
    svd = sum(1 for d in report["svd"] if d["applied"])
    tokens = built.tokens["schedule"] if built.tokens else None
    return (f"heads kept per layer {heads or 'all'}, MLP units kept per layer {mlp or 'all'}, "
            f"{svd} linears factorised, patch tokens per layer {tokens or 'all'}")


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "n/a" if value is None else str(value)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=_plain), encoding="utf-8")
