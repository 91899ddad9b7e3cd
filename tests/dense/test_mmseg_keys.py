"""The official mmseg UperNet checkpoint layout <-> our UperNet, on synthetic checkpoints."""
import pytest
import torch

import convnext
from convnext.dense.mmseg_keys import from_mmseg, load_mmseg_checkpoint, to_mmseg
from convnext.errors import CheckpointError

SMALL_HEAD = dict(channels=32, aux_channels=16)
BN = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked")


def _mmseg_head_keys():
    """The head keys of an mmseg `UPerHead` + `FCNHead` checkpoint, written out from mmseg's module tree."""
    units = ([f"decode_head.psp_modules.{i}.1." for i in range(4)] + ["decode_head.bottleneck."]
             + [f"decode_head.lateral_convs.{i}." for i in range(3)] + [f"decode_head.fpn_convs.{i}." for i in range(3)]
             + ["decode_head.fpn_bottleneck.", "auxiliary_head.convs.0."])
    keys = {u + p for u in units for p in ("conv.weight",) + BN}
    return keys | {f"{h}.conv_seg.{p}" for h in ("decode_head", "auxiliary_head") for p in ("weight", "bias")}


def _model(seed, num_classes=7):
    torch.manual_seed(seed)
    model = convnext.create_model("upernet_convnext_atto", num_classes=num_classes, **SMALL_HEAD)
    with torch.no_grad():  # non-trivial BN statistics, so a mis-mapped buffer would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_key_names_are_mmseg_layout():
    own = _model(0).state_dict()
    sd = to_mmseg(own)
    heads = {k for k in sd if not k.startswith("backbone.")}
    assert heads == _mmseg_head_keys()
    backbone = {k for k in sd if k.startswith("backbone.")}
    assert {f"backbone.norm{i}.{p}" for i in range(4) for p in ("weight", "bias")} <= backbone
    cls_keys = {k for k in convnext.create_model("convnext_atto").state_dict() if not k.startswith(("norm.", "head."))}
    assert backbone - {k for k in backbone if k.startswith("backbone.norm")} == {"backbone." + k for k in cls_keys}
    assert from_mmseg(sd).keys() == own.keys()


def test_load_whole_checkpoint_file(tmp_path):
    src = _model(0)
    # as mmcv saves it: meta + state_dict (+ optimizer)
    path = tmp_path / "upernet_convnext_atto.pth"
    torch.save({"meta": {"CLASSES": ["a", "b"], "mmseg_version": "0.20.2"}, "state_dict": to_mmseg(src.state_dict()),
                "optimizer": {"state": {}, "param_groups": []}}, path)
    dst = _model(1)
    meta = load_mmseg_checkpoint(dst, path)
    assert meta["CLASSES"] == ["a", "b"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_every_key_without_counterpart_is_named():
    sd = to_mmseg(_model(0).state_dict())
    with pytest.raises(CheckpointError, match=r"decode_head\.extra_conv\.weight"):
        load_mmseg_checkpoint(_model(1), {**sd, "decode_head.extra_conv.weight": torch.zeros(1)})
    missing = {k: v for k, v in sd.items() if k not in ("backbone.norm3.weight", "auxiliary_head.conv_seg.bias")}
    with pytest.raises(CheckpointError, match=r"aux_head\.classifier\.conv\.bias.*backbone\.stage_norms\.3\.weight"):
        load_mmseg_checkpoint(_model(1), missing)
    with pytest.raises(CheckpointError, match=r"decode_head\.classifier\.conv\.weight: checkpoint \(7, 32, 1, 1\) "
                                              r"vs model \(150, 32, 1, 1\)"):
        load_mmseg_checkpoint(_model(1, num_classes=150), sd)
    with pytest.raises(CheckpointError, match="not an mmseg UperNet checkpoint"):
        load_mmseg_checkpoint(_model(1), convnext.create_model("convnext_atto").state_dict())
