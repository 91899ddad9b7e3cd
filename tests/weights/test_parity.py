"""Conversion proved numerically: build the peer implementation with random weights, convert to
ours and back, compare logits and stage features (max |diff| <= 1e-4, fp32)."""
import pytest
import torch

from convnext.models import ConvNeXt, ConvNeXtConfig, create_model
from convnext.weights import convert_state_dict, detect_layout, load_checkpoint

from .conftest import randomize_

TOL = 1e-4


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= TOL, f"max |diff| = {diff:.2e}"


def roundtrip(ours: torch.nn.Module, peer: torch.nn.Module, layout: str, x: torch.Tensor, peer_logits, **kw) -> None:
    """Ours -> peer layout -> strict load into a freshly initialised peer -> same logits."""
    with torch.no_grad():
        for p in peer.parameters():
            p.zero_()
    peer.load_state_dict(convert_state_dict(ours.state_dict(), dst=layout, **kw), strict=True)
    with torch.no_grad():
        assert_close(peer_logits(peer, x), ours(x))


# ---------------------------------------------------------------------------------------- timm
timm = pytest.importorskip("timm")


@pytest.mark.parametrize(
    "timm_name, ours_name",
    [("convnext_atto", "convnext_atto"), ("convnextv2_atto", "convnextv2_atto")],  # conv_mlp=True, GRN (C,)
)
def test_timm_registered_models(timm_name, ours_name, images):
    peer = randomize_(timm.create_model(timm_name, pretrained=False))
    sd = peer.state_dict()
    assert detect_layout(sd) == "timm"
    ours = create_model(ours_name).eval()
    report = load_checkpoint(ours, sd)
    assert report.layout == "timm" and report.num_tensors == len(sd)
    with torch.no_grad():
        assert_close(ours(images), peer(images))
        theirs = peer.forward_intermediates(images, intermediates_only=True, norm=False)
        for a, b in zip(ours.forward_intermediates(images, norm=False), theirs, strict=True):
            assert_close(a, b)
    roundtrip(ours, peer, "timm", images, lambda m, x: m(x))


def test_timm_linear_mlp_needs_explicit_conv_mlp(images):
    # timm's tiny and larger use Linear MLPs; a small custom one shows the conv_mlp override matters.
    peer = randomize_(timm.models.convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), num_classes=7))
    ours = ConvNeXt(ConvNeXtConfig(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), num_classes=7)).eval()
    load_checkpoint(ours, peer.state_dict())
    with torch.no_grad():
        assert_close(ours(images), peer(images))
    inferred = convert_state_dict(ours.state_dict(), dst="timm")  # stem < 96 -> 1x1-conv MLP guessed
    assert inferred["stages.0.blocks.0.mlp.fc1.weight"].ndim == 4
    with pytest.raises(RuntimeError, match="size mismatch"):
        peer.load_state_dict(inferred)
    roundtrip(ours, peer, "timm", images, lambda m, x: m(x), conv_mlp=False)


# --------------------------------------------------------------------------------- torchvision
def test_torchvision_tiny(images):
    tv = pytest.importorskip("torchvision")
    peer = randomize_(tv.models.convnext_tiny(weights=None))
    sd = peer.state_dict()
    assert detect_layout(sd) == "torchvision"
    assert sd["features.1.0.layer_scale"].shape == (96, 1, 1)
    ours = create_model("convnext_tiny").eval()
    load_checkpoint(ours, sd)
    with torch.no_grad():
        assert_close(ours(images), peer(images))
        # peer.features interleaves [stem, stage0, down1, stage1, ...]; stage outputs are odd indices.
        feats, h = [], images
        for i, layer in enumerate(peer.features):
            h = layer(h)
            if i % 2 == 1:
                feats.append(h)
        for a, b in zip(ours.forward_intermediates(images, norm=False), feats, strict=True):
            assert_close(a, b)
    roundtrip(ours, peer, "torchvision", images, lambda m, x: m(x))


def test_torchvision_rejects_models_it_cannot_express():
    from convnext.weights import CheckpointError

    v2 = create_model("convnextv2_atto")
    with pytest.raises(CheckpointError, match="GRN"):
        convert_state_dict(v2.state_dict(), dst="torchvision")
    iso = create_model("convnext_isotropic_small")
    with pytest.raises(CheckpointError, match="isotropic"):
        convert_state_dict(iso.state_dict(), dst="timm")


# ------------------------------------------------------------------------------ HF transformers
@pytest.mark.parametrize("v2", [False, True], ids=["convnext", "convnextv2"])
def test_hf_transformers(v2, images):
    transformers = pytest.importorskip("transformers")
    depths, dims = [1, 2, 2, 1], [16, 32, 64, 128]
    if v2:
        cfg = transformers.ConvNextV2Config(depths=depths, hidden_sizes=dims, num_labels=5, layer_norm_eps=1e-6)
        peer = transformers.ConvNextV2ForImageClassification(cfg)
    else:
        # Official ConvNeXt uses eps 1e-6 in the final LN; HF's default there is 1e-12.
        cfg = transformers.ConvNextConfig(depths=depths, hidden_sizes=dims, num_labels=5, layer_norm_eps=1e-6)
        peer = transformers.ConvNextForImageClassification(cfg)
    peer = randomize_(peer)
    sd = peer.state_dict()
    assert detect_layout(sd) == "hf"
    config = ConvNeXtConfig(depths=tuple(depths), dims=tuple(dims), num_classes=5, use_grn=v2,
                            layer_scale_init_value=0.0 if v2 else 1e-6)
    ours = ConvNeXt(config).eval()
    load_checkpoint(ours, sd)
    with torch.no_grad():
        out = peer(pixel_values=images, output_hidden_states=True)
        assert_close(ours(images), out.logits)
        hidden = out.hidden_states[1:]  # [0] is the stem output
        for a, b in zip(ours.forward_intermediates(images, norm=False), hidden, strict=True):
            assert_close(a, b)
    roundtrip(ours, peer, "hf", images, lambda m, x: m(pixel_values=x).logits)

    # The bare backbone (ConvNextModel: no `convnext.` prefix, no classifier) loads into a headless model.
    backbone = peer.convnextv2 if v2 else peer.convnext
    headless = ConvNeXt(config.__class__(**{**config.__dict__, "num_classes": 0})).eval()
    load_checkpoint(headless, backbone.state_dict())
    with torch.no_grad():
        assert_close(headless(images), backbone(pixel_values=images).pooler_output)


# ---------------------------------------------------------------------------- official / V2
def test_official_v2_grn_shapes_and_identity():
    ours = create_model("convnextv2_atto")
    sd = ours.state_dict()
    assert detect_layout(sd) == "v2"
    assert sd["stages.0.0.grn.gamma"].shape == (1, 1, 1, 160)
    timm_sd = convert_state_dict(sd, dst="timm")
    assert timm_sd["stages.0.blocks.0.mlp.grn.weight"].shape == (160,)
    back = convert_state_dict(timm_sd, dst="v2")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    # A V2 file whose GRN was flattened to (C,) still loads.
    flat = {k: (v.flatten() if ".grn." in k else v) for k, v in sd.items()}
    load_checkpoint(create_model("convnextv2_atto"), flat)
