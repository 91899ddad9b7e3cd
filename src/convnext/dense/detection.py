"""COCO detectors on our ConvNeXt (PAPER.md §4.1, Table 3): Mask R-CNN and Cascade Mask R-CNN.

A detector is torchvision's GeneralizedRCNN of four parts, each its own module:

    transform  normalise (ImageNet mean/std) and pad to a multiple of 32; NO resizing (the data
               pipeline resizes, as mmdet's does)
    backbone   `DenseConvNeXt`: our ConvNeXt, 4 LayerNorm'd stage maps, strides 4-32
    neck       torchvision FPN, 256 channels, P2-P5 + P6 by stride-2 max-pool (mmdet FPN num_outs=5)
    rpn        torchvision RPN: 3 anchors (ratios 0.5/1/2, size 8 x stride) per location and level,
               with mmdet's float anchor corners and fixed strides (`MMDetAnchorGenerator`)
    roi_heads  `CascadeRoIHeads` (cascade.py): 1 stage for Mask R-CNN, 3 for Cascade Mask R-CNN

Names compose a head and a registered hierarchical backbone: `mask_rcnn_convnext_tiny`,
`cascade_mask_rcnn_convnextv2_atto`, ... `create_model(name, num_classes=80)` builds one (classes
without background). Train mode: `model(images, targets)` -> dict of scalar losses; eval mode:
`model(images)` -> per image {boxes (K,4) xyxy, scores, labels 1..C, masks (K,1,H,W) probabilities},
the 28x28 mask probabilities pasted by mmdet's rule (`paste_masks`; threshold them with `>= 0.5`).

Test-time semantics follow mmdet by default; torchvision's are behind two config fields:
`anchors="torchvision"` (integer-rounded anchor corners, strides from image size // feature size) and
`mask_paste="torchvision"` (its legacy paste: 1-pixel padding, integer box, bilinear resize).

FLOPs follow mmdet's `get_flops` (`forward_dummy`): backbone + neck + RPN head on the image, then
every stage's box head on 1000 RoIs and mask head on 100 RoIs; see `forward_dummy`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import ConfigError, DataError
from ..models.registry import ModelSpec, register_arch, register_model
from .backbone import BackboneLoadReport, dense_backbone, load_backbone_checkpoint
from .cascade import BoxHead, CascadeRoIHeads, MaskHead, MaxIoUMatcher

__all__ = ["DetectionConfig", "ConvNeXtDetector", "create_detector", "HEADS", "MMDetAnchorGenerator", "paste_masks"]

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
    rpn_box_loss: str = "l1"  # RPN box loss: "l1" (Mask R-CNN config) or "smooth_l1" (beta 1/9, Cascade config)
    rpn_allowed_border: int = -1  # RPN training: -1 every anchor of the image's own 32-padded area (Mask
    # R-CNN), >= 0 only anchors inside the image grown by this many pixels (Cascade: 0); mmdet allowed_border
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
    anchors: str = "mmdet"  # "mmdet": float corners, fixed strides; "torchvision": its rounded anchors
    mask_paste: str = "mmdet"  # "mmdet": grid-sample on the float box; "torchvision": its legacy paste

    arch = "detection"

    def __post_init__(self):
        n = len(self.iou_thresholds)
        if n < 1 or len(self.stage_weights) != n or len(self.target_stds) != 4 * n:
            raise ConfigError(
                f"detection config: {n} stage(s) need {n} stage_weights and {4 * n} target_stds, got "
                f"{len(self.stage_weights)} and {len(self.target_stds)}")
        if self.box_loss not in ("l1", "giou"):
            raise ConfigError(f"detection config: box_loss must be 'l1' or 'giou', got {self.box_loss!r}")
        if self.rpn_box_loss not in ("l1", "smooth_l1"):
            raise ConfigError(f"detection config: rpn_box_loss must be 'l1' or 'smooth_l1', got {self.rpn_box_loss!r}")
        for field, value in (("anchors", self.anchors), ("mask_paste", self.mask_paste)):
            if value not in ("mmdet", "torchvision"):
                raise ConfigError(f"detection config: {field} must be 'mmdet' or 'torchvision', got {value!r}")
        if self.num_classes < 1:
            raise ConfigError(f"detection config: num_classes must be >= 1 (object classes), got {self.num_classes}")


# The two heads of the paper, as config differences from the Mask R-CNN defaults.
HEADS: dict[str, dict] = {
    "mask_rcnn": {},
    "cascade_mask_rcnn": dict(
        rpn_post_nms_train=2000, rpn_box_loss="smooth_l1", rpn_allowed_border=0,
        box_convs=4, box_fcs=1, iou_thresholds=(0.5, 0.6, 0.7),
        stage_weights=(1.0, 0.5, 0.25),
        target_stds=(0.1, 0.1, 0.2, 0.2, 0.05, 0.05, 0.1, 0.1, 0.033, 0.033, 0.067, 0.067),
        box_loss="giou", box_loss_weight=10.0, match_low_quality=False,
    ),
}


class MMDetAnchorGenerator(AnchorGenerator):
    """mmdet's `AnchorGenerator` (center_offset 0, scale-major) on torchvision's RPN interface.

    Per level of stride s, the base anchors are centred on 0 with float corners (no rounding):
    h_ratio = sqrt(ratio), w_ratio = 1 / h_ratio, w = s * w_ratio * scale, h = s * h_ratio * scale,
    corners (-w/2, -h/2, w/2, h/2). They are laid over the grid at (x * s, y * s), row-major, each
    location's anchors in ratio order: the order mmdet's RPN head channels predict. The strides are
    the given ones (4..64), not torchvision's image size // feature size (61 instead of 64 for P6 of
    an 800-pixel side).

    Args:
        strides: stride of each level, e.g. (4, 8, 16, 32, 64).
        ratios: anchor height / width ratios.
        scales: anchor sizes in units of the stride (mmdet `scales=[8]`).
    """

    def __init__(self, strides: tuple[int, ...] = (4, 8, 16, 32, 64), ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
                 scales: tuple[float, ...] = (8.0,)):
        self.strides = tuple(strides)
        sizes = tuple(tuple(s * float(c) for c in scales) for s in self.strides)
        super().__init__(sizes, (tuple(ratios),) * len(strides))
        self.cell_anchors = [self.base_anchors(s, ratios, scales) for s in self.strides]  # replaces the rounded ones

    @staticmethod
    def base_anchors(base_size: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> Tensor:
        """(len(ratios) * len(scales), 4) anchors of one level centred on 0, ratio-major; float32
        in the order of mmdet's operations (so its rounding too)."""
        h_ratios = torch.sqrt(torch.tensor(ratios, dtype=torch.float32))
        w_ratios = 1 / h_ratios
        scales_t = torch.tensor(scales, dtype=torch.float32)
        ws = (base_size * w_ratios[:, None] * scales_t[None, :]).view(-1)
        hs = (base_size * h_ratios[:, None] * scales_t[None, :]).view(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [f.shape[-2:] for f in feature_maps]
        device = feature_maps[0].device
        self.set_cell_anchors(torch.float32, device)  # float32 even under AMP: corners reach 1e3
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))  # (sum_l H_l * W_l * A, 4)
        return [anchors for _ in image_list.image_sizes]


