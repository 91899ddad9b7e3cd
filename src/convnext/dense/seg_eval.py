"""Semantic-segmentation metrics as mmseg computes them for ADE20K (PAPER.md §4.2 reports mIoU).

One dataset-level confusion matrix (K x K, rows = ground truth, columns = prediction) accumulated
over every pixel whose label is not `ignore_index`; then, per class c,
    IoU_c = TP / (TP + FP + FN),  Acc_c = TP / (TP + FN),  aAcc = sum TP / sum labelled pixels.
A class with no ground-truth pixel has IoU NaN when nothing was predicted as it either (0 when it
was) and Acc NaN; NaNs are left out of mIoU / mAcc (mmseg's nanmean). All values in percent.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .upernet import resize

__all__ = ["SegEvaluator", "evaluate_segmentation"]


class SegEvaluator:
    """Accumulate predictions against labels; `summarize()` gives mIoU / aAcc / mAcc / per-class IoU.

    Args:
        num_classes: K; labels must be in [0, K) or `ignore_index`.
        ignore_index: label value excluded from every metric.
        class_names: names for the per-class IoU dict (default "0", "1", ...).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for num_classes={num_classes}")
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch.

        Args:
            pred: class indices (B, H, W), or scores (B, K, h, w) (logits or probabilities), which are
                resized bilinearly to the label size first (predictions at the original resolution).
            target: labels (B, H, W).
        """
        if pred.ndim == target.ndim + 1:
            pred = resize(pred.float(), target.shape[-2:]).argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
        k = self.num_classes
        valid = target != self.ignore_index
        t, p = target[valid].long(), pred[valid].long()
        if t.numel() and (int(t.max()) >= k or int(t.min()) < 0):
            raise ValueError(f"label values must be in [0, {k}) or {self.ignore_index}; found {int(t.max())}")
        cm = torch.bincount(t * k + p, minlength=k * k).reshape(k, k)  # (gt, pred) pair counts
        self.confusion += cm.to(self.confusion.device)

    def _global_confusion(self) -> torch.Tensor:
        """The matrix summed over all processes when torch.distributed is initialised (a copy)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.confusion.clone()
        # NCCL reduces only device tensors.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        cm = self.confusion.to(device, copy=True)
        dist.all_reduce(cm)
        return cm.cpu()

    def summarize(self) -> dict:
        """{"mIoU", "aAcc", "mAcc": float, "IoU": {class_name: float}} in percent (NaN: see module doc).

        Under torch.distributed every process must call it: the matrices of all ranks are summed.
        """
        cm = self._global_confusion().double()
        tp = cm.diag()
        gt = cm.sum(1)  # TP + FN
        predicted = cm.sum(0)  # TP + FP
        union = gt + predicted - tp
        iou = tp / union  # 0/0 -> NaN: class absent from labels and predictions
        acc = tp / gt  # NaN where the class has no ground truth
        total = gt.sum()
        return {
            "mIoU": _nanmean(iou) * 100,
            "aAcc": float(tp.sum() / total) * 100 if total > 0 else math.nan,
            "mAcc": _nanmean(acc) * 100,
            "IoU": {name: float(v) * 100 for name, v in zip(self.class_names, iou)},
        }


def _nanmean(x: torch.Tensor) -> float:
    x = x[~x.isnan()]
    return float(x.mean()) if x.numel() else math.nan


@torch.no_grad()
def evaluate_segmentation(model: torch.nn.Module, loader, evaluator: SegEvaluator, *, inference=None,
                          device: str | torch.device = "cpu") -> dict:
    """Run `model` over `loader` ((images, labels) batches) and return `evaluator.summarize()`.

    Args:
        inference: callable (model, images) -> scores (B, K, h, w), e.g.
            `functools.partial(slide_inference, crop=512, stride=341)` or `multiscale_inference`;
            default: the model's whole-image logits. Scores are resized to the label size.
        device: where the images go.

    Validation batches should hold one image: `collate_segmentation` pads images of different sizes,
    and the padded border would be resized into the prediction.
    """
    was_training = model.training
    model.eval()
    evaluator.reset()
    try:
        for images, labels in loader:
            images = images.to(device)
            scores = inference(model, images) if inference is not None else model(images)
            evaluator.update(scores.float().cpu(), labels)
    finally:
        model.train(was_training)
    return evaluator.summarize()
