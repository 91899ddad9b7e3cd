"""Detection and segmentation as tasks of the one training loop (`convnext.train.tasks`).

Each task brings its data (COCO-format JSON / ADE20K-layout folders), its model (a registered
`mask_rcnn_*`, `cascade_mask_rcnn_*` or `upernet_*` name), its loss (the sum of the model's loss
dict), its evaluation (COCO box/mask AP, mIoU) and its optimizer groups (the official layer-wise /
stage-wise lr decay, PAPER.md §4). Resume, AMP, accumulation, DDP, EMA, logging and checkpoints
are the loop's.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from ..errors import DataError
from ..train.tasks import Task, TaskData, register_task

__all__ = ["DetectionTask", "SegmentationTask", "CocoMetrics", "SegMetrics", "dense_param_groups", "num_decay_layers"]


def _collate_counting_skipped(collate, batch):
    good = [b for b in batch if b is not None]  # None: an image the dataset could not read
    return (*collate(good), len(batch) - len(good))


def _with_skipped(collate):
    """Adapt a (inputs, targets) collate to the loop's (inputs, targets, skipped images) batches.

    A partial of module-level functions, so spawned loader workers can unpickle it (data.worker_context).
    """
    return functools.partial(_collate_counting_skipped, collate)


def num_decay_layers(model: nn.Module) -> int:
    """The official `num_layers` of the dense lr-decay rules: 3 + (stage-3 depth) // 3 (T 6, S/B/L/XL 12)."""
    return 3 + model.backbone.config.depths[2] // 3


def dense_param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None, layer_id) -> list[dict]:
    """AdamW groups of a detector/segmenter: no decay on 1-D parameters (biases, norms, layer scale),
    and lr x decay ** (num_layers + 1 - id) with the official ids (`layer_decay.py`)."""
    from ..train.param_groups import no_weight_decay
    from .layer_decay import lr_scale

    n = num_decay_layers(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        gid = layer_id(name, n) if layer_decay is not None else n + 1
        decay = not no_weight_decay(name, p)
        g = groups.setdefault((gid, decay), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0, "layer_id": gid,
            "lr_scale": lr_scale(gid, n, layer_decay) if layer_decay is not None else 1.0,
        })
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


class CocoMetrics:
    """Evaluator of the one evaluation loop (`train.engine.evaluate`): COCO box / mask AP."""

    def __init__(self, dataset):
        from .coco_eval import CocoEvaluator

        self.coco = CocoEvaluator(dataset)

    predict_takes_targets = True  # the original image sizes are in the targets

    def predict(self, model, images, device, targets=None):
        """[{"boxes", "labels", "scores", "masks", "size"}] per image, at the original image size
        (`targets[i]["orig_size"]`) as mmdet's rescale=True: boxes divided by the per-axis scale
        factor, masks pasted there; without targets in the network input's pixels."""
        sizes = None if targets is None else [tuple(int(v) for v in t["orig_size"]) for t in targets]
        outputs = model([im.to(device) for im in images], out_sizes=sizes)
        return outputs if sizes is None else [{**o, "size": s} for o, s in zip(outputs, sizes)]

    def update(self, outputs, targets) -> None:
        self.coco.update([{k: v.float().cpu() if torch.is_tensor(v) else v for k, v in o.items()} for o in outputs],
                         targets)

    def summarize(self) -> dict:
        return self.coco.summarize()


