"""UperNet on ConvNeXt: paper params/FLOPs, the model contract, training, inference helpers, ONNX, weights."""
import dataclasses

import pytest
import torch
from torch import nn

import convnext
from convnext.dense.backbone import DenseConvNeXt
from convnext.dense.seg_inference import multiscale_inference, slide_inference
from convnext.dense.segmentation import UperNet, load_backbone
from convnext.errors import CheckpointError
from convnext.models import build_model, count_flops, count_params, get_spec

# Narrow heads keep CPU tests fast (the registered models use the paper's 512 / 256).
SMALL_HEAD = dict(channels=32, aux_channels=16)
SIZES = ["atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge"]


def _meta(name, **changes):
    with torch.device("meta"):
        return build_model(dataclasses.replace(get_spec(name).config, **changes))


def test_registered_for_every_hierarchical_convnext():
    assert convnext.list_models("upernet_*") == [f"upernet_convnext_{s}" for s in SIZES]
    for s in SIZES:
        spec = get_spec(f"upernet_convnext_{s}")
        assert spec.task == "segmentation"
        assert (spec.config.depths, spec.config.dims) == (get_spec(f"convnext_{s}").config.depths,
                                                          get_spec(f"convnext_{s}").config.dims)
    # stochastic depth of the official ADE20K configs
    assert [get_spec(f"upernet_convnext_{s}").config.drop_path_rate for s in SIZES[4:]] == [0.4, 0.3, 0.4, 0.4, 0.4]


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large", "xlarge"])
def test_params_and_flops_match_paper(size):
    # PAPER.md §4.2 Table: params of the whole model (auxiliary head included), MACs of the
    # inference model at (2048, 512) for the 1K models T/S/B and (2560, 640) for the 22K models L/XL.
    spec = get_spec(f"upernet_convnext_{size}")
    model = _meta(spec.name)
    assert count_params(model) / 1e6 == pytest.approx(spec.params_m, rel=0.02)
    assert count_flops(model, spec.flops_size) / 1e9 == pytest.approx(spec.ref_gmacs, rel=0.05)
    if size == "base":  # ConvNeXt-B 22K at 640 crops: 1828G at (2560, 640)
        assert count_flops(model, (640, 2560)) / 1e9 == pytest.approx(1828, rel=0.05)


def test_create_model_and_contract():
    model = convnext.create_model("upernet_convnext_atto", num_classes=150)
    assert isinstance(model, UperNet) and model.num_classes == 150 and model.config.num_classes == 150
    assert model.config.layer_scale_init_value == 1.0
    assert model.backbone.stage_norms is not None and isinstance(model.backbone.head, nn.Identity)
    assert type(model.backbone) is DenseConvNeXt  # the detectors' backbone class, built the same way
    assert not any(k.startswith(("backbone.norm.", "backbone.head.")) for k in model.state_dict())
    model.eval()
    x = torch.randn(2, 3, 64, 96)
    assert model(x).shape == (2, 150, 64, 96)
    assert model(x, torch.zeros(2, 64, 96, dtype=torch.long)).shape == (2, 150, 64, 96)  # eval: logits
    assert model(torch.randn(1, 3, 70, 50)).shape == (1, 150, 70, 50)  # not a multiple of 32: fed as is
    # no padding anywhere: the logits are the heads' on the floored stage maps (70 -> 17 -> 8 -> 4 -> 2),
    # resized to the input, so zeros appended to the image change them
    x = torch.randn(1, 3, 70, 50)
    with torch.no_grad():
        feats = model.backbone.forward_intermediates(x)
        assert [f.shape[-2:] for f in feats] == [(17, 12), (8, 6), (4, 3), (2, 1)]
        want = nn.functional.interpolate(model.decode_head(feats), size=(70, 50), mode="bilinear", align_corners=False)
        assert torch.equal(model(x), want)
        padded = model(nn.functional.pad(x, (0, 14, 0, 26)))[..., :70, :50]
        assert not torch.allclose(padded, want, atol=1e-3)
    # BN -> SyncBN for multi-GPU training
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert n_bn == 13 and sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn


def test_losses_ignore_index_and_aux_weight():
    torch.manual_seed(0)
    model = convnext.create_model("upernet_convnext_atto", num_classes=4, drop_path_rate=0.0, dropout=0.0,
                                  **SMALL_HEAD)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 4, (2, 64, 64))
    losses = model(x, y)
    assert set(losses) == {"loss_seg", "loss_aux"} and all(v.ndim == 0 for v in losses.values())
    # loss_aux is already x0.4: equal to 0.4 * CE of the auxiliary logits
    feats = model.backbone.forward_intermediates(x)
    aux = nn.functional.interpolate(model.aux_head(feats[2]), size=(64, 64), mode="bilinear", align_corners=False)
    assert losses["loss_aux"].item() == pytest.approx(0.4 * nn.functional.cross_entropy(aux, y).item(), rel=1e-4)
    all_ignored = model(x, torch.full_like(y, 255))
    assert all_ignored["loss_seg"].item() == 0.0  # no labelled pixel: 0, not NaN


