"""Synthetic mmdet / mmseg checkpoints, every key name written out here from the peers' sources
(not produced by our exporters), in both backbone namings.

Backbone block layers (`backbone.stages.{i}.{j}.<name>`):
  openmmlab  mmpretrain/models/backbones/convnext.py `ConvNeXtBlock` (also mmcls 0.x): `depthwise_conv`,
             `norm`, `pointwise_conv1` (Linear), `pointwise_conv2`, `gamma` (C,); V2: `grn` = GRN(mid)
             with `gamma`, `beta` of shape (C,). Stem `downsample_layers.0` = [Conv2d, LN2d], later
             ones [LN2d, Conv2d]; `norm{i}` per output stage (`add_module(f'norm{i}', ...)`).
  fair       FAIR's object_detection/ and semantic_segmentation/ backbone: `dwconv`, `norm`, `pwconv1`,
             `pwconv2`, `gamma`; same downsample layers and `norm{i}`.
Heads: mmdet FPN / RPNHead / StandardRoIHead (Shared2FCBBoxHead) / CascadeRoIHead (ConvFCBBoxHead
4 convs + 1 fc, ConvModule conv + bn) / FCNMaskHead; mmseg UPerHead (psp_modules.{i}.1, bottleneck,
lateral_convs, fpn_convs, fpn_bottleneck, conv_seg) + FCNHead (convs.0, conv_seg).
The tensors are drawn in the same order for both namings, so the two files of one seed hold equal values.
"""
import torch

BLOCK_NAMES = {"openmmlab": ("depthwise_conv", "norm", "pointwise_conv1", "pointwise_conv2"),
               "fair": ("dwconv", "norm", "pwconv1", "pwconv2")}
ATTO = ((2, 2, 6, 2), (40, 80, 160, 320))
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def draw(seed):
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g)
    return t


def bn(t, prefix, c):
    """A ConvModule's BatchNorm `bn` with non-trivial statistics."""
    return {f"{prefix}.bn.weight": t(c), f"{prefix}.bn.bias": t(c), f"{prefix}.bn.running_mean": t(c),
            f"{prefix}.bn.running_var": t(c).abs() + 0.5, f"{prefix}.bn.num_batches_tracked": torch.tensor(7)}


def backbone(t, naming, arch=ATTO, v2=False):
    depths, dims = arch
    dw, norm, pw1, pw2 = BLOCK_NAMES[naming]
    sd = {"backbone.downsample_layers.0.0.weight": t(dims[0], 3, 4, 4),  # stem: [Conv2d 4x4/4, LN2d]
          "backbone.downsample_layers.0.0.bias": t(dims[0]),
          "backbone.downsample_layers.0.1.weight": t(dims[0]), "backbone.downsample_layers.0.1.bias": t(dims[0])}
    for i in range(1, 4):
        sd[f"backbone.downsample_layers.{i}.0.weight"] = t(dims[i - 1])
        sd[f"backbone.downsample_layers.{i}.0.bias"] = t(dims[i - 1])
        sd[f"backbone.downsample_layers.{i}.1.weight"] = t(dims[i], dims[i - 1], 2, 2)
        sd[f"backbone.downsample_layers.{i}.1.bias"] = t(dims[i])
    for i, (depth, c) in enumerate(zip(depths, dims)):
        for j in range(depth):
            b = f"backbone.stages.{i}.{j}."
            sd[b + dw + ".weight"], sd[b + dw + ".bias"] = t(c, 1, 7, 7), t(c)
            sd[b + norm + ".weight"], sd[b + norm + ".bias"] = t(c), t(c)
            sd[b + pw1 + ".weight"], sd[b + pw1 + ".bias"] = t(4 * c, c), t(4 * c)
            if v2:  # GRN of the hidden width: (C,) in mmpretrain, (1, 1, 1, C) in the official V2 code
                shape = (4 * c,) if naming == "openmmlab" else (1, 1, 1, 4 * c)
                sd[b + "grn.gamma"], sd[b + "grn.beta"] = t(*shape), t(*shape)
            sd[b + pw2 + ".weight"], sd[b + pw2 + ".bias"] = t(c, 4 * c), t(c)
            if not v2:
                sd[b + "gamma"] = t(c)
        sd[f"backbone.norm{i}.weight"], sd[f"backbone.norm{i}.bias"] = t(c), t(c)
    return sd