class SegMetrics:
    """Evaluator of the one evaluation loop: mIoU / aAcc with the paper's sliding window (crop, stride 2/3
    of it: 512 -> 341), single-scale or, with `multiscale`, averaged over ratios 0.5-1.75 and flips."""

    def __init__(self, num_classes: int, crop: int, multiscale: bool = False, class_names=None):
        from .seg_eval import SegEvaluator

        self.num_classes, self.crop, self.multiscale = num_classes, crop, multiscale
        self.seg = SegEvaluator(num_classes, class_names=class_names)

    def predict(self, model, images, device):
        from .seg_inference import multiscale_inference, slide_inference

        infer = multiscale_inference if self.multiscale else slide_inference
        return infer(model, images.to(device), crop=self.crop, stride=max(self.crop * 2 // 3, 1),
                     num_classes=self.num_classes)  # (B, num_classes, H, W) scores

    def update(self, scores, labels) -> None:
        self.seg.update(scores.float().cpu(), labels)

    def summarize(self) -> dict:
        res = self.seg.summarize()
        per_class = res.pop("IoU", None)
        if per_class is not None:
            res["per_class"] = {"IoU": per_class}
        return res


class _DenseTask(Task):
    """What detection and segmentation share: model building and backbone initialisation."""

    sync_batchnorm = True  # the official configs use SyncBN in the heads
    finetune_hint = "--pretrained (the official ImageNet weights of the backbone)"

    def build_model(self, config, data: TaskData) -> nn.Module:
        return self.create_model(config, len(data.classes))  # drop path: the official value registered

    def load_initial_weights(self, model: nn.Module, config) -> str:
        """--pretrained: the official classification weights of the backbone; --finetune FILE: a
        classification checkpoint (backbone only) or an official mmdet/mmseg file (whole model)."""
        from .backbone import load_backbone_checkpoint

        if config.pretrained:
            from ..weights.pretrained import download_pretrained, get_pretrained

            name = model.config.backbone if hasattr(model.config, "backbone") else _backbone_name(config.model)
            weights = get_pretrained(name)
            report = load_backbone_checkpoint(model.backbone, download_pretrained(weights))
            return (f"--pretrained: {report} ({weights.tag}; the paper starts from non-EMA weights, which are "
                    f"published only for the 22K models)")
        whole = self._load_whole(model, config.finetune)
        if whole is not None:
            return f"--finetune: {whole}"
        return f"--finetune: {load_backbone_checkpoint(model.backbone, config.finetune)}"

    def _load_whole(self, model: nn.Module, path) -> str | None:
        return None


def _backbone_name(model_name: str) -> str:
    return model_name[model_name.index("convnext"):]


class DetectionTask(_DenseTask):
    """COCO instance detection/segmentation: Mask R-CNN and Cascade Mask R-CNN (PAPER.md §4.1)."""

    name = "detection"
    primary = "bbox_AP"

    def build_data(self, config, train: bool = True) -> TaskData:
        from .coco import build_coco_dataset, collate_detection

        collate = _with_skipped(collate_detection)
        # unreadable images are skipped and counted (or refused with strict); --num-classes must match
        coco = functools.partial(build_coco_dataset, config.data, img_size=config.img_size,
                                 strict=getattr(config, "strict_images", False),
                                 num_classes=getattr(config, "num_classes", None))
        if not train:  # evaluation only: the (possibly large) training JSON is not read
            val = coco("val")
            return TaskData(train=None, val=val, classes=list(val.classes), collate_train=collate,
                            collate_eval=collate, notes=[f"warning: {w}" for w in val.warnings])
        train_set = coco("train")
        notes = [f"warning: {w}" for w in train_set.warnings]
        try:
            val = coco("val")
            if getattr(val, "warning", None):
                notes.append(f"warning: {val.warning}")
            if val.ann_file != train_set.ann_file:
                notes += [f"warning: {w}" for w in val.warnings]
        except DataError:
            if config.eval_every != 0:
                raise
            val = None
        if config.train_subset is not None:
            from ..data import subset

            train_set.classes = list(train_set.classes)
            train_set = subset(train_set, config.train_subset, seed=config.seed)
        return TaskData(train=train_set, val=val, classes=list(train_set.classes), collate_train=collate,
                        collate_eval=collate,
                        notes=notes)

    def param_groups(self, model: nn.Module, config) -> list[dict]:
        from .layer_decay import detection_layer_id

        return dense_param_groups(model, config.weight_decay, config.layer_decay, detection_layer_id)

    def loss(self, model, images, targets, device):
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        losses = model(images, targets)  # {"loss_classifier": ..., "loss_box_reg": ..., "loss_mask": ...}
        return sum(losses.values())

    def evaluator(self, dataset):
        return CocoMetrics(dataset)

    def summary_line(self, metrics: dict) -> str:
        from .coco_eval import format_ap

        return f"box AP {format_ap(metrics['bbox_AP'])}  mask AP {format_ap(metrics.get('segm_AP', float('nan')))}"

    def _load_whole(self, model, path):
        from .backbone import load_whole_dense

        return load_whole_dense(model, path, "detection")  # mmdet (either naming) or ours; None: backbone only


class SegmentationTask(_DenseTask):
    """ADE20K-layout semantic segmentation: UperNet (PAPER.md §4.2)."""

    name = "segmentation"
    primary = "mIoU"

    def __init__(self, multiscale: bool = False):
        self.crop = 512
        self.num_classes = 0
        self.multiscale = multiscale  # the paper's main ADE20K metric: 6 scales x flip (eval only)

    def build_data(self, config, train: bool = True) -> TaskData:
        from .segmentation_data import SegmentationFolder, collate_segmentation

        self.crop = config.img_size
        collate = _with_skipped(collate_segmentation)
        folder = functools.partial(SegmentationFolder, config.data, crop_size=config.img_size,
                                   strict=getattr(config, "strict_images", False))
        if not train:  # evaluation only
            val = folder("validation", num_classes=config.num_classes)
            self.num_classes = val.num_classes
            return TaskData(train=None, val=val, classes=val.class_names or [str(i) for i in range(val.num_classes)],
                            collate_train=collate, collate_eval=collate, eval_batch_size=1,
                            notes=[f"warning: {w}" for w in val.warnings])
        train_set = folder("training", num_classes=config.num_classes)
        notes = [f"warning: {w}" for w in train_set.warnings]
        try:
            val = folder("validation", num_classes=train_set.num_classes)
            notes += [f"warning: {w}" for w in val.warnings]
        except DataError:
            if config.eval_every != 0:
                raise
            val = None
        self.num_classes = train_set.num_classes
        classes = train_set.class_names or [str(i) for i in range(train_set.num_classes)]
        if config.train_subset is not None:
            from ..data import subset

            train_set.classes = classes
            train_set = subset(train_set, config.train_subset, seed=config.seed)
        # Validation images keep their own sizes: one per batch, so no padding enters the metric.
        return TaskData(train=train_set, val=val, classes=classes, collate_train=collate, collate_eval=collate,
                        eval_batch_size=1, notes=notes)

    def param_groups(self, model: nn.Module, config) -> list[dict]:
        from .layer_decay import stage_wise_layer_id

        return dense_param_groups(model, config.weight_decay, config.layer_decay, stage_wise_layer_id)

    def loss(self, model, images, labels, device):
        losses = model(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        return sum(losses.values())  # loss_seg + 0.4 x loss_aux

    def evaluator(self, dataset):
        return SegMetrics(self.num_classes, self.crop, self.multiscale, getattr(dataset, "class_names", None))

    def summary_line(self, metrics: dict) -> str:
        return f"mIoU {metrics['mIoU']:.2f}  aAcc {metrics['aAcc']:.2f}"

    def _load_whole(self, model, path):
        from .backbone import load_whole_dense

        return load_whole_dense(model, path, "segmentation")  # mmseg (either naming) or ours; None: backbone only


register_task("detection", DetectionTask)
register_task("segmentation", SegmentationTask)
