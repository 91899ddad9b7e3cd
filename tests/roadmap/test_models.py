"""The roadmap networks are the paper's (Tables 10/11): MACs, structure of each step, ResNet/ConvNeXt endpoints."""
import dataclasses

import pytest
import torch
import torchvision
from torch import nn

import convnext
from convnext.models import Block, ConvNeXt, LayerNorm2d, build_model, count_flops, count_params, get_spec
from convnext.models.roadmap import (
    REGIMES,
    STEP_NAMES,
    ResidualBlock,
    RoadmapConfig,
    RoadmapNet,
    from_torchvision_resnet,
    roadmap_steps,
)

ALL = [f"roadmap_{r}_{s}" for r in REGIMES for s in STEP_NAMES]

# PAPER.md §2.2/2.3 column [D]: analytic conv+linear MACs of the reconstructed networks (GMACs).
ANALYTIC = {
    "r50": dict(baseline=4.089, stage_ratio=4.526, patchify=4.418, depthwise=2.350, widen=5.268, inverted=4.644,
                move_up_dw=4.065, kernel5=4.097, kernel7=4.146, kernel9=4.210, kernel11=4.291, gelu=4.146,
                fewer_act=4.146, fewer_norm=4.146, layernorm=4.146, sep_downsample=4.456),
    "r200": dict(baseline=15.007, stage_ratio=14.518, patchify=14.376, depthwise=7.234, widen=16.764,
                 inverted=15.679, move_up_dw=14.627, kernel5=14.699, kernel7=14.807, kernel9=14.950,
                 kernel11=15.130, sep_downsample=15.355),
}


def _meta(config):
    with torch.device("meta"):
        return build_model(config)


def test_all_32_registered_in_order():
    assert convnext.list_models("roadmap_*") == ALL


@pytest.mark.parametrize("regime", REGIMES)
def test_gflops_match_paper(regime):
    for step in roadmap_steps(regime):
        name = f"roadmap_{regime}_{step.name}"
        spec = get_spec(name)
        assert spec.gmacs == {224: step.paper_gflops} and spec.top1 == step.paper_top1
        macs = count_flops(_meta(spec.config), 224) / 1e9
        assert macs == pytest.approx(spec.gmacs[224], rel=0.03), name  # the tolerance
        if step.name in ANALYTIC[regime]:  # and the exact reconstruction, to 1 MMAC
            assert macs == pytest.approx(ANALYTIC[regime][step.name], abs=1.5e-3), name


@pytest.mark.parametrize("regime, reference", [("r50", "convnext_tiny"), ("r200", "convnext_base")])
def test_last_step_is_convnext(regime, reference):
    ours = _meta(get_spec(f"roadmap_{regime}_sep_downsample").config)
    ref = _meta(get_spec(reference).config)
    assert isinstance(ours, ConvNeXt) and ours.config == ref.config
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert count_params(ours) == count_params(ref)


def test_baseline_is_torchvision_resnet50():
    tv = torchvision.models.resnet50(weights=None).eval()
    for m in tv.modules():  # non-trivial BN statistics so the transfer of buffers is tested too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    ours = convnext.create_model("roadmap_r50_baseline").eval()
    ours.load_state_dict(from_torchvision_resnet(tv.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-4)
    assert count_params(ours) == count_params(tv)


@pytest.mark.parametrize("regime", REGIMES)
def test_each_step_is_a_small_declared_change_of_an_adopted_step(regime):
    steps = {s.name: s for s in roadmap_steps(regime)}
    assert [s.name for s in steps.values()] == list(STEP_NAMES)
    assert [n for n, s in steps.items() if not s.adopted] == ["kernel5", "kernel9", "kernel11"]
    assert steps["gelu"].builds_on == "kernel7"
    for step in steps.values():
        if step.builds_on is None:
            continue
        parent = steps[step.builds_on]
        assert parent.adopted
        changed = {f.name for f in dataclasses.fields(RoadmapConfig)
                   if getattr(step.config, f.name) != getattr(parent.config, f.name)}
        assert 1 <= len(changed) <= 2, (step.name, changed)
        assert step.change


def _blocks(model):
    return [b for stage in model.stages for b in stage]


def test_block_structure_follows_the_steps():
    def model(step):
        return _meta(get_spec(f"roadmap_r50_{step}").config)

    # baseline: ReLU after 2 convs and after the add, 3 BNs, 3x3 full conv with the stride
    b = _blocks(model("baseline"))[3]  # first block of stage 2
    assert isinstance(b.act, nn.ReLU) and b.conv2.stride == (2, 2) and b.conv2.groups == 1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in b.modules()) == 4  # 3 + shortcut
    assert _blocks(model("depthwise"))[0].conv2.groups == 64
    inv = _blocks(model("inverted"))
    assert isinstance(inv[0].shortcut, nn.Identity)  # stem width 96 == C: identity in stage 1
    assert inv[3].conv1.out_channels == 4 * 192 and inv[3].shortcut.conv.in_channels == 96
    up = _blocks(model("move_up_dw"))[3]
    assert up.conv1.groups == 96 and up.conv1.stride == (2, 2) and up.conv2.out_channels == 768
    assert _blocks(model("kernel7"))[0].conv1.kernel_size == (7, 7)
    assert all(isinstance(m, nn.GELU) for m in model("gelu").modules() if isinstance(m, (nn.GELU, nn.ReLU)))
    fa = _blocks(model("fewer_act"))[0]
    assert [type(m) for m in (fa.act1, fa.act2, fa.act)] == [nn.Identity, nn.GELU, nn.Identity]
    fnorm = _blocks(model("fewer_norm"))[3]
    assert [type(m) for m in (fnorm.norm1, fnorm.norm2, fnorm.norm3)] == [nn.BatchNorm2d, nn.Identity, nn.Identity]
    assert fnorm.gamma is not None
    ln = model("layernorm")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ln.modules())
    blocks = _blocks(ln)
    strided = [b for b in blocks if isinstance(b, ResidualBlock)]
    assert len(strided) == 3 and all(isinstance(b.shortcut.norm, LayerNorm2d) for b in strided)
    assert all(isinstance(b, Block) for b in blocks if b not in strided)  # the ConvNeXt block itself