def paste_masks(masks: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Paste (K, 1, M, M) mask probabilities into (K, 1, H, W) images, as mmdet's `_do_paste_mask`.

    Each image pixel centre (x + 0.5, y + 0.5) is mapped into the float box, u = (x + 0.5 - x0) /
    (x1 - x0) * 2 - 1 (likewise v), and the mask is sampled there bilinearly (grid_sample,
    align_corners=False, zeros outside the mask). A box of zero width or height maps to the
    mask's centre line (mmdet replaces the infinite coordinate by 0), here only inside the window
    below (mmdet's CPU path also clips to the boxes, its GPU path does not). mmdet then binarises with
    `>= 0.5` (mask_thr_binary). Only the window where a value can be non-zero (the box grown by half
    a mask cell, plus a pixel) is sampled; everything else is exactly 0, as in the full-image paste.
    """
    h, w = size
    out = masks.new_zeros(len(masks), 1, h, w, dtype=torch.float32)
    m = masks.shape[-1]
    for i, (mask, box) in enumerate(zip(masks.float(), boxes.float())):
        x0, y0, x1, y1 = box.tolist()
        gx, gy = (x1 - x0) / (2 * m), (y1 - y0) / (2 * m)  # half a mask cell, in pixels
        xa, xb = max(math.floor(x0 - gx) - 1, 0), min(math.floor(x1 + gx) + 2, w)
        ya, yb = max(math.floor(y0 - gy) - 1, 0), min(math.floor(y1 + gy) + 2, h)
        if xa >= xb or ya >= yb:
            continue
        u = (torch.arange(xa, xb, device=masks.device, dtype=torch.float32) + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1
        v = (torch.arange(ya, yb, device=masks.device, dtype=torch.float32) + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1
        u, v = torch.where(torch.isinf(u), 0.0, u), torch.where(torch.isinf(v), 0.0, v)
        grid = torch.stack(torch.broadcast_tensors(u[None, :], v[:, None]), dim=-1)  # (h', w', 2) as (x, y)
        out[i, :, ya:yb, xa:xb] = F.grid_sample(mask[None], grid[None], align_corners=False)[0]
    return out


class _RPN(RegionProposalNetwork):
    """torchvision's RPN with mmdet's training rules: the box loss of the config (L1 for Mask R-CNN,
    smooth L1 with beta 1/9 for Cascade), mmdet's assigner (IoU >= 0.7 positive, < 0.3 negative,
    each ground truth's best anchors positive from IoU 0.3), and only the anchors mmdet assigns:
    those of the image's own 32-padded area (batch padding excluded), or with `allowed_border` >= 0
    those inside the image grown by that many pixels. The others are ignored, as mmdet's
    valid / inside flags. Both losses are averaged over the sampled anchors."""

    def __init__(self, *args, box_loss: str = "l1", allowed_border: int = -1, **kwargs):
        super().__init__(*args, **kwargs)
        self.box_loss, self.allowed_border = box_loss, allowed_border
        self.proposal_matcher = MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3)
        self._image_sizes: list[tuple[int, int]] = []

    def forward(self, images: ImageList, features: dict[str, Tensor], targets=None):
        self._image_sizes = list(images.image_sizes)  # unpadded (H, W), for the anchor flags
        return super().forward(images, features, targets)

    def _usable(self, anchors: Tensor, size: tuple[int, int]) -> Tensor:
        """(A,) bool: anchors mmdet's RPN assigns for an image of `size` (H, W)."""
        h, w = size
        # mmdet valid_flags on the image's pad_shape (padded to 32): grid location x with x * s <
        # padded width (likewise y); our anchors are centred on (x * s, y * s)
        cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        usable = (cx < math.ceil(w / 32) * 32) & (cy < math.ceil(h / 32) * 32)
        if self.allowed_border >= 0:  # mmdet anchor_inside_flags
            b = self.allowed_border
            usable &= (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < w + b) & (anchors[:, 3] < h + b)
        return usable

    def assign_targets_to_anchors(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]):
        labels, matched = [], []
        for a, t, size in zip(anchors, targets, self._image_sizes):
            usable = self._usable(a, size)
            (lab,), (gt,) = super().assign_targets_to_anchors([a[usable]], [t])
            labels.append(lab.new_full((len(a),), -1.0).index_put_((usable,), lab))  # -1: never sampled
            matched.append(gt.new_zeros(len(a), 4).index_put_((usable,), gt))
        return labels, matched

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        pos, neg = self.fg_bg_sampler(labels)
        pos, neg = torch.where(torch.cat(pos))[0], torch.where(torch.cat(neg))[0]
        sampled = torch.cat([pos, neg])
        labels_t, targets_t = torch.cat(labels), torch.cat(regression_targets)
        if self.box_loss == "l1":
            box = F.l1_loss(pred_bbox_deltas[pos], targets_t[pos], reduction="sum")
        else:
            box = F.smooth_l1_loss(pred_bbox_deltas[pos], targets_t[pos], beta=1 / 9, reduction="sum")
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_t[sampled])
        return objectness_loss, box / max(sampled.numel(), 1)