def mmdet_state_dict(cascade, naming, seed=0, fpn=64, classes=3, arch=ATTO, v2=False):
    """Mask R-CNN (mask-rcnn_r50_fpn heads) or Cascade Mask R-CNN (3 stages, 4conv1fc box heads)."""
    t = draw(seed)
    sd = backbone(t, naming, arch, v2)
    for i, d in enumerate(arch[1]):
        sd[f"neck.lateral_convs.{i}.conv.weight"], sd[f"neck.lateral_convs.{i}.conv.bias"] = t(fpn, d, 1, 1), t(fpn)
        sd[f"neck.fpn_convs.{i}.conv.weight"], sd[f"neck.fpn_convs.{i}.conv.bias"] = t(fpn, fpn, 3, 3), t(fpn)
    sd.update({"rpn_head.rpn_conv.weight": t(fpn, fpn, 3, 3), "rpn_head.rpn_conv.bias": t(fpn),
               "rpn_head.rpn_cls.weight": t(3, fpn, 1, 1), "rpn_head.rpn_cls.bias": t(3),
               "rpn_head.rpn_reg.weight": t(12, fpn, 1, 1), "rpn_head.rpn_reg.bias": t(12)})
    for s in range(3) if cascade else [None]:
        box = "roi_head.bbox_head." + ("" if s is None else f"{s}.")
        mask = "roi_head.mask_head." + ("" if s is None else f"{s}.")
        if cascade:  # ConvFCBBoxHead: 4 shared ConvModules (conv without bias + SyncBN "bn"), 1 shared fc
            for i in range(4):
                sd[f"{box}shared_convs.{i}.conv.weight"] = t(fpn, fpn, 3, 3)
                sd.update(bn(t, f"{box}shared_convs.{i}", fpn))
            fcs = [(1024, fpn * 49)]
        else:  # Shared2FCBBoxHead
            fcs = [(1024, fpn * 49), (1024, 1024)]
        for i, (o, n) in enumerate(fcs):
            sd[f"{box}shared_fcs.{i}.weight"], sd[f"{box}shared_fcs.{i}.bias"] = t(o, n), t(o)
        sd[f"{box}fc_cls.weight"], sd[f"{box}fc_cls.bias"] = t(classes + 1, 1024), t(classes + 1)  # background last
        sd[f"{box}fc_reg.weight"], sd[f"{box}fc_reg.bias"] = t(4 * classes, 1024), t(4 * classes)
        for i in range(4):
            sd[f"{mask}convs.{i}.conv.weight"], sd[f"{mask}convs.{i}.conv.bias"] = t(fpn, fpn, 3, 3), t(fpn)
        sd[f"{mask}upsample.weight"], sd[f"{mask}upsample.bias"] = t(fpn, fpn, 2, 2), t(fpn)
        sd[f"{mask}conv_logits.weight"], sd[f"{mask}conv_logits.bias"] = t(classes, fpn, 1, 1), t(classes)
    return sd


def mmseg_state_dict(naming, seed=0, channels=32, aux_channels=16, classes=7, arch=ATTO):
    """UPerHead (pool scales 1, 2, 3, 6) + FCNHead on stage 2 (0-based), as mmseg's
    configs/_base_/models/upernet_convnext.py."""
    t = draw(seed)
    sd = backbone(t, naming, arch)
    dims = arch[1]
    for i in range(4):  # psp_modules.{i} = [AdaptiveAvgPool2d, ConvModule]
        sd[f"decode_head.psp_modules.{i}.1.conv.weight"] = t(channels, dims[3], 1, 1)
        sd.update(bn(t, f"decode_head.psp_modules.{i}.1", channels))
    sd["decode_head.bottleneck.conv.weight"] = t(channels, dims[3] + 4 * channels, 3, 3)
    sd.update(bn(t, "decode_head.bottleneck", channels))
    for i in range(3):
        sd[f"decode_head.lateral_convs.{i}.conv.weight"] = t(channels, dims[i], 1, 1)
        sd.update(bn(t, f"decode_head.lateral_convs.{i}", channels))
        sd[f"decode_head.fpn_convs.{i}.conv.weight"] = t(channels, channels, 3, 3)
        sd.update(bn(t, f"decode_head.fpn_convs.{i}", channels))
    sd["decode_head.fpn_bottleneck.conv.weight"] = t(channels, 4 * channels, 3, 3)
    sd.update(bn(t, "decode_head.fpn_bottleneck", channels))
    sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"] = t(classes, channels, 1, 1), t(classes)
    sd["auxiliary_head.convs.0.conv.weight"] = t(aux_channels, dims[2], 3, 3)
    sd.update(bn(t, "auxiliary_head.convs.0", aux_channels))
    sd["auxiliary_head.conv_seg.weight"] = t(classes, aux_channels, 1, 1)
    sd["auxiliary_head.conv_seg.bias"] = t(classes)
    return sd


def runner_checkpoint(state_dict, classes, marker):
    """What mmengine's Runner saves (mmdet 3 / mmseg 1), with mmengine's HistoryBuffer stood in by a
    class of that module path, numpy arrays, and a `__reduce__` payload that would create `marker`."""
    import sys
    import types

    import numpy as np

    class HistoryBuffer:  # the attributes of mmengine.logging.history_buffer.HistoryBuffer
        def __init__(self):
            self.max_length = 1000000
            self._log_history = np.array([0.5, 0.25])
            self._count_history = np.array([1, 1])

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    names = ["mmengine", "mmengine.logging", "mmengine.logging.history_buffer"]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = names[-1], "HistoryBuffer"
    sys.modules[names[-1]].HistoryBuffer = HistoryBuffer
    ckpt = {"meta": {"dataset_meta": {"classes": tuple(classes), "palette": [[0, 0, 0]] * len(classes)},
                     "epoch": 36, "iter": 1000, "mmengine_version": "0.10.3", "seed": 0},
            "state_dict": state_dict,
            "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"note": Payload()},
                            "resumed_keys": {"epoch": True}},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.05}]},
            "param_schedulers": [{"milestones": np.array([27, 33])}]}
    return ckpt, saved


def save_runner_checkpoint(path, state_dict, classes, marker):
    import sys

    ckpt, saved = runner_checkpoint(state_dict, classes, marker)
    try:
        torch.save(ckpt, path)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
