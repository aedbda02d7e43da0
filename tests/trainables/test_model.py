import pytest
import torch
from transformers import DINOv3ViTModel, ViTConfig, ViTModel

from trainables.model import ViTClassifier, backbone_config, build_classifier


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_vits16_has_the_published_parameter_count():
    model = build_classifier("dinov3-vits16", num_classes=2)
    assert round(count(model) / 1e6, 2) == 21.60


def test_vitb16_is_about_86m_parameters():
    config = backbone_config("dinov3-vitb16")
    with torch.device("meta"):
        model = DINOv3ViTModel(config)
    assert 85e6 < count(model) < 87e6


@pytest.mark.parametrize("pooling,width", [("cls", 96), ("mean", 96), ("cls+mean", 192)])
def test_pooling_sets_head_width_and_logit_shape(pooling, width):
    model = build_classifier("digits-vit", num_classes=10, pooling=pooling).eval()
    assert model.head.in_features == width
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_local_directory_round_trip(tmp_path):
    source = build_classifier("digits-vit", num_classes=2).backbone
    source.save_pretrained(tmp_path / "ckpt")
    loaded = build_classifier("digits-vit", num_classes=2, weights=tmp_path / "ckpt").backbone
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_of_another_family_is_refused(tmp_path):
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, image_size=32, patch_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'vit' checkpoint, not a DINOv3"):
        build_classifier("digits-vit", num_classes=2, weights=tmp_path)


def test_checkpoint_with_another_architecture_is_refused(tmp_path):
    build_classifier("digits-vit", num_classes=2).backbone.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden_size=96.*expects 384"):
        build_classifier("dinov3-vits16", num_classes=2, weights=tmp_path)


def test_missing_local_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_classifier("digits-vit", num_classes=2, weights=tmp_path / "nowhere")


def test_empty_directory_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_classifier("digits-vit", num_classes=2, weights=tmp_path)


def test_hub_id_offline_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="hf download"):
        build_classifier("dinov3-vits16", num_classes=2, weights="facebook/not-a-cached-model")


def test_spec_round_trip_rebuilds_the_architecture():
    model = build_classifier("digits-vit", num_classes=3, pooling="mean")
    clone = ViTClassifier.from_spec(model.spec())
    assert [p.shape for p in clone.parameters()] == [p.shape for p in model.parameters()]
    assert clone.pooling == "mean"


def test_bad_backbone_name_lists_the_choices():
    with pytest.raises(ValueError, match="digits-vit"):
        build_classifier("resnet50", num_classes=2)
