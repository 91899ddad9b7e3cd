"""RoI heads of Mask R-CNN and Cascade Mask R-CNN (Cai & Vasconcelos 2018), as in the official
ConvNeXt MMDetection configs (PAPER.md §4.1), on torchvision ops.

One module serves both detectors: a cascade of N box stages (Mask R-CNN is N = 1), each with its
own IoU threshold, box-target stds, box head and mask head. What each detector sets:

                     Mask R-CNN                      Cascade Mask R-CNN
    stages           1 (IoU 0.5)                     3 (IoU 0.5 / 0.6 / 0.7), loss weights 1 / 0.5 / 0.25
    box head         2 shared FC (Shared2FCBBoxHead) 4 conv3x3 + BN, 1 FC (ConvFCBBoxHead "4conv1fc")
    target stds      0.1, 0.1, 0.2, 0.2              that, then /2, then /3 (0.033, 0.033, 0.067, 0.067)
    box loss         L1 on encoded deltas (x1)       GIoU on decoded boxes (x10)
    low-quality match yes                            no

Shared by both (mmdet conventions): box regression is class-specific with 4 outputs per object class
(no background slot), classification has C + 1 logits (background at index 0, torchvision's
convention; labels 1..C); 512 RoIs per image with 25% positives, ground-truth boxes added to the
proposals; RoIAlign 7x7 (boxes) / 14x14 (masks), `aligned=True`, sampling ratio 0, each RoI pooled
from one FPN level P2-P5 chosen by its scale (mmdet's SingleRoIExtractor, finest scale 56); a mask
head (4 conv3x3, 2x deconv, 1x1 logits per class, 28x28) per stage, trained on binary targets
(the matched ground-truth mask RoIAligned on the RoI, >= 0.5: mmdet's `mask_target`). At test time the class logits of
all stages are averaged, boxes come from the last stage's regression, and the masks of all stages'
mask heads are averaged (mmdet CascadeRoIHead.simple_test).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, generalized_box_iou_loss, roi_align

__all__ = ["FPNRoIAlign", "BoxHead", "MaskHead", "CascadeRoIHeads", "MaxIoUMatcher", "mask_targets"]


def _rois(boxes: list[Tensor]) -> Tensor:
    """Per-image boxes -> (K, 5) rows (image index, x1, y1, x2, y2), the roi_align format."""
    return torch.cat([torch.cat([b.new_full((len(b), 1), i), b], 1) for i, b in enumerate(boxes)])


class MaxIoUMatcher(det_utils.Matcher):
    """torchvision's Matcher with mmdet's low-quality rule (`MaxIoUAssigner`, match_low_quality,
    gt_max_assign_all): each ground truth i whose best IoU reaches `min_pos_iou` also gets every
    box at that IoU, assigned to i itself (later ground truths win ties). torchvision's rule keeps
    such boxes at any IoU (even 0) and assigns them to their own best ground truth instead."""

    def __init__(self, high_threshold: float, low_threshold: float, min_pos_iou: float,
                 allow_low_quality_matches: bool = True):
        super().__init__(high_threshold, low_threshold, allow_low_quality_matches=allow_low_quality_matches)
        self.min_pos_iou = min_pos_iou

    def set_low_quality_matches_(self, matches: Tensor, all_matches: Tensor, match_quality_matrix: Tensor) -> None:
        best, _ = match_quality_matrix.max(dim=1)  # (G,) best IoU of each ground truth
        for i in torch.nonzero(best >= self.min_pos_iou).flatten().tolist():
            matches[match_quality_matrix[i] == best[i]] = i


def mask_targets(gt_masks: Tensor, rois: Tensor, matched: Tensor, size: int) -> Tensor:
    """Binary (K, size, size) mask targets, as mmdet's `mask_target` (BitmapMasks.crop_and_resize,
    binarize=True): the matched ground-truth mask (G, H, W) is RoIAligned on each RoI (K, 4)
    (aligned=True, sampling ratio 0, scale 1) and thresholded at >= 0.5. torchvision's own targets
    use aligned=False and keep the soft values."""
    if not len(rois):
        return rois.new_zeros(0, size, size)
    boxes = torch.cat([matched[:, None].to(rois.dtype), rois], 1)  # (K, 5): (gt index, box)
    soft = roi_align(gt_masks[:, None].to(rois.dtype), boxes, (size, size), 1.0, 0, aligned=True)[:, 0]
    return (soft >= 0.5).to(rois.dtype)


class FPNRoIAlign(nn.Module):
    """RoIAlign (aligned=True) of each RoI from the one FPN level its scale maps to (mmdet SingleRoIExtractor).

    Level of a box of scale s = sqrt(w * h): floor(log2(s / finest_scale)), clamped to the levels;
    i.e. P2 below 112 px, P3 below 224, P4 below 448, P5 above (= torchvision's LevelMapper).
    """

    def __init__(self, output_size: int, strides: tuple[int, ...] = (4, 8, 16, 32), finest_scale: int = 56):
        super().__init__()
        self.output_size, self.strides, self.finest_scale = output_size, strides, finest_scale

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:  # -> (K, C, S, S)
        rois = _rois(boxes)
        scale = ((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).clamp(min=0).sqrt()
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(0, len(self.strides) - 1).long()
        out = features[0].new_zeros(len(rois), features[0].shape[1], self.output_size, self.output_size)
        for lvl, (feat, stride) in enumerate(zip(features, self.strides)):
            idx = torch.nonzero(level == lvl).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(feat, rois[idx], self.output_size, 1.0 / stride, 0, aligned=True).to(out.dtype)
        return out


class ConvBN(nn.Module):
    """3x3 conv (no bias) -> BatchNorm -> ReLU; mmdet ConvModule names `conv`, `bn`. BN, not SyncBN:
    `nn.SyncBatchNorm.convert_sync_batchnorm(model)` makes it the official SyncBN for multi-GPU runs."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class BoxHead(nn.Module):
    """`num_convs` ConvBN layers, then `num_fcs` FC+ReLU, then class logits (C+1, background first)
    and class-specific box deltas (4C). mmdet: Shared2FCBBoxHead (0 convs, 2 fcs) / ConvFCBBoxHead."""

    def __init__(self, num_classes: int, num_convs: int, num_fcs: int, in_channels: int = 256,
                 roi_size: int = 7, fc_dim: int = 1024):
        super().__init__()
        self.convs = nn.ModuleList([ConvBN(in_channels, in_channels) for _ in range(num_convs)])
        dims = [in_channels * roi_size * roi_size] + [fc_dim] * num_fcs
        self.fcs = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.cls_score = nn.Linear(dims[-1], num_classes + 1)
        self.bbox_pred = nn.Linear(dims[-1], 4 * num_classes)
        for fc in self.fcs:  # mmdet's init: xavier FCs, small normal predictors
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (K, 256, 7, 7) -> (K, C+1), (K, 4C)
        for conv in self.convs:
            x = conv(x)
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """mmdet FCNMaskHead: 4 conv3x3+ReLU, 2x2/2 deconv+ReLU, 1x1 logits per object class (no background)."""

    def __init__(self, num_classes: int, in_channels: int = 256, num_convs: int = 4):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, in_channels, 3, padding=1) for _ in range(num_convs)])
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        self.logits = nn.Conv2d(in_channels, num_classes, 1)
        for m in [*self.convs, self.upsample, self.logits]:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (K, 256, 14, 14) -> (K, C, 28, 28)
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.logits(F.relu(self.upsample(x)))


