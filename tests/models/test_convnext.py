"""Behaviour of the hierarchical and isotropic models: structure, API contract, numerics."""
import pytest
import torch
import torch.nn.functional as F

import convnext
from convnext.models import LayerNorm2d

SMALL = ["convnext_atto", "convnext_isotropic_small", "convnextv2_atto"]


def tiny_iso(**kw):
    return convnext.create_model("convnext_isotropic_small", depth=4, dim=64, **kw)


def build(name, **kw):
    return tiny_iso(**kw) if name == "convnext_isotropic_small" else convnext.create_model(name, **kw)


def test_official_state_dict_keys():
    sd = convnext.create_model("convnext_tiny").state_dict()
    for k in [
        "downsample_layers.0.0.weight", "downsample_layers.0.1.weight", "downsample_layers.1.0.bias",
        "downsample_layers.3.1.weight", "stages.0.0.dwconv.weight", "stages.0.0.norm.weight",
        "stages.2.8.pwconv1.weight", "stages.3.2.pwconv2.bias", "stages.3.2.gamma", "norm.weight", "head.bias",
    ]:
        assert k in sd, k
    assert sd["stages.0.0.gamma"].shape == (96,) and torch.all(sd["stages.0.0.gamma"] == 1e-6)
    assert sd["stages.0.0.dwconv.weight"].shape == (96, 1, 7, 7)
    assert sd["stages.0.0.pwconv1.weight"].shape == (384, 96)
    iso = convnext.create_model("convnext_isotropic_small").state_dict()
    assert "stem.weight" in iso and "blocks.17.dwconv.weight" in iso and "blocks.0.gamma" not in iso
    with torch.device("meta"):  # keys only: 306 M parameters are not worth initialising
        assert "blocks.0.gamma" in convnext.create_model("convnext_isotropic_large").state_dict()


def test_init_statistics():
    m = convnext.create_model("convnext_tiny")
    w = m.stages[2][0].pwconv1.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(m.stages[2][0].pwconv1.bias == 0)
    h = convnext.create_model("convnext_tiny", head_init_scale=0.001).head.weight
    assert h.std().item() == pytest.approx(2e-5, rel=0.1)


def test_layer_scale_zero_disables_gamma():
    m = convnext.create_model("convnext_atto", layer_scale_init_value=0)
    assert m.stages[0][0].gamma is None and not any("gamma" in k for k in m.state_dict())


def test_drop_path_linear_schedule():
    m = convnext.create_model("convnext_tiny", drop_path_rate=0.1)
    blocks = [b for s in m.stages for b in s]
    rates = [getattr(b.drop_path, "p", 0.0) for b in blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1)
    assert rates == pytest.approx([0.1 * i / 17 for i in range(18)])


