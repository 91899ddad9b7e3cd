"""UperNet-ConvNeXt against a peer implementation: HF transformers' `UperNetForSemanticSegmentation`.

The peer model has every tensor randomised (norm weights and biases, layer scale, BatchNorm running
statistics), is written in the OpenMMLab mmseg layout by inverting transformers' own conversion table
(`models/upernet/convert_convnext_upernet_to_pytorch.py`, which maps the mmseg zoo's names onto
HF's), and is loaded through our public entry points. Logits must agree at sizes that are not
multiples of 32, on the whole image and with mmseg's sliding window (HF has none: the reference
below runs HF on each of mmseg's windows).
"""
import pytest
import torch

import convnext
from convnext.dense.mmseg_keys import load_mmseg_checkpoint
from convnext.dense.seg_inference import slide_inference
from convnext.testing import randomise_

transformers = pytest.importorskip("transformers")

DEPTHS, DIMS = (2, 2, 6, 2), (40, 80, 160, 320)  # ConvNeXt-atto: registered as upernet_convnext_atto
NUM_CLASSES, CHANNELS, AUX_CHANNELS = 19, 64, 32


def _hf_model() -> torch.nn.Module:
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(depths=list(DEPTHS), hidden_sizes=list(DIMS),
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, num_labels=NUM_CLASSES, hidden_size=CHANNELS,
                           use_auxiliary_head=True, auxiliary_in_channels=DIMS[2], auxiliary_channels=AUX_CHANNELS)
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(config).eval()
    return randomise_(model, seed=1)  # every tensor: norms, layer scale, BatchNorm statistics


def _hf_names_of_the_conversion_script(sd: dict) -> dict:
    """transformers >= 5 stores the backbone without the `convnext.` prefix and names the stage norms
    `hidden_states_norms.stage{i+1}`; the conversion script writes `backbone.convnext.*` and
    `hidden_states_norms.{i}` (its loader maps the two). Bring the keys to the script's names."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("backbone.embeddings.", "backbone.encoder.")):
            k = "backbone.convnext." + k[len("backbone."):]
        for i in range(4):
            k = k.replace(f"backbone.hidden_states_norms.stage{i + 1}.", f"backbone.hidden_states_norms.{i}.")
        out[k] = v
    return out


def _mmseg_from_hf_table(depths) -> list[tuple[str, str]]:
    """transformers' `create_rename_keys`, inverted: (HF name, mmseg name) pairs."""
    pairs = [
        ("backbone.convnext.embeddings.patch_embeddings.weight", "backbone.downsample_layers.0.0.weight"),
        ("backbone.convnext.embeddings.patch_embeddings.bias", "backbone.downsample_layers.0.0.bias"),
        ("backbone.convnext.embeddings.layernorm.weight", "backbone.downsample_layers.0.1.weight"),
        ("backbone.convnext.embeddings.layernorm.bias", "backbone.downsample_layers.0.1.bias"),
    ]
    for i, depth in enumerate(depths):
        hf = f"backbone.convnext.encoder.stages.{i}"
        for j in range(depth):
            for theirs, mine in (("layer_scale_parameter", "gamma"), ("dwconv.weight", "depthwise_conv.weight"),
                                 ("dwconv.bias", "depthwise_conv.bias"), ("layernorm.weight", "norm.weight"),
                                 ("layernorm.bias", "norm.bias"), ("pwconv1.weight", "pointwise_conv1.weight"),
                                 ("pwconv1.bias", "pointwise_conv1.bias"), ("pwconv2.weight", "pointwise_conv2.weight"),
                                 ("pwconv2.bias", "pointwise_conv2.bias")):
                pairs.append((f"{hf}.layers.{j}.{theirs}", f"backbone.stages.{i}.{j}.{mine}"))
        if i > 0:
            for p in ("0.weight", "0.bias", "1.weight", "1.bias"):
                pairs.append((f"{hf}.downsampling_layer.{p}", f"backbone.downsample_layers.{i}.{p}"))
        for p in ("weight", "bias"):
            pairs.append((f"backbone.hidden_states_norms.{i}.{p}", f"backbone.norm{i}.{p}"))
    for head in ("decode_head", "auxiliary_head"):
        for p in ("weight", "bias"):
            pairs.append((f"{head}.classifier.{p}", f"{head}.conv_seg.{p}"))
    return pairs