class CascadeRoIHeads(nn.Module):
    """Box + mask RoI heads with N cascade stages (N = 1: Mask R-CNN), torchvision RoIHeads interface:
    `forward(features, proposals, image_shapes, targets) -> (detections, losses)`.

    Args:
        num_classes: object classes (without background).
        box_heads / mask_heads: one per stage.
        iou_thresholds: positive (= negative) IoU threshold of each stage.
        stage_weights: loss weight of each stage.
        target_stds: box-delta stds of each stage, (x, y, w, h).
        box_loss: "l1" (on deltas / stds) or "giou" (on decoded boxes), times `box_loss_weight`.
        match_low_quality: also match each ground truth to its best proposals (mmdet match_low_quality).
    """

    def __init__(
        self,
        num_classes: int,
        box_heads: list[BoxHead],
        mask_heads: list[MaskHead],
        iou_thresholds: tuple[float, ...],
        stage_weights: tuple[float, ...],
        target_stds: tuple[tuple[float, float, float, float], ...],
        box_loss: str = "l1",
        box_loss_weight: float = 1.0,
        match_low_quality: bool = False,
        rois_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ):
        super().__init__()
        n = len(box_heads)
        if not (len(mask_heads) == len(iou_thresholds) == len(stage_weights) == len(target_stds) == n):
            raise ValueError("one box head, mask head, IoU threshold, loss weight and std set per stage")
        if box_loss not in ("l1", "giou"):
            raise ValueError(f"box_loss must be 'l1' or 'giou', got {box_loss!r}")
        self.num_classes = num_classes
        self.box_heads, self.mask_heads = nn.ModuleList(box_heads), nn.ModuleList(mask_heads)
        self.box_pool, self.mask_pool = FPNRoIAlign(7), FPNRoIAlign(14)
        self.matchers = [MaxIoUMatcher(t, t, min_pos_iou=t, allow_low_quality_matches=match_low_quality)
                         for t in iou_thresholds]  # mmdet rcnn assigners: min_pos_iou = pos_iou_thr
        self.coders = [det_utils.BoxCoder(tuple(1.0 / s for s in stds)) for stds in target_stds]
        self.sampler = det_utils.BalancedPositiveNegativeSampler(rois_per_image, positive_fraction)
        self.stage_weights, self.box_loss, self.box_loss_weight = stage_weights, box_loss, box_loss_weight
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    # ----------------------------------------------------------------------------------- training
    def _sample(self, stage: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]):
        """Per image: sampled RoIs (K, 4), their labels (K,) (0 = background), index of the matched
        ground truth (K,) (0 for background), and whether each RoI is a ground-truth box (K,)."""
        out = []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.dtype)
            rois = torch.cat([props, gt])  # ground truth joins the proposals (mmdet add_gt_as_proposals)
            is_gt = torch.arange(len(rois), device=rois.device) >= len(props)
            if len(gt):
                matched = self.matchers[stage](box_iou(gt, rois))  # (K,): gt index, or < 0 below the threshold
                labels = t["labels"][matched.clamp(min=0)].clone()
                labels[matched < 0] = 0
            else:  # an image without objects: every RoI is background
                matched = torch.zeros(len(rois), dtype=torch.long, device=rois.device)
                labels = torch.zeros(len(rois), dtype=torch.long, device=rois.device)
            pos, neg = self.sampler([labels])
            keep = torch.nonzero(pos[0] | neg[0]).squeeze(1)
            out.append((rois[keep], labels[keep], matched[keep].clamp(min=0), is_gt[keep]))
        return [list(x) for x in zip(*out)]

    def _box_losses(self, stage: int, logits: Tensor, deltas: Tensor, rois: Tensor, labels: Tensor,
                    gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy over all sampled RoIs; box loss summed over positives / number of RoIs (mmdet avg_factor)."""
        loss_cls = F.cross_entropy(logits, labels)
        pos = torch.nonzero(labels > 0).squeeze(1)
        pred = deltas.view(len(deltas), -1, 4)[pos, labels[pos] - 1]  # (P, 4) deltas of each positive's own class
        coder = self.coders[stage]
        if self.box_loss == "l1":
            loss_box = (pred - coder.encode_single(gt_boxes[pos], rois[pos])).abs().sum()
        else:
            loss_box = generalized_box_iou_loss(coder.decode_single(pred, rois[pos]), gt_boxes[pos], reduction="sum")
        return loss_cls, loss_box * self.box_loss_weight / max(labels.numel(), 1)

    def _refine(self, stage: int, logits: Tensor, deltas: Tensor, rois: Tensor, labels: Tensor | None) -> Tensor:
        """Boxes regressed by this stage: the next stage's proposals (class: the label, or the top object class)."""
        cls = logits[:, 1:].argmax(1) + 1
        if labels is not None:
            cls = torch.where(labels > 0, labels, cls)
        pred = deltas.view(len(deltas), -1, 4)[torch.arange(len(deltas), device=deltas.device), cls - 1]
        return self.coders[stage].decode_single(pred, rois)

    def _train(self, features: list[Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
               targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        for s in range(self.num_stages):
            rois, labels, matched, is_gt = self._sample(s, proposals, targets)
            logits, deltas = self.box_heads[s](self.box_pool(features, rois))
            all_labels, all_rois = torch.cat(labels), torch.cat(rois)
            gt_boxes = torch.cat([t["boxes"][m] if len(t["boxes"]) else r for t, m, r in zip(targets, matched, rois)])
            loss_cls, loss_box = self._box_losses(s, logits, deltas, all_rois, all_labels, gt_boxes)

            pos = [lab > 0 for lab in labels]
            pos_rois = [r[p] for r, p in zip(rois, pos)]
            mask_logits = self.mask_heads[s](self.mask_pool(features, pos_rois))  # (P, C, 28, 28)
            pos_labels = torch.cat([lab[p] for lab, p in zip(labels, pos)]) - 1  # mask channels: no background
            targets_m = torch.cat([mask_targets(t["masks"], r, m[p], mask_logits.shape[-1])
                                   for t, r, m, p in zip(targets, pos_rois, matched, pos)])
            if len(targets_m):  # mean BCE over every pixel of every positive (mmdet mask_cross_entropy)
                picked = mask_logits[torch.arange(len(pos_labels), device=pos_labels.device), pos_labels]
                loss_mask = F.binary_cross_entropy_with_logits(picked, targets_m)
            else:
                loss_mask = mask_logits.sum() * 0
            w = self.stage_weights[s]
            suffix = "" if self.num_stages == 1 else f"_s{s}"
            losses.update({f"loss_classifier{suffix}": w * loss_cls, f"loss_box_reg{suffix}": w * loss_box,
                           f"loss_mask{suffix}": w * loss_mask})
            if s + 1 < self.num_stages:  # next stage trains on these boxes, regressed, without the gt ones
                with torch.no_grad():
                    refined = self._refine(s, logits, deltas, all_rois, all_labels).split([len(r) for r in rois])
                proposals = [clip_boxes_to_image(b[~g], shape) for b, g, shape in zip(refined, is_gt, image_shapes)]
        return losses

    # ---------------------------------------------------------------------------------- inference
    def _detect(self, features: list[Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        counts = [len(p) for p in proposals]
        rois = torch.cat(proposals)
        logits_sum = 0
        for s in range(self.num_stages):
            logits, deltas = self.box_heads[s](self.box_pool(features, rois.split(counts)))
            logits_sum = logits_sum + logits
            if s + 1 < self.num_stages:
                rois = self._refine(s, logits, deltas, rois, None)
                rois = torch.cat([clip_boxes_to_image(b, sh) for b, sh in zip(rois.split(counts), image_shapes)])
        scores = F.softmax(logits_sum / self.num_stages, -1)[:, 1:]  # (K, C): averaged logits of all stages
        boxes = self.coders[-1].decode_single(deltas, rois).view(len(rois), -1, 4)  # (K, C, 4) last stage

        results = []
        for sc, bx, shape in zip(scores.split(counts), boxes.split(counts), image_shapes):
            bx = clip_boxes_to_image(bx, shape)
            labels = torch.arange(1, self.num_classes + 1, device=sc.device).expand_as(sc)
            sc, bx, labels = sc.reshape(-1), bx.reshape(-1, 4), labels.reshape(-1)
            keep = torch.nonzero(sc > self.score_thresh).squeeze(1)
            sc, bx, labels = sc[keep], bx[keep], labels[keep]
            keep = batched_nms(bx, sc, labels, self.nms_thresh)[: self.detections_per_img]  # sorted by score
            results.append({"boxes": bx[keep], "scores": sc[keep], "labels": labels[keep]})

        det_boxes = [r["boxes"] for r in results]
        if sum(len(b) for b in det_boxes):
            mask_feats = self.mask_pool(features, det_boxes)
            idx = torch.arange(len(mask_feats), device=mask_feats.device)
            labels = torch.cat([r["labels"] for r in results]) - 1
            probs = sum(head(mask_feats)[idx, labels].sigmoid() for head in self.mask_heads) / self.num_stages
        else:
            probs = features[0].new_zeros(0, 28, 28)
        for r, p in zip(results, probs.split([len(b) for b in det_boxes])):
            r["masks"] = p[:, None]  # (K, 1, 28, 28), pasted into the image by the transform's postprocess
        return results

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None):
        feats = list(features.values())[: len(self.box_pool.strides)]  # P2-P5 (P6 only feeds the RPN)
        if self.training:
            return [], self._train(feats, proposals, image_shapes, targets)
        return self._detect(feats, proposals, image_shapes), {}

    def forward_dummy(self, features: dict[str, Tensor], num_rois: int = 1000, num_mask_rois: int = 100) -> list[Tensor]:
        """mmdet's `forward_dummy` (the FLOPs protocol of mmdet's get_flops): every stage's box head on
        `num_rois` RoIs and every stage's mask head on the first `num_mask_rois`, with no sampling,
        NMS or refinement. The RoIs are random and pooled from P2 (RoIAlign counts no MACs, in mmcv
        or here; one level keeps this runnable on the meta device)."""
        p2 = next(iter(features.values()))
        boxes = torch.rand(num_rois, 4, device=p2.device, dtype=p2.dtype) * 64
        boxes = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:] + 1], 1)
        rois = _rois([boxes])
        box_feats = roi_align(p2, rois, 7, 0.25, 0, aligned=True)
        mask_feats = roi_align(p2, rois[:num_mask_rois], 14, 0.25, 0, aligned=True)
        outs = [t for head in self.box_heads for t in head(box_feats)]
        return outs + [head(mask_feats) for head in self.mask_heads]