def test_few_adamw_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = convnext.create_model("upernet_convnext_atto", num_classes=3, drop_path_rate=0.0, **SMALL_HEAD)
    model.train()
    x = torch.randn(4, 3, 8, 8).repeat_interleave(8, 2).repeat_interleave(8, 3)  # (4, 3, 64, 64) in 8x8 blocks
    y = x.argmax(1)  # the class is the strongest channel of the block: learnable at the head's stride 4
    y[:, :4] = 255
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    history = []
    for _ in range(10):
        loss = sum(model(x, y).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.7 * history[0], history


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    model = convnext.create_model("upernet_convnext_atto", num_classes=3, drop_path_rate=0.0, dropout=0.0,
                                  **SMALL_HEAD)
    model.train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        sum(model(x, y).values()).backward()
        grads.append(model.backbone.stages[0][0].dwconv.weight.grad.clone())
        # BN running stats moved twice; fine for comparing gradients of the same batch
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


class _Pointwise(nn.Module):
    """A per-pixel model: sliding windows and flips cannot change its output."""

    def __init__(self, k=3):
        super().__init__()
        self.num_classes = k
        self.conv = nn.Conv2d(3, k, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def test_slide_inference_windows_and_average():
    torch.manual_seed(0)
    model = _Pointwise()
    x = torch.randn(1, 3, 64, 100)
    out = slide_inference(model, x, crop=32, stride=21)
    # rows: (64 - 32 + 20) // 21 + 1 = 3; cols: (100 - 32 + 20) // 21 + 1 = 5 (mmseg's grid)
    assert model.calls == 15
    assert torch.allclose(out, model(x), atol=1e-6)  # overlaps averaged, every pixel covered
    small = torch.randn(1, 3, 20, 20)  # smaller than the crop: one window
    model.calls = 0
    assert slide_inference(model, small, crop=32, stride=21).shape == (1, 3, 20, 20) and model.calls == 1


def test_multiscale_flip_probabilities():
    torch.manual_seed(0)
    model = _Pointwise()
    x = torch.randn(1, 3, 32, 48)
    prob = multiscale_inference(model, x, out_size=(40, 60), crop=32, stride=21)
    assert prob.shape == (1, 3, 40, 60)
    assert torch.allclose(prob.sum(1), torch.ones(1, 40, 60), atol=1e-5)
    assert model.calls > 12  # 6 scales x 2 flips, several windows at the larger scales
    # at ratio 1 alone and without flip: the softmax of the resized logits
    one = multiscale_inference(model, x, ratios=(1.0,), flip=False, slide=False)
    assert torch.allclose(one, model(x).softmax(1), atol=1e-6)


def test_onnx_export_matches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = convnext.create_model("upernet_convnext_atto", num_classes=5, **SMALL_HEAD).eval()
    # 192 px: the last stage is 6x6, which every PPM pool size (1, 2, 3, 6) divides, as the legacy
    # exporter requires for adaptive pooling.
    x = torch.randn(1, 3, 192, 192)
    path = tmp_path / "upernet.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"], dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert onnx_out.shape == (1, 5, 192, 192)
    assert abs(onnx_out - ref).max() < 1e-4


def test_load_backbone_from_classification_checkpoint(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cls = convnext.create_model("convnext_atto")
    save_file(cls.state_dict(), str(tmp_path / "atto.safetensors"))
    model = convnext.create_model("upernet_convnext_atto", num_classes=150)
    report = load_backbone(model, tmp_path / "atto.safetensors")
    assert report.new == [f"stage_norms.{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    assert report.dropped == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert "stage_norms.0.bias" in str(report)
    assert torch.equal(model.backbone.stages[2][5].pwconv2.weight, cls.stages[2][5].pwconv2.weight)
    assert torch.equal(model.backbone.stages[0][0].gamma, cls.stages[0][0].gamma)  # 1e-6 from the checkpoint
    # a timm-layout file goes through the same converter
    timm_sd = convnext.weights.convert_state_dict(cls.state_dict(), src="official", dst="timm")
    assert load_backbone(model, timm_sd).layout == "timm"
    with pytest.raises(CheckpointError, match="does not fit.*convnext_femto"):
        load_backbone(model, convnext.create_model("convnext_femto").state_dict())
