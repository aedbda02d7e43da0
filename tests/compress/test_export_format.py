"""The loadable format of an exported model: one round trip per compression kind, loaded without trainables."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_vit import shape_spectra, tiny_config
from transformers import DINOv3ViTModel

from compress import (
    CompressionPlan,
    LowRankLinear,
    collect_input_stats,
    compress_model,
    enable_token_pruning,
    load_compressed,
    lowrank_penalty,
    prune_attention_heads,
    prune_mlp_neurons,
    save_compressed,
    truncate_svd,
)
from compress.classifier import ViTClassifier

REPO = Path(__file__).resolve().parents[2]


def _classifier(seed: int = 0) -> ViTClassifier:
    torch.manual_seed(seed)
    model = ViTClassifier(DINOv3ViTModel(tiny_config()), num_classes=2).eval()
    shape_spectra(model.backbone, seed=seed)
    return model


def _heads(model, pixels):
    prune_attention_heads(model, 0.6)
    return model


def _mlp(model, pixels):
    prune_mlp_neurons(model, 0.6)
    return model


def _raw_svd(model, pixels):
    truncate_svd(model, 0.7)
    return model


def _whitened_svd(model, pixels):
    stats = collect_input_stats(model, [pixels])
    compressed, _ = compress_model(model, CompressionPlan(tau_svd=0.7, svd_space="whitened"), calibration=stats)
    return compressed


def _tokens(model, pixels):
    enable_token_pruning(model, 0.5, 1.0)
    return model


def _lora_merged(model, pixels):
    wrapped = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                               init_lora_weights=False))
    merged = wrapped.merge_and_unload()
    truncate_svd(merged, 0.8)
    return merged


def _prehab(model, pixels):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        lowrank_penalty(model, "nuclear_ratio").backward()
        optimizer.step()
    truncate_svd(model, 0.7)
    return model.eval()


KINDS = {"heads": _heads, "mlp": _mlp, "raw_svd": _raw_svd, "whitened_svd": _whitened_svd,
         "token_pruning": _tokens, "lora_merged": _lora_merged, "prehab": _prehab}


def _structure_shows(kind: str, structure: dict) -> bool:
    layers = structure["layers"]
    if kind == "heads":
        return any(layer["num_heads"] < 4 for layer in layers)
    if kind == "mlp":
        return any(layer["mlp_width"] < 128 for layer in layers)
    if kind == "token_pruning":
        return structure["token_pruning"]["schedule"][-1] < 16
    return any(layer["low_rank"] for layer in layers)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_compression_kind_round_trips_to_equal_logits(kind, tmp_path):
    pixels = torch.randn(4, 3, 32, 32)
    model = KINDS[kind](_classifier(), pixels)
    directory = save_compressed(model, tmp_path / kind, image_size=32)
    structure = json.loads((directory / "structure.json").read_text())
    assert _structure_shows(kind, structure)
    loaded = load_compressed(directory)
    with torch.no_grad():
        assert torch.allclose(loaded(pixels), model(pixels), rtol=0, atol=1e-6)


def test_lora_merged_model_saves_plain_linears(tmp_path):
    model = _lora_merged(_classifier(), None)
    loaded = load_compressed(save_compressed(model, tmp_path / "m"))
    names = [name for name, _ in loaded.named_modules()]
    assert not any("lora" in name for name in names)
    assert any(isinstance(module, LowRankLinear) for module in loaded.modules())


def test_token_schedule_is_recorded_at_the_given_image_size(tmp_path):
    model = _classifier()
    enable_token_pruning(model, 0.6, 1.0)
    structure = json.loads((save_compressed(model, tmp_path / "m", image_size=64) / "structure.json").read_text())
    assert structure["image_size"] == 64
    assert structure["token_pruning"]["schedule"][0] < 64  # (64 / 8)^2 patches at 64 px, not 16


def test_model_saved_under_the_old_wrapper_name_still_loads(tmp_path):
    model = _heads(_classifier(), None)
    directory = save_compressed(model, tmp_path / "m")
    path = directory / "structure.json"
    structure = json.loads(path.read_text())
    assert structure["wrapper"]["class"] == "compress.classifier:ViTClassifier"
    structure["wrapper"]["class"] = "trainables.model:ViTClassifier"
    path.write_text(json.dumps(structure))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_compressed(directory)(pixels), model(pixels))


LOAD_WITHOUT_TRAINABLES = """
import sys, torch
from compress import load_compressed
model = load_compressed(sys.argv[1])
with torch.no_grad():
    logits = model(torch.load(sys.argv[2]))
torch.save(logits, sys.argv[3])
banned = sorted(m for m in sys.modules if m.split(".")[0] in ("trainables", "tune", "ray", "optuna"))
assert not banned, banned
"""


@pytest.mark.slow  # a fresh Python process imports torch and transformers
def test_a_fresh_process_loads_it_without_trainables_or_tune(tmp_path):
    pixels = torch.randn(3, 3, 32, 32)
    model = _tokens(_raw_svd(_mlp(_heads(_classifier(), pixels), pixels), pixels), pixels)
    directory = save_compressed(model, tmp_path / "m", image_size=32)
    torch.save(pixels, tmp_path / "pixels.pt")
    subprocess.run([sys.executable, "-c", LOAD_WITHOUT_TRAINABLES, str(directory), str(tmp_path / "pixels.pt"),
                    str(tmp_path / "logits.pt")], check=True, cwd=REPO, timeout=300)
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "logits.pt"), model(pixels), rtol=0, atol=1e-6)