def test_layernorm_step_blocks_compute_the_convnext_block():
    # A strided ResidualBlock at the LN step with stride 1 and identity shortcut would be the ConvNeXt
    # Block: same maths with conv 1x1 instead of Linear. Check on copied weights.
    cfg = get_spec("roadmap_r50_layernorm").config
    ours = ResidualBlock(cfg, 32, 32)
    ref = Block(32, kernel_size=7)
    with torch.no_grad():
        ref.dwconv.load_state_dict(ours.conv1.state_dict())
        ref.norm.load_state_dict(ours.norm1.state_dict())
        ref.pwconv1.weight.copy_(ours.conv2.weight.flatten(1))
        ref.pwconv1.bias.copy_(ours.conv2.bias)
        ref.pwconv2.weight.copy_(ours.conv3.weight.flatten(1))
        ref.pwconv2.bias.copy_(ours.conv3.bias)
        ours.gamma.fill_(0.5)
        ref.gamma.fill_(0.5)
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_small_input_shapes_every_step():
    # Full-size networks on the meta device: the small-input stem makes 8x8 inputs valid at every step
    # (R200 steps differ from R50 ones only in depths and widths).
    for step in roadmap_steps("r50"):
        model = _meta(dataclasses.replace(step.config, small_input=True, num_classes=10))
        assert model.stride == 8, step.name
        feats = model.forward_features(torch.empty(2, 3, 8, 8, device="meta"))
        assert feats.shape[1:] == (model.num_features, 1, 1) and model.forward_head(feats).shape == (2, 10)


def test_small_input_trains_every_step():
    # Real forward/backward of every R50 step, narrowed (widths / 8, one block per stage) to stay fast.
    for step in roadmap_steps("r50"):
        cfg = dataclasses.replace(step.config, small_input=True, num_classes=10, depths=(1, 1, 1, 1),
                                  widths=tuple(w // 8 for w in step.config.widths))
        model = build_model(cfg)
        out = model(torch.randn(4, 3, 8, 8))
        out.logsumexp(1).mean().backward()
        assert out.shape == (4, 10) and torch.isfinite(out).all(), step.name
        assert all(p.grad is not None for p in model.parameters()), step.name


def test_create_model_with_overrides():
    m = convnext.create_model("roadmap_r50_kernel7", num_classes=10, small_input=True, drop_path_rate=0.1).eval()
    assert isinstance(m, RoadmapNet) and m.num_classes == 10 and m.config.small_input
    assert m.forward_head(m.forward_features(torch.randn(2, 3, 8, 8)), pre_logits=True).shape == (2, 768)
    c = convnext.create_model("roadmap_r50_sep_downsample", num_classes=10, small_input=True)
    assert isinstance(c, ConvNeXt) and c.config.stem_patch_size == 1


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="block must be one of"):
        RoadmapConfig(block="resnext")
    with pytest.raises(ValueError, match="sep_downsample yields ConvNeXt"):
        RoadmapConfig(sep_downsample=True)
    with pytest.raises(ValueError, match="build_roadmap"):
        RoadmapNet(get_spec("roadmap_r50_sep_downsample").config)
    with pytest.raises(ValueError, match="unknown roadmap regime"):
        roadmap_steps("r101")


def test_config_roundtrip():
    from convnext.models import config_from_dict, config_to_dict

    cfg = get_spec("roadmap_r200_fewer_norm").config
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_model_contract():
    cfg = dataclasses.replace(get_spec("roadmap_r50_inverted").config, depths=(1, 1, 1, 1), widths=(8, 16, 32, 64))
    model = build_model(cfg).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_intermediates(x)
    expected = [(i["num_chs"], 64 // i["reduction"], 64 // i["reduction"]) for i in model.feature_info]
    assert [f.shape[1:] for f in feats] == expected == [(8, 16, 16), (16, 8, 8), (32, 4, 4), (64, 2, 2)]
    torch.testing.assert_close(model.forward_intermediates(x, norm=False)[-1], model.forward_features(x))
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    assert model(torch.randn(1, 3, 40, 47)).shape == (1, 5)  # any size from the total stride up, as ConvNeXt
    with pytest.raises(ValueError, match="at least 32 pixels"):
        model(torch.randn(1, 3, 31, 64))