def rescale_boxes(boxes: Tensor, size: tuple[int, int], out_size: tuple[int, int]) -> Tensor:
    """(K, 4) xyxy boxes in an image of `size` (H, W) -> in one of `out_size` (H0, W0), as mmdet's
    `rescale=True`: divided by the per-axis scale factor of the resize, (W / W0, H / H0) in float64
    (mmdet `Resize` keep_ratio: new_w / w, new_h / h), applied in the boxes' float32."""
    (h, w), (h0, w0) = size, out_size
    if (int(h), int(w)) == (int(h0), int(w0)):
        return boxes
    return boxes / boxes.new_tensor([w / w0, h / h0, w / w0, h / h0])


class _NormalizePad(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize: images arrive resized by the data pipeline.
    Test-time output: boxes rescaled to the requested sizes, masks pasted there (`paste_masks` or
    torchvision's paste)."""

    def __init__(self, mask_paste: str = "mmdet"):
        super().__init__(min_size=800, max_size=1333, image_mean=list(_IMAGENET_MEAN), image_std=list(_IMAGENET_STD),
                         size_divisible=32)  # min/max_size unused: resize is the identity
        self.mask_paste = mask_paste

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        if self.training:
            return result
        paste = paste_masks if self.mask_paste == "mmdet" else paste_masks_in_image
        for pred, shape, out_size in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = rescale_boxes(pred["boxes"], shape, out_size)
            if "masks" in pred:
                pred["masks"] = paste(pred["masks"], pred["boxes"], out_size)
        return result


class ConvNeXtDetector(GeneralizedRCNN):
    """Mask R-CNN / Cascade Mask R-CNN on `DenseConvNeXt` (see the module docstring).

    Args:
        config: a `DetectionConfig`.
    """

    def __init__(self, config: DetectionConfig = DetectionConfig()):
        backbone = dense_backbone(config.backbone, drop_path_rate=config.drop_path_rate,
                                  layer_scale_init_value=config.layer_scale_init_value)
        c = config.fpn_channels
        if config.anchors == "mmdet":
            anchors = MMDetAnchorGenerator((4, 8, 16, 32, 64), (0.5, 1.0, 2.0), (8.0,))
        else:  # torchvision's: corners rounded to integers, strides from image size // feature size
            anchors = AnchorGenerator(tuple((8 * s,) for s in (4, 8, 16, 32, 64)), ((0.5, 1.0, 2.0),) * 5)
        rpn = _RPN(
            anchors, RPNHead(c, 3), fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
            positive_fraction=0.5, pre_nms_top_n=dict(training=2000, testing=1000),  # per level
            post_nms_top_n=dict(training=config.rpn_post_nms_train, testing=config.rpn_post_nms_test), nms_thresh=0.7,
            box_loss=config.rpn_box_loss, allowed_border=config.rpn_allowed_border,
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
        super().__init__(backbone, rpn, roi_heads, _NormalizePad(config.mask_paste))
        self.neck = FeaturePyramidNetwork(backbone.out_channels, c, extra_blocks=LastLevelMaxPool())
        for m in self.neck.modules():  # mmdet FPN's init (xavier-uniform, bias 0), not torchvision's kaiming
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.config = config
        self.num_classes = config.num_classes

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None, *,
                out_sizes: list[tuple[int, int]] | None = None):
        """Train: `images` (3, H_i, W_i) in [0, 1] + `targets` -> dict of losses. Eval: -> list of
        detections in the images' pixels, or, with `out_sizes` (e.g. the original image sizes), with
        boxes scaled to and masks pasted at those sizes (mmdet's `rescale=True`)."""
        if self.training and targets is None:
            raise DataError("ConvNeXtDetector: targets (boxes, labels, masks per image) are required in training mode")
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)  # (B, 3, H, W) padded to multiples of 32
        features = self.neck(self.backbone(batch.tensors))  # "0".."3" = P2-P5, "pool" = P6; 256 channels
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, batch.image_sizes, out_sizes or sizes)

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