@pytest.mark.parametrize("name", SMALL)
def test_api_contract(name):
    m = build(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    logits = m(x)
    assert logits.shape == (2, 10)
    feats = m.forward_features(x)
    assert torch.allclose(m.forward_head(feats), logits)
    pre = m.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, m.num_features)
    inter = m.forward_intermediates(x)
    assert len(inter) == len(m.feature_info)
    for f, info in zip(inter, m.feature_info):
        assert f.shape == (2, info["num_chs"], 64 // info["reduction"], 64 // info["reduction"])
        # each intermediate output is LayerNormed over channels
        assert torch.allclose(f.mean(1), torch.zeros_like(f.mean(1)), atol=1e-4)
    # last intermediate (before its norm) equals forward_features
    assert torch.allclose(m.forward_intermediates(x, norm=False)[-1], feats, atol=1e-6)
    m.reset_classifier(5)
    assert m(x).shape == (2, 5) and m.num_classes == 5
    m.reset_classifier(0)
    assert m(x).shape == (2, m.num_features)


def test_stage_norms_learnable():
    m = convnext.create_model("convnext_atto", stage_norms=True).eval()
    assert "stage_norms.0.weight" in m.state_dict()
    x = torch.randn(1, 3, 64, 64)
    ref = m.forward_intermediates(x)
    with torch.no_grad():
        m.stage_norms[1].bias.fill_(1.0)
    out = m.forward_intermediates(x)
    assert torch.allclose(out[0], ref[0]) and torch.allclose(out[1], ref[1] + 1.0, atol=1e-5)


def test_hierarchical_feature_info():
    m = convnext.create_model("convnext_tiny")
    assert [f["num_chs"] for f in m.feature_info] == [96, 192, 384, 768]
    assert [f["reduction"] for f in m.feature_info] == [4, 8, 16, 32]


@pytest.mark.parametrize("name,bad", [("convnext_atto", 31), ("convnext_isotropic_small", 15)])
def test_bad_input_size_is_clear(name, bad):
    m = build(name)
    with pytest.raises(ValueError, match=f"at least {m.stride} pixels"):
        m(torch.randn(1, 3, bad, 64))
    with pytest.raises(ValueError, match="expects input of shape"):
        m(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("hw", [(225, 225), (33, 47)])
def test_any_input_size_floors_through_the_strides(name, hw):
    # Like the official code, timm and torchvision: every strided conv floors, 225 -> 56 -> 28 -> 14 -> 7.
    m = build(name, num_classes=10).eval()
    h, w = hw
    x = torch.randn(1, 3, h, w)
    assert m(x).shape == (1, 10)
    sizes = [tuple(f.shape[-2:]) for f in m.forward_intermediates(x)]
    if m.stride == 32:  # hierarchical: 4x4/4 stem then three 2x2/2 downsamplings
        assert sizes == [(h // 4, w // 4), (h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
        assert sizes[-1] == ((7, 7) if h == 225 else (1, 1))
    else:  # isotropic: one 16x16/16 patchify stem
        assert sizes == [(h // 16, w // 16)] * 4
    assert tuple(m.forward_features(x).shape[-2:]) == sizes[-1]


def test_non_square_and_large_inputs():
    m = convnext.create_model("convnext_atto").eval()
    assert m(torch.randn(1, 3, 96, 160)).shape == (1, 1000)


def test_small_image_stem():
    m = convnext.create_model("convnext_atto", stem_patch_size=1, num_classes=10).eval()
    assert m.stride == 8
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_layernorm2d_matches_official_formula():
    ln = LayerNorm2d(8)
    with torch.no_grad():
        ln.weight.uniform_()
        ln.bias.uniform_()
    x = torch.randn(2, 8, 5, 5) * 3 + 1
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    ref = ln.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + ln.bias[:, None, None]
    assert torch.allclose(ln(x), ref, atol=1e-5)


def test_layernorm2d_fp16_safe():
    # values whose square overflows fp16 (>65504): the official hand-written formula gives inf/nan
    ln = LayerNorm2d(4)
    x = (torch.randn(1, 4, 3, 3) * 400).half()
    if not hasattr(torch, "float16"):
        pytest.skip()
    with torch.autocast("cpu", dtype=torch.float16):
        y = ln(x)
    assert torch.isfinite(y).all()
    assert torch.allclose(y.float(), ln(x.float()), atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    m = convnext.create_model("convnext_atto").eval()
    x = torch.randn(2, 3, 64, 64)
    ref = m(x)
    with torch.autocast("cpu", dtype=dtype):
        out = m(x)
    assert torch.isfinite(out).all()
    assert F.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0) > 0.99


def test_channels_last_equivalent():
    m = convnext.create_model("convnext_atto").eval()
    x = torch.randn(2, 3, 64, 64)
    ref = m(x)
    m = m.to(memory_format=torch.channels_last)
    out = m(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("name", SMALL)
def test_grad_checkpointing_same_grads(name):
    m = build(name, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    m(x).sum().backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).sum().backward()
    for a, p in zip(ref, m.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5)


def test_drop_path_active_only_in_training():
    m = convnext.create_model("convnext_atto", drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, m(x))


def test_no_graph_breaks():
    import torch._dynamo

    m = convnext.create_model("convnext_atto", drop_path_rate=0.1).eval()
    explanation = torch._dynamo.explain(m)(torch.randn(1, 3, 64, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    iso = tiny_iso().eval()
    assert torch._dynamo.explain(iso)(torch.randn(1, 3, 64, 64)).graph_break_count == 0


def test_grn_matches_v2_formula():
    from convnext.models import GRN

    g = GRN(6)
    with torch.no_grad():
        g.gamma.normal_()
        g.beta.normal_()
    x = torch.randn(2, 4, 4, 6)
    gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    assert torch.allclose(g(x), g.gamma * (x * nx) + g.beta + x, atol=1e-6)
