"""Save and load compressed models: per-layer structure as JSON beside safetensors weights."""

import importlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from compress import tokens
from compress.adapters import adapter_for, adapter_named
from compress.linear import LowRankLinear, linear_bias
from compress.quant import load_storable_state, quant_mode, quantize_model, storable_state
from compress.surgery import keep_heads, keep_units
from compress.temperature import TEMPERATURE_KEY, TemperatureScaled, check_temperature, unwrap_temperature

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STRUCTURE_FILE = "structure.json"
WEIGHTS_FILE = "model.safetensors"
# Wrapper classes that moved into compress; models saved before the move name the old place.
_MOVED_WRAPPERS = {"trainables.model:ViTClassifier": "compress.classifier:ViTClassifier"}


def save_compressed(model: nn.Module, path: str | Path, *, image_size: int | None = None,
                    extra: Mapping[str, Any] | None = None, temperature: float | None = None) -> Path:
    """Write `model` to directory `path` (structure.json + model.safetensors); return the directory.

    The structure records the family config, per-layer head counts, MLP widths and low-rank
    ranks, token-pruning settings, the quantization (compress.quant; int8 weights are stored as
    int8 with their scales), and how to rebuild an outer wrapper: a model that is not the
    bare backbone must offer spec() (JSON-able) and a classmethod from_spec(spec). With
    `image_size` it also records the input size and the token-pruning schedule at that size;
    `extra` adds descriptive keys (never read back by load_compressed). `temperature` (or that of
    a TemperatureScaled model) is recorded for load_compressed to divide the logits by.
    """
    model, wrapped_temperature = unwrap_temperature(model)
    if temperature is None:
        temperature = wrapped_temperature
    adapter = adapter_for(model)
    found = adapter.backbone(model)
    if found is None:
        raise TypeError(
            f"model must contain a {adapter.family} backbone to be saved, found none in {type(model).__name__}"
        )
    backbone_name, backbone = found
    structure = {
        "format_version": FORMAT_VERSION,
        "family": adapter.family,
        "backbone": {"path": backbone_name, "config": adapter.backbone_config(backbone)},
        "wrapper": None if backbone_name == "" else _wrapper_record(model),
        "layers": [_layer_record(adapter, layer) for _, layer in adapter.layers(model)],
        "token_pruning": tokens.token_pruning_settings(backbone),
    }
    if quant_mode(model) != "none":
        structure["quant"] = quant_mode(model)   # load_compressed quantizes the rebuilt model the same way
    if image_size is not None:
        structure["image_size"] = image_size
        if structure["token_pruning"] is not None:
            structure["token_pruning"]["schedule"] = tokens.schedule_at(backbone, image_size)
    if temperature is not None:
        structure[TEMPERATURE_KEY] = check_temperature(temperature, "temperature")
    clashes = sorted(set(extra or {}) & set(structure))
    if clashes:
        raise ValueError(f"extra must not replace the structure's own keys {clashes}")
    structure.update(extra or {})
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    weights = storable_state(model)  # int8 Linears as plain int8 weights with their scales
    # "format": "pt" is the metadata Hugging Face tools expect in a PyTorch safetensors file.
    save_file(weights, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / STRUCTURE_FILE).write_text(json.dumps(structure, indent=1, sort_keys=True))
    return directory


def load_compressed(path: str | Path, map_location: str | torch.device = "cpu", *,
                    calibrated: bool = True) -> nn.Module:
    """Return the model saved by save_compressed in `path`, rebuilt to its structure, in eval mode.

    When the save recorded a temperature T, the model comes wrapped in TemperatureScaled (logits / T)
    unless `calibrated=False`, which returns the raw logits; a save without one has T = 1.
    """
    directory = Path(path)
    structure_file, weights_file = directory / STRUCTURE_FILE, directory / WEIGHTS_FILE
    for required in (structure_file, weights_file):
        if not required.is_file():
            raise FileNotFoundError(f"compressed model file not found: {required} (written by save_compressed)")
    structure = _read_structure(structure_file)
    try:
        adapter = adapter_named(structure["family"])
    except ValueError as error:
        raise ValueError(f"{structure_file}: {error}") from None
    model = _rebuild_outer(adapter, structure, structure_file)
    layers = adapter.layers(model)
    if len(layers) != len(structure["layers"]):
        raise ValueError(
            f"{structure_file}: records {len(structure['layers'])} layers but the rebuilt model has {len(layers)}"
        )
    for index, ((_, layer), record) in enumerate(zip(layers, structure["layers"])):
        _check_layer_record(adapter, layer, record, f"{structure_file}: layers[{index}]")
        _apply_layer_record(adapter, layer, record)
    try:
        weights = load_file(str(weights_file), device=str(map_location))
    except SafetensorError as error:
        raise ValueError(
            f"cannot read {weights_file}: {error} — the file is truncated or not a safetensors file"
        ) from None
    model = quantize_model(model, structure.get("quant", "none"))
    _check_matches(model, weights, weights_file)
    load_storable_state(model, weights)
    model.to(map_location)
    settings = structure.get("token_pruning")
    if settings is not None:
        tokens.enable_token_pruning(model, settings["r_max"], settings["alpha"],
                                    fuse=settings.get("fuse", False))
    if calibrated and TEMPERATURE_KEY in structure:
        model = TemperatureScaled(model, check_temperature(structure[TEMPERATURE_KEY],
                                                           f"{structure_file}: {TEMPERATURE_KEY}"))
    return model.eval()