def _to_mmseg(hf_sd: dict) -> dict:
    """HF UperNet state dict -> the mmseg 1.x zoo layout (mmpretrain backbone names, `bn`)."""
    sd = _hf_names_of_the_conversion_script(hf_sd)
    table = dict(_mmseg_from_hf_table(DEPTHS))
    out = {}
    for k, v in sd.items():
        if k in table:
            out[table[k]] = v.clone()
        else:  # every other key: the script's only rule was "bn" -> "batch_norm"
            assert k.startswith(("decode_head.", "auxiliary_head.")), k
            out[k.replace("batch_norm", "bn")] = v.clone()
    return out


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    hf = _hf_model()
    sd = _to_mmseg(hf.state_dict())
    assert len(sd) == len(hf.state_dict())
    assert "backbone.stages.2.5.pointwise_conv1.weight" in sd and "decode_head.psp_modules.3.1.bn.running_var" in sd
    path = tmp_path_factory.mktemp("mmseg") / "upernet_convnext_atto_mmseg.pth"
    meta = {"dataset_meta": {"classes": [f"class{i}" for i in range(NUM_CLASSES)]}, "mmseg_version": "1.2.2"}
    torch.save({"state_dict": sd, "meta": meta}, path)
    return hf, path


def _hf_logits(hf, x):
    with torch.no_grad():
        return hf(pixel_values=x).logits


def _assert_same(ours: torch.Tensor, ref: torch.Tensor, what: str):
    assert ours.shape == ref.shape
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    agree = (ours.argmax(1) == ref.argmax(1)).float().mean().item()
    print(f"{what}: max |ours - HF| / max |HF| = {rel:.2e}, argmax agreement {100 * agree:.2f}%")  # pytest -s
    assert rel <= 1e-4 and agree >= 0.9999, (rel, agree)


def _ours_both_ways(path):
    head = dict(num_classes=NUM_CLASSES, channels=CHANNELS, aux_channels=AUX_CHANNELS)  # the peer's head widths
    by_name = convnext.create_model("upernet_convnext_atto", checkpoint=path, **head).eval()
    loader = convnext.create_model("upernet_convnext_atto", **head)
    meta = load_mmseg_checkpoint(loader, path)
    assert meta["dataset_meta"]["classes"][3] == "class3"
    return by_name, loader.eval()


def test_whole_image_logits_equal_hf(peer):
    hf, path = peer
    x = torch.randn(1, 3, 96, 140, generator=torch.Generator().manual_seed(2))  # 140 = 4 * 35: no multiple of 32
    ref = _hf_logits(hf, x)
    for how, model in zip(("create_model(checkpoint=)", "load_mmseg_checkpoint"), _ours_both_ways(path)):
        with torch.no_grad():
            _assert_same(model(x), ref, f"whole 96x140, {how}")


def _reference_slide(hf, x, crop, stride):
    """mmseg 1.x `slide_inference` around HF: windows every `stride`, the last one shifted back to
    end at the border, a side smaller than the crop taken whole (no padding); logits averaged."""
    _, _, h, w = x.shape
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    total = torch.zeros(1, NUM_CLASSES, h, w)
    count = torch.zeros(1, 1, h, w)
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            total[..., y1:y2, x1:x2] += _hf_logits(hf, x[..., y1:y2, x1:x2])
            count[..., y1:y2, x1:x2] += 1
            windows.append((y1, y2, x1, x2))
    return total / count, windows


def test_sliding_window_logits_equal_hf(peer):
    hf, path = peer
    # 80 < crop: every window is 80 px high (not a multiple of 32); 171 wide: 3 overlapping columns
    x = torch.randn(1, 3, 80, 171, generator=torch.Generator().manual_seed(3))
    ref, windows = _reference_slide(hf, x, crop=96, stride=64)
    assert windows == [(0, 80, 0, 96), (0, 80, 64, 160), (0, 80, 75, 171)]
    model, _ = _ours_both_ways(path)
    _assert_same(slide_inference(model, x, crop=96, stride=64), ref, "slide 80x171, crop 96, stride 64")
