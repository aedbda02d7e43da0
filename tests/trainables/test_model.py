import pytest
import torch
from transformers import DINOv3ViTModel, ViTConfig, ViTModel

from trainables.model import ViTClassifier, backbone_config, build_classifier


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_vits16_has_the_published_parameter_count():
    with torch.device("meta"):  # shapes only: no 22M-parameter random init
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


def test_svd_taps_head_on_vits16_adds_the_notes_parameter_difference():
    with torch.device("meta"):
        linear = build_classifier("dinov3-vits16", num_classes=100)
        taps = build_classifier("dinov3-vits16", num_classes=100, head="svd_taps")
    head_params = count(taps.head)
    assert taps.taps == [3, 6, 9, 12] and head_params == 337_636
    assert count(taps) - count(linear) == head_params - count(linear.head)


def test_mlp_head_on_vits16_has_the_deit_logs_187108_parameters():
    with torch.device("meta"):
        linear = build_classifier("dinov3-vits16", num_classes=100)
        mlp = build_classifier("dinov3-vits16", num_classes=100, head="mlp")
    assert count(mlp.head) == 187_108 and count(linear.head) == 38_500
    assert count(mlp) - count(linear) == 187_108 - 38_500


def test_mlp_classifier_gives_logits_from_its_head_inputs_and_reloads(tmp_path):
    from compress import load_compressed, save_compressed

    torch.manual_seed(0)
    model = build_classifier("digits-vit", num_classes=2, head="mlp").eval()
    x = torch.randn(3, 3, 32, 32)
    inputs = model.head_inputs(x)
    assert inputs.shape == (3, 96) and (model.head.in_features, model.head.out_features) == (96, 2)
    assert torch.allclose(model.classify(inputs), model(x), atol=1e-5)
    save_compressed(model, tmp_path / "mlp")
    loaded = load_compressed(tmp_path / "mlp")
    assert loaded.head_type == "mlp" and torch.allclose(loaded(x), model(x), atol=1e-5)


def test_svd_taps_classifier_gives_logits_and_head_inputs():
    torch.manual_seed(0)
    model = build_classifier("digits-vit", num_classes=2, head="svd_taps").eval()
    x = torch.randn(3, 3, 32, 32)
    inputs = model.head_inputs(x)
    assert inputs.shape == (3, 96 + 4 * 66)
    assert torch.allclose(model.classify(inputs), model(x), atol=1e-5)


@pytest.mark.parametrize("fuse", [False, True])
def test_each_tap_sees_the_tokens_kept_at_its_depth(fuse):
    from compress import enable_token_pruning

    model = build_classifier("digits-vit", num_classes=2, head="svd_taps").eval()
    summary = enable_token_pruning(model, 0.5, 1.0, fuse=fuse)
    _, taps = model._pooled_and_taps(torch.randn(2, 3, 32, 32))
    assert [t.shape[1] for t in taps] == [summary["schedule"][layer - 1] for layer in model.taps]
    assert taps[-1].shape[1] < taps[0].shape[1] < 64


def test_svd_taps_model_saves_and_loads_with_token_pruning(tmp_path):
    from compress import CompressionPlan, TokenPlan, compress_model, load_compressed, save_compressed

    torch.manual_seed(0)
    model = build_classifier("digits-vit", num_classes=2, head="svd_taps").eval()
    compressed, _ = compress_model(model, CompressionPlan(tau_heads=0.8, tau_mlp=0.9, tau_svd=0.9),
                                   tokens=TokenPlan(r_max=0.5, alpha=1.0))
    for name, tensor in model.head.state_dict().items():  # compression leaves the head alone
        assert torch.equal(tensor, compressed.head.state_dict()[name]), name
    save_compressed(compressed, tmp_path / "m")
    loaded = load_compressed(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    assert loaded.head_type == "svd_taps"
    assert torch.allclose(loaded(x), compressed.eval()(x), atol=1e-6)
    assert not any(p.requires_grad for p in loaded.head.projections.parameters())


def test_lora_trains_the_svd_taps_classifier_not_its_projections():
    from trainables.model import wrap_lora

    model = wrap_lora(build_classifier("digits-vit", num_classes=2, head="svd_taps"), rank=2, alpha=4,
                      include_mlp=False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("head" in name and "classifier" in name for name in trainable)
    assert not any("projections" in name for name in trainable)
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_unknown_head_lists_the_choices():
    with pytest.raises(ValueError, match="model.head must be one of linear, mlp, svd_taps"):
        build_classifier("digits-vit", num_classes=2, head="transformer")


def test_lora_merge_leaves_outputs_unchanged():
    from trainables.model import finalize_model, wrap_lora

    torch.manual_seed(0)
    model = wrap_lora(build_classifier("digits-vit", 2), rank=4, alpha=8, include_mlp=True)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)  # B starts at zero: make the adapters matter
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        adapted = model.eval()(x)
        merged_model = finalize_model(model).eval()
        merged = merged_model(x)
    assert not any("lora" in name for name, _ in merged_model.named_parameters())
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