def _read_structure(structure_file: Path) -> dict[str, Any]:
    """Return the parsed structure.json, checked for the keys load_compressed reads."""
    try:
        structure = json.loads(structure_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{structure_file} is not valid JSON ({error}); rewrite it with save_compressed") from None
    if not isinstance(structure, dict):
        raise ValueError(f"{structure_file} must hold a JSON object, got {type(structure).__name__}")
    if structure.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{structure_file}: format_version {structure.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    missing = [key for key in ("family", "backbone", "wrapper", "layers") if key not in structure]
    if missing:
        raise ValueError(f"{structure_file} lacks key(s) {missing} (written by save_compressed)")
    if not isinstance(structure["layers"], list):
        raise ValueError(f"{structure_file}: 'layers' must be a list, got {type(structure['layers']).__name__}")
    return structure


def _check_layer_record(adapter, layer: nn.Module, record: Any, where: str) -> None:
    """Raise ValueError naming `where` unless the record only shrinks what the rebuilt layer has."""
    if not isinstance(record, dict) or not {"num_heads", "mlp_width", "low_rank"} <= set(record):
        raise ValueError(f"{where} must be an object with num_heads, mlp_width and low_rank, got {record!r}")
    for key, limit in (("num_heads", adapter.head_count(layer)), ("mlp_width", adapter.mlp_width(layer))):
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise ValueError(f"{where}.{key} must be an integer in [1, {limit}], got {value!r}")
    if not isinstance(record["low_rank"], dict):
        raise ValueError(f"{where}.low_rank must be an object {{role: rank}}, got {record['low_rank']!r}")
    for role, rank in record["low_rank"].items():
        if role not in adapter.linear_roles or adapter.linear(layer, role) is None:
            raise ValueError(f"{where}.low_rank: unknown role {role!r}; known: {', '.join(adapter.linear_roles)}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"{where}.low_rank.{role} must be a positive integer, got {rank!r}")


def _layer_record(adapter, layer: nn.Module) -> dict[str, Any]:
    low_rank = {}
    for role in adapter.linear_roles:
        module = adapter.linear(layer, role)
        if isinstance(module, LowRankLinear):
            low_rank[role] = module.rank
    return {"num_heads": adapter.head_count(layer), "mlp_width": adapter.mlp_width(layer), "low_rank": low_rank}


def _apply_layer_record(adapter, layer: nn.Module, record: dict[str, Any]) -> None:
    """Shape `layer` like the record: drop trailing heads/units, factorise the recorded linears."""
    if record["num_heads"] != adapter.head_count(layer):
        keep_heads(adapter, layer, torch.arange(record["num_heads"]))
    if record["mlp_width"] != adapter.mlp_width(layer):
        keep_units(adapter, layer, torch.arange(record["mlp_width"]))
    for role, rank in record["low_rank"].items():
        module = adapter.linear(layer, role)
        weight = module.weight
        replacement = LowRankLinear(
            module.in_features,
            module.out_features,
            rank,
            bias=linear_bias(module) is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        adapter.set_linear(layer, role, replacement)


def _wrapper_record(model: nn.Module) -> dict[str, Any]:
    cls = type(model)
    if not (callable(getattr(model, "spec", None)) and callable(getattr(cls, "from_spec", None))):
        raise TypeError(
            f"model {cls.__name__} wraps the backbone, so it must provide spec() -> dict and a "
            "classmethod from_spec(spec) for save_compressed to rebuild it"
        )
    spec = model.spec()
    try:
        json.dumps(spec)
    except TypeError as error:
        raise TypeError(f"{cls.__name__}.spec() must return a JSON-serialisable dict: {error}") from error
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "spec": spec}


def _rebuild_outer(adapter, structure: dict[str, Any], structure_file: Path) -> nn.Module:
    wrapper = structure["wrapper"]
    if wrapper is None:
        return adapter.build_backbone(structure["backbone"]["config"])
    name = wrapper.get("class") if isinstance(wrapper, dict) else None
    name = _MOVED_WRAPPERS.get(name, name)
    module_name, _, qualname = str(name).partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{structure_file}: wrapper class {name!r} cannot be imported ({error})") from None
    if not (isinstance(target, type) and issubclass(target, nn.Module) and callable(getattr(target, "from_spec", None))):
        raise ValueError(
            f"{structure_file}: wrapper class {name!r} is not an nn.Module class with from_spec(spec)"
        )
    return target.from_spec(wrapper["spec"])


def _check_matches(model: nn.Module, weights: dict[str, torch.Tensor], weights_file: Path) -> None:
    expected = storable_state(model)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights_file} does not match the recorded structure: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{weights_file} does not match the recorded structure: {name} has shape "
                f"{tuple(weights[name].shape)} in the file, {tuple(tensor.shape)} in the rebuilt model"
            )
