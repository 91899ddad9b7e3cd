"""COCO box and mask AP (PAPER.md §4.1 reports AP^box and AP^mask on COCO val2017).

The evaluator takes the model's per-image outputs either already at the original image size (what
`model(images, out_sizes=orig_sizes)` returns, mmdet's `rescale=True`: boxes divided by the per-axis
scale factor, masks pasted at the original size; the evaluation loop feeds these) or in the
transformed image's pixels, which it maps back (boxes divided by size / orig_size per axis; mask
probabilities resized bilinearly). Masks are binarised at >= 0.5 (mmdet's mask_thr_binary),
RLE-encoded, and COCOeval runs (faster-coco-eval, else pycocotools) with the
standard parameters. Under torch.distributed every rank calls `summarize()`: predictions are
gathered, rank 0 evaluates, all ranks return the same dict.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnF

from convnext.dense.coco import _make_coco, coco_backend

__all__ = ["COCO_METRICS", "CocoEvaluator", "format_ap", "merge_predictions"]

# COCOeval.stats order, one name per entry; results are `{iou_type}_{name}` in percent.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def format_ap(value: float) -> str:
    """A metric in percent for a summary line: "12.34", or "n/a (no ground truth)" for NaN."""
    return "n/a (no ground truth)" if math.isnan(value) else f"{value:.2f}"


def merge_predictions(per_rank: Sequence[dict[int, dict]]) -> dict[int, dict]:
    """One prediction set per image id from several ranks' {image_id: {iou_type: [results]}}.

    The first rank holding an image wins: DistributedSampler pads its last batch by repeating
    images, whose duplicate detections would otherwise count as false positives.
    """
    merged: dict[int, dict] = {}
    for preds in per_rank:
        for image_id, res in preds.items():
            merged.setdefault(image_id, res)
    return merged


class CocoEvaluator:
    """COCO AP/AR of detections (and masks) against a COCO ground truth.

    Args:
        dataset_or_coco: a `CocoDataset` (its `coco` and `cat_ids` are used) or a COCO api object.
        cat_ids: COCO category id of each label (label l -> cat_ids[l - 1]); default the dataset's,
            or the COCO object's ids in sorted order.
        iou_types: any of "bbox", "segm".
    """

    def __init__(self, dataset_or_coco: Any, cat_ids: Sequence[int] | None = None,
                 iou_types: Sequence[str] = ("bbox", "segm")):
        coco = getattr(dataset_or_coco, "coco", dataset_or_coco)
        COCO, _, _ = coco_backend()
        # The ground truth must be of the evaluating library's class (loadRes builds its results).
        self.coco = coco if isinstance(coco, COCO) else _make_coco(coco.dataset)
        if cat_ids is None:
            cat_ids = getattr(dataset_or_coco, "cat_ids", None) or sorted(self.coco.getCatIds())
        self.cat_ids = list(cat_ids)
        bad = [t for t in iou_types if t not in ("bbox", "segm")]
        if bad:
            raise ValueError(f"iou_types must be 'bbox' and/or 'segm', got {bad}")
        self.iou_types = tuple(iou_types)
        self.reset()

    def reset(self) -> None:
        self.predictions: dict[int, dict[str, list[dict]]] = {}  # image_id -> iou_type -> COCO results

    @torch.no_grad()
    def update(self, outputs: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, Any]]) -> None:
        """Add one batch: outputs[i] = {boxes (K, 4) xyxy, scores (K,), labels (K,) in 1..C,
        masks (K, 1, H, W) probabilities, optional size (H, W)} in the pixels of outputs[i]["size"]
        when given (`tgt["orig_size"]`: already at the original size, nothing is rescaled), else of
        targets[i]["size"] (the network input)."""
        _, _, mask_api = coco_backend()
        for out, tgt in zip(outputs, targets):
            image_id = int(tgt["image_id"])
            h0, w0 = (int(v) for v in tgt["orig_size"])
            h, w = (int(v) for v in out.get("size", tgt["size"]))
            boxes = out["boxes"].detach().float().cpu().reshape(-1, 4)
            if (h, w) != (h0, w0):  # to original pixels: / the per-axis scale factor, as mmdet
                boxes = boxes / torch.tensor([w / w0, h / h0, w / w0, h / h0], dtype=torch.float32)
            boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
            scores = out["scores"].detach().float().cpu().tolist()
            cats = [self.cat_ids[int(lab) - 1] for lab in out["labels"].cpu()]
            res: dict[str, list[dict]] = {}
            if "bbox" in self.iou_types:
                res["bbox"] = [{"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                               for c, b, s in zip(cats, boxes.tolist(), scores)]
            if "segm" in self.iou_types:
                res["segm"] = [{"image_id": image_id, "category_id": c, "segmentation": r, "score": s}
                               for c, r, s in zip(cats, self._encode(out["masks"], h, w, h0, w0, mask_api), scores)]
            self.predictions[image_id] = res

    @staticmethod
    def _encode(masks: torch.Tensor, h: int, w: int, h0: int, w0: int, mask_api: Any) -> list[dict]:
        """(K, 1, >=H, >=W) probabilities in (h, w) pixels -> K RLEs of the original (h0, w0) image
        (bilinear resize when the sizes differ), binarised at >= 0.5."""
        masks = masks.detach().float().cpu()[:, :, :h, :w]  # drop any batch padding
        rles = []
        for chunk in masks.split(16):  # bound the (16, 1, h0, w0) float buffer
            if (h, w) != (h0, w0):
                chunk = nnF.interpolate(chunk, size=(h0, w0), mode="bilinear", align_corners=False)
            binary = chunk[:, 0] >= 0.5  # mmdet mask_thr_binary
            # pycocotools wants (H, W, K) Fortran-ordered uint8
            rles += mask_api.encode(np.asfortranarray(binary.permute(1, 2, 0).numpy().astype(np.uint8)))
        for r in rles:
            r["counts"] = r["counts"].decode("ascii")  # str: JSON- and pickle-friendly
        return rles

    def _gather(self) -> dict[int, dict]:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.predictions
        per_rank: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, self.predictions)
        return merge_predictions(per_rank)

    def summarize(self, per_class: bool = False) -> dict[str, float]:
        """`{iou_type}_{AP, AP50, ..., ARl}` in percent; with per_class also `{iou_type}_AP_{class name}`.
        Undefined values are NaN, never a number: COCOeval's -1 ("no ground truth in this area range"
        or of this class), and every value when the evaluated images hold no (non-crowd) ground truth
        (`format_ap` prints those as "n/a (no ground truth)"). Collective under DDP."""
        import torch.distributed as dist

        predictions = self._gather()
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        metrics = None
        if not distributed or dist.get_rank() == 0:
            metrics = {}
            image_ids = sorted(predictions)
            for iou_type in self.iou_types:
                results = [r for p in predictions.values() for r in p.get(iou_type, [])]
                metrics.update(self._evaluate(iou_type, results, image_ids, per_class))
        if distributed:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    def _evaluate(self, iou_type: str, results: list[dict], image_ids: list[int],
                  per_class: bool) -> dict[str, float]:
        names = [f"{iou_type}_{m}" for m in COCO_METRICS]
        cats = {c["id"]: c["name"] for c in self.coco.loadCats(self.cat_ids)}
        gt = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_ids)) if not a.get("iscrowd", 0)]
        if not gt:  # no ground truth: AP is undefined (COCOeval's -1), whatever was detected
            out = dict.fromkeys(names, math.nan)
            if per_class:
                out.update({f"{iou_type}_AP_{cats[c]}": math.nan for c in self.cat_ids})
            return out
        if not results:  # nothing detected: every AP/AR is 0 (COCOeval cannot load an empty result)
            out = dict.fromkeys(names, 0.0)
            if per_class:
                out.update({f"{iou_type}_AP_{cats[c]}": 0.0 for c in self.cat_ids})
            return out
        _, COCOeval, _ = coco_backend()
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its table
            dt = self.coco.loadRes(results)
            ev = COCOeval(self.coco, dt, iou_type)
            if hasattr(ev, "print_function"):  # faster-coco-eval logs it instead
                ev.print_function = lambda *a, **k: None
            ev.params.imgIds = image_ids  # only the images that were evaluated
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out = {n: float(v) * 100 if v >= 0 else math.nan for n, v in zip(names, ev.stats[:12])}
        if per_class:
            # precision: (T iou thresholds, R recall points, K categories, A areas, M max dets)
            precision = ev.eval["precision"]
            for k, cid in enumerate(ev.params.catIds):
                if cid in cats:
                    p = precision[:, :, k, 0, -1]  # area "all", 100 detections
                    out[f"{iou_type}_AP_{cats[cid]}"] = float(p[p > -1].mean()) * 100 if (p > -1).any() else math.nan
        return out
