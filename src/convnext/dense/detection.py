"""COCO detectors on our ConvNeXt (PAPER.md §4.1, Table 3): Mask R-CNN and Cascade Mask R-CNN.

A detector is torchvision's GeneralizedRCNN of four parts, each its own module:

    transform  normalise (ImageNet mean/std) and pad to a multiple of 32; NO resizing (the data
               pipeline resizes, as mmdet's does)
    backbone   `DenseConvNeXt`: our ConvNeXt, 4 LayerNorm'd stage maps, strides 4-32
    neck       torchvision FPN, 256 channels, P2-P5 + P6 by stride-2 max-pool (mmdet FPN num_outs=5)
    rpn        torchvision RPN: 3 anchors (ratios 0.5/1/2, size 8 x stride) per location and level
    roi_heads  `CascadeRoIHeads` (cascade.py): 1 stage for Mask R-CNN, 3 for Cascade Mask R-CNN

Names compose a head and a registered hierarchical backbone: `mask_rcnn_convnext_tiny`,
`cascade_mask_rcnn_convnextv2_atto`, ... `create_model(name, num_classes=80)` builds one (classes
without background). Train mode: `model(images, targets)` -> dict of scalar losses; eval mode:
`model(images)` -> per image {boxes (K,4) xyxy, scores, labels 1..C, masks (K,1,H,W) probabilities}.

FLOPs follow mmdet's `get_flops` (`forward_dummy`): backbone + neck + RPN head on the image, then
every stage's box head on 1000 RoIs and mask head on 100 RoIs; see `forward_dummy`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import ConfigError, DataError
from ..models.registry import ModelSpec, register_arch, register_model
from .backbone import BackboneLoadReport, dense_backbone, load_backbone_checkpoint
from .cascade import BoxHead, CascadeRoIHeads, MaskHead

__all__ = ["DetectionConfig", "ConvNeXtDetector", "create_detector", "HEADS"]

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DetectionConfig:
    """A detector: backbone name + head settings. Defaults = the official Mask R-CNN ConvNeXt-T config."""

    backbone: str = "convnext_tiny"  # a registered hierarchical ConvNeXt
    num_classes: int = 80  # object classes, without background
    drop_path_rate: float = 0.4  # backbone stochastic depth (official: T 0.4, S 0.6, B/L 0.7, XL 0.8)
    layer_scale_init_value: float = 1.0  # official dense configs (overwritten by any checkpoint)
    fpn_channels: int = 256
    rpn_post_nms_train: int = 1000  # proposals per image after NMS, training (Mask R-CNN 1000, Cascade 2000)
    rpn_post_nms_test: int = 1000
    box_convs: int = 0  # conv3x3+BN layers of each box head (Cascade: 4)
    box_fcs: int = 2  # FC layers of each box head (Cascade: 1)
    iou_thresholds: tuple[float, ...] = (0.5,)  # one per cascade stage
    stage_weights: tuple[float, ...] = (1.0,)  # loss weight per stage
    target_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)  # box-delta stds (x, y, w, h), 4 per stage
    box_loss: str = "l1"  # "l1" on deltas, or "giou" on decoded boxes
    box_loss_weight: float = 1.0  # Cascade: GIoU x10
    match_low_quality: bool = True  # Mask R-CNN True, Cascade False (mmdet MaxIoUAssigner)
    rois_per_image: int = 512  # RoIs sampled per image and stage in training (25% positive at most)
    score_thresh: float = 0.05  # test: detections below this score are dropped
    nms_thresh: float = 0.5  # test: per-class NMS IoU
    detections_per_img: int = 100

    arch = "detection"

    def __post_init__(self):
        n = len(self.iou_thresholds)
        if n < 1 or len(self.stage_weights) != n or len(self.target_stds) != 4 * n:
            raise ConfigError(
                f"detection config: {n} stage(s) need {n} stage_weights and {4 * n} target_stds, got "
                f"{len(self.stage_weights)} and {len(self.target_stds)}")
        if self.box_loss not in ("l1", "giou"):
            raise ConfigError(f"detection config: box_loss must be 'l1' or 'giou', got {self.box_loss!r}")
        if self.num_classes < 1:
            raise ConfigError(f"detection config: num_classes must be >= 1 (object classes), got {self.num_classes}")


# The two heads of the paper, as config differences from the Mask R-CNN defaults.
HEADS: dict[str, dict] = {
    "mask_rcnn": {},
    "cascade_mask_rcnn": dict(
        rpn_post_nms_train=2000, box_convs=4, box_fcs=1, iou_thresholds=(0.5, 0.6, 0.7),
        stage_weights=(1.0, 0.5, 0.25),
        target_stds=(0.1, 0.1, 0.2, 0.2, 0.05, 0.05, 0.1, 0.1, 0.033, 0.033, 0.067, 0.067),
        box_loss="giou", box_loss_weight=10.0, match_low_quality=False,
    ),
}


class _NormalizePad(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize: images arrive resized by the data pipeline."""

    def __init__(self):
        super().__init__(min_size=800, max_size=1333, image_mean=list(_IMAGENET_MEAN), image_std=list(_IMAGENET_STD),
                         size_divisible=32)  # min/max_size unused: resize is the identity

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


class ConvNeXtDetector(GeneralizedRCNN):
    """Mask R-CNN / Cascade Mask R-CNN on `DenseConvNeXt` (see the module docstring).

    Args:
        config: a `DetectionConfig`.
    """

    def __init__(self, config: DetectionConfig = DetectionConfig()):
        backbone = dense_backbone(config.backbone, drop_path_rate=config.drop_path_rate,
                                  layer_scale_init_value=config.layer_scale_init_value)
        c = config.fpn_channels
        anchors = AnchorGenerator(tuple((8 * s,) for s in (4, 8, 16, 32, 64)), ((0.5, 1.0, 2.0),) * 5)
        rpn = RegionProposalNetwork(
            anchors, RPNHead(c, 3), fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
            positive_fraction=0.5, pre_nms_top_n=dict(training=2000, testing=1000),  # per level
            post_nms_top_n=dict(training=config.rpn_post_nms_train, testing=config.rpn_post_nms_test), nms_thresh=0.7,
        )
        n = len(config.iou_thresholds)
        roi_heads = CascadeRoIHeads(
            config.num_classes,
            box_heads=[BoxHead(config.num_classes, config.box_convs, config.box_fcs, c) for _ in range(n)],
            mask_heads=[MaskHead(config.num_classes, c) for _ in range(n)],
            iou_thresholds=config.iou_thresholds, stage_weights=config.stage_weights,
            target_stds=tuple(tuple(config.target_stds[4 * i: 4 * i + 4]) for i in range(n)),
            box_loss=config.box_loss, box_loss_weight=config.box_loss_weight,
            match_low_quality=config.match_low_quality, rois_per_image=config.rois_per_image, score_thresh=config.score_thresh,
            nms_thresh=config.nms_thresh, detections_per_img=config.detections_per_img,
        )
        super().__init__(backbone, rpn, roi_heads, _NormalizePad())
        self.neck = FeaturePyramidNetwork(backbone.out_channels, c, extra_blocks=LastLevelMaxPool())
        self.config = config
        self.num_classes = config.num_classes

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Train: `images` (3, H_i, W_i) in [0, 1] + `targets` -> dict of losses. Eval: -> list of detections."""
        if self.training and targets is None:
            raise DataError("ConvNeXtDetector: targets (boxes, labels, masks per image) are required in training mode")
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)  # (B, 3, H, W) padded to multiples of 32
        features = self.neck(self.backbone(batch.tensors))  # "0".."3" = P2-P5, "pool" = P6; 256 channels
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, batch.image_sizes, sizes)  # masks pasted at image size

    def forward_dummy(self, x: Tensor) -> list[Tensor]:
        """mmdet's FLOPs forward on a normalised batch (B, 3, H, W): backbone, neck, RPN head on every
        level, then the RoI heads on 1000 RoIs (boxes) and 100 RoIs (masks) per stage."""
        features = self.neck(self.backbone(x))
        objectness, deltas = self.rpn.head(list(features.values()))
        return [*objectness, *deltas, *self.roi_heads.forward_dummy(features)]


def create_detector(
    name: str, *, num_classes: int = 80, backbone_checkpoint: str | os.PathLike | Mapping[str, Tensor] | None = None,
    **overrides,
) -> ConvNeXtDetector:
    """`create_model(name, num_classes=...)`, then the backbone from a classification checkpoint.

    Args:
        name: a registered detector, e.g. "mask_rcnn_convnext_tiny".
        num_classes: object classes (without background).
        backbone_checkpoint: any checkpoint `convnext.weights.load_checkpoint` reads (official, timm,
            torchvision, HF, V2, backbone-only dense); its head and final norm are dropped, the stage
            norms it lacks stay as initialised. The report is in `model.backbone_load_report`.
        **overrides: other `DetectionConfig` fields (e.g. drop_path_rate).
    """
    from ..models.factory import create_model

    model = create_model(name, num_classes=num_classes, **overrides)
    if not isinstance(model, ConvNeXtDetector):
        raise ConfigError(f"{name!r} is not a detector (see `convnext models`)")
    model.backbone_load_report: BackboneLoadReport | None = None
    if backbone_checkpoint is not None:
        model.backbone_load_report = load_backbone_checkpoint(model.backbone, backbone_checkpoint)
    return model


# --------------------------------------------------------------------------------------------------
# Registry. Reference numbers: params from the official README, FLOPs (MACs at 1280x800) from Table 3.
# Stochastic depth: the official configs for T/S/B/L/XL (Mask R-CNN-T 0.4 = Cascade-T); ours for the
# small timm variants (0.1) and V2-huge (as XL).
# --------------------------------------------------------------------------------------------------
register_arch(DetectionConfig.arch, DetectionConfig, ConvNeXtDetector)

_DROP_PATH = {"atto": 0.1, "femto": 0.1, "pico": 0.1, "nano": 0.1, "tiny": 0.4, "small": 0.6, "base": 0.7,
              "large": 0.7, "xlarge": 0.8, "huge": 0.8}
_REFERENCE = {  # (head, backbone): (params M, GMACs at 1280x800)
    ("mask_rcnn", "convnext_tiny"): (48, 262),
    ("cascade_mask_rcnn", "convnext_tiny"): (86, 741),
    ("cascade_mask_rcnn", "convnext_small"): (108, 827),
    ("cascade_mask_rcnn", "convnext_base"): (146, 964),
    ("cascade_mask_rcnn", "convnext_large"): (255, 1354),
    ("cascade_mask_rcnn", "convnext_xlarge"): (407, 1898),
}

for _head, _changes in HEADS.items():
    for _size, _dp in _DROP_PATH.items():
        for _family, _ls in (("convnext", 1.0), ("convnextv2", 0.0)):  # V2 has no layer scale
            _bb = f"{_family}_{_size}"
            if _bb not in ("convnextv2_small", "convnextv2_xlarge", "convnext_huge"):
                _params, _gmacs = _REFERENCE.get((_head, _bb), (None, None))
                register_model(ModelSpec(
                    f"{_head}_{_bb}",
                    DetectionConfig(backbone=_bb, drop_path_rate=_dp, layer_scale_init_value=_ls, **_changes),
                    params_m=_params, ref_gmacs=_gmacs, task="detection", flops_size=(800, 1280),
                    source="paper" if _params else "", description=f"{_head.replace('_', ' ')} on {_bb}",
                ))
