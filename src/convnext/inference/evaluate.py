"""`convnext eval`: the metrics of a `Loaded` on a dataset's validation split, through the one
evaluation loop (`convnext.train.engine.evaluate`) with the task's evaluator.

- classification: top-1 / top-5 (top-5 hidden for 5 classes or fewer) / loss, and per-class accuracy.
- detection: the 12 COCO box and mask AP/AR numbers; segmentation: mIoU, aAcc, mAcc, per-class IoU.

`save_predictions=DIR` writes what was evaluated, in the formats people submit:
- detection: `DIR/detections.json`, COCO results (image_id, category_id of the annotation file,
  bbox [x, y, w, h], score, segmentation as compressed RLE with `counts` a str);
- segmentation: `DIR/<annotation name>.png` per image, in the annotation files' own values
  (class index + 1 under reduce_zero_label, as ADE20K; 0 for nothing);
- classification: `DIR/predictions.json`, per image its file, true class and top-k.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..devices import module_device
from ..errors import ConfigError, DataError
from .loaded import Loaded

__all__ = ["evaluate", "evaluate_classification", "evaluate_dense", "PerClassAccuracy"]


def evaluate(loaded: Loaded, data: str, **kw) -> dict:
    """Metrics of `loaded` on the validation split of `data` (see the module docstring)."""
    if loaded.task == "classification":
        return evaluate_classification(loaded, data, **kw)
    return evaluate_dense(loaded, data, **kw)


def _check_counts(batch_size: int | None, num_workers: int) -> None:
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
    if num_workers < 0:
        raise ConfigError(f"--num-workers {num_workers}: must be >= 0")


class PerClassAccuracy:
    """The classification evaluator (`engine.Accuracy`) plus per-class accuracy and, when `topk`,
    each image's top-k (class index, probability) in loader order."""

    def __init__(self, num_classes: int, topk: int = 0):
        import torch

        from ..train.engine import Accuracy

        self.inner = Accuracy(num_classes)
        self.hits = torch.zeros(num_classes, dtype=torch.int64)
        self.totals = torch.zeros(num_classes, dtype=torch.int64)
        self.topk = topk
        self.rows: list[tuple[int, list[tuple[int, float]]]] = []

    def predict(self, model, images, device):
        return self.inner.predict(model, images, device)

    def update(self, logits, targets) -> None:
        import torch

        self.inner.update(logits, targets)
        logits, t = logits.float().cpu(), targets.cpu()
        pred = logits.argmax(1)
        self.totals += torch.bincount(t, minlength=len(self.totals))
        self.hits += torch.bincount(t[pred == t], minlength=len(self.hits))
        if self.topk:
            p, i = logits.softmax(1).topk(min(self.topk, logits.shape[1]), dim=1)
            self.rows += [(int(y), list(zip(ii, pp))) for y, ii, pp in zip(t.tolist(), i.tolist(), p.tolist())]

    def summarize(self) -> dict:
        res = self.inner.summarize()
        res["per_class_accuracy"] = [100.0 * int(h) / int(n) if n else None for h, n in zip(self.hits, self.totals)]
        return res


def evaluate_classification(
    loaded: Loaded, data: str, *, batch_size: int | None = 100, num_workers: int = 2, amp: str = "off",
    device: Any = None, data_dir: str | None = None, strict_images: bool = False, progress: bool = True,
    save_predictions: str | Path | None = None, topk: int = 5, dataset: Any = None, **_unused: Any,
) -> dict:
    """Top-1/top-5 (percent), loss and per-class accuracy of a classifier on the val split of `data`.

    `dataset`: that split already built (`build_dataset(data, "val", loaded.transform, ...)`), so a
    caller that needed its size first does not list the folder again.
    """
    import torch

    from ..data import build_dataset
    from ..data.datasets import error_line
    from ..outputs import printable
    from ..train.distributed import DistInfo
    from ..train.engine import evaluate as run_eval
    from ..train.trainer import make_eval_loader

    _check_counts(batch_size, num_workers)
    model = loaded.model
    dev = module_device(model)
    labels = loaded.classes if loaded.labels_stored else None  # names the checkpoint itself carries
    if dataset is None:
        dataset = build_dataset(data, "val", loaded.transform, classes=None, strict=strict_images, data_dir=data_dir)
    target_map = None
    if labels is not None and list(dataset.classes) != list(labels):
        missing = sorted(set(dataset.classes) - set(labels))
        if missing:
            raise DataError(f"--data {data}: class(es) {', '.join(printable(m) for m in missing[:5])} are not "
                            f"among the checkpoint's {len(labels)} labels")
        target_map = torch.tensor([labels.index(c) for c in dataset.classes])  # dataset index -> model index
    elif labels is None and getattr(model, "num_classes", len(dataset.classes)) < len(dataset.classes):
        raise DataError(f"--data {data} has {len(dataset.classes)} classes, the model only {model.num_classes}")
    num_classes = getattr(model, "num_classes", len(dataset.classes))
    names = list(labels) if labels is not None else list(dataset.classes)
    loader = make_eval_loader(dataset, batch_size or 100, num_workers, DistInfo(device=dev))
    batches = loader if target_map is None else ((x, target_map[y], bad) for x, y, bad in loader)
    evaluator = PerClassAccuracy(num_classes, topk if save_predictions is not None else 0)
    try:
        res = run_eval(model, batches, dev, loaded_amp(amp), evaluator, progress=progress)
    except DataError as e:  # --strict-images: re-raised from a loader worker with its traceback as text
        raise DataError(error_line(e)) from None
    per_class = res.pop("per_class_accuracy")
    present = set(target_map.tolist()) if target_map is not None else set(range(len(dataset.classes)))
    res["per_class"] = {"accuracy": {names[i] if i < len(names) else str(i): v for i, v in enumerate(per_class)
                                     if i in present}}
    res.update(checkpoint=loaded.source, data=data, img_size=loaded.img_size, weights=loaded.weights,
               num_classes=num_classes)
    if save_predictions is not None:
        res["predictions"] = _save_classification(Path(save_predictions), dataset, evaluator.rows, names,
                                                  res.get("skipped_images", 0))
    return res


def loaded_amp(amp: str) -> str:
    if amp not in ("bf16", "fp16", "off"):
        raise ConfigError(f"--amp {amp}: expected bf16, fp16 or off")
    return amp


def _save_classification(out: Path, dataset, rows, names: list[str], skipped: int) -> str:
    out.mkdir(parents=True, exist_ok=True)
    samples = getattr(dataset, "samples", None)
    with_files = samples is not None and not skipped and len(samples) == len(rows)
    records = []
    for n, (y, top) in enumerate(rows):
        rec = {"image": str(samples[n][0]) if with_files else n, "label": names[y] if y < len(names) else str(y),
               "topk": [{"class": names[i] if i < len(names) else str(i), "index": i, "probability": round(p, 6)}
                        for i, p in top]}
        records.append(rec)
    path = out / "predictions.json"
    path.write_text(json.dumps(records, indent=1))
    return str(path)


# ------------------------------------------------------------------------------------------ dense
class _Recording:
    """An evaluator that also hands each evaluated batch (outputs, targets) to `sink`."""

    def __init__(self, inner, sink: Callable[[Any, Any], None]):
        self.inner, self.sink = inner, sink
        self.predict_takes_targets = getattr(inner, "predict_takes_targets", False)

    def predict(self, model, inputs, device, *targets):
        return self.inner.predict(model, inputs, device, *targets)

    def update(self, outputs, targets) -> None:
        self.sink(outputs, targets)
        self.inner.update(outputs, targets)

    def summarize(self) -> dict:
        return self.inner.summarize()


class _DenseEvaluator:
    """The evaluator protocol over a dense task's metric (used where the task brings none)."""

    def __init__(self, task, dataset):
        self.task, self.dataset = task, dataset
        self.predict_takes_targets = task.name == "detection"  # the original image sizes
        if task.name == "detection":
            from ..dense.coco_eval import CocoEvaluator

            self.metric = CocoEvaluator(dataset)
        else:
            from ..dense.seg_eval import SegEvaluator

            self.metric = SegEvaluator(task.num_classes, class_names=getattr(dataset, "class_names", None))

    def predict(self, model, inputs, device, targets=None):
        if self.task.name == "detection":  # at the original sizes, as mmdet's rescale=True
            sizes = None if targets is None else [tuple(int(v) for v in t["orig_size"]) for t in targets]
            outputs = model([im.to(device) for im in inputs], out_sizes=sizes)
            return [{**{k: v.float().cpu() for k, v in o.items()}, **({} if sizes is None else {"size": s})}
                    for o, s in zip(outputs, sizes or [None] * len(outputs))]
        from ..dense.seg_inference import multiscale_inference, slide_inference

        crop = self.task.crop
        infer = multiscale_inference if self.task.multiscale else slide_inference
        return infer(model, inputs.to(device), crop=crop, stride=max(crop * 2 // 3, 1),
                     num_classes=self.task.num_classes).float().cpu()

    def update(self, outputs, targets) -> None:
        self.metric.update(outputs, targets)

    def summarize(self) -> dict:
        res = self.metric.summarize()
        if "IoU" in res:
            res["per_class"] = {"IoU": res.pop("IoU")}
        return res


def _task_evaluator(task, dataset):
    try:
        evaluator = task.evaluator(dataset)
    except (NotImplementedError, AttributeError):
        evaluator = None
    return evaluator if evaluator is not None else _DenseEvaluator(task, dataset)


def _same_classes(ours: list[str], theirs: list[str]) -> bool:
    """Equal names; classes numbered only on either side ("0", "1", ..., or by label value on disk
    "1", "2", ... as segmentation data without names) need only equal counts."""
    def numbered(names: list[str]) -> bool:
        return names in ([str(i) for i in range(len(names))], [str(i + 1) for i in range(len(names))])

    if numbered(list(ours)) or numbered(list(theirs)) or not ours:
        return len(ours) in (0, len(theirs))
    return list(ours) == list(theirs)


def evaluate_dense(
    loaded: Loaded, data: str, *, batch_size: int | None = None, num_workers: int = 0, amp: str = "off",
    device: Any = None, multiscale: bool = False, progress: bool = True,
    save_predictions: str | Path | None = None, **_unused: Any,
) -> dict:
    """COCO AP (detection) or mIoU (segmentation) of `loaded` on the validation split of `data`."""
    from ..train.config import config_from_dict
    from ..train.distributed import DistInfo
    from ..train.engine import evaluate as run_eval
    from ..train.tasks import get_task
    from ..train.trainer import make_eval_loader

    _check_counts(batch_size, num_workers)
    base = {k: v for k, v in loaded.train_config.items()}
    base.update(data=str(data), img_size=loaded.img_size, task=loaded.task, train_subset=None, eval_every=1,
                resume=None, strict_images=bool(_unused.get("strict_images", False)))
    if loaded.model_name and "model" not in loaded.train_config:
        base["model"] = loaded.model_name
    config = config_from_dict(base)
    task = get_task(loaded.task)
    if multiscale:
        if loaded.task != "segmentation":
            raise ConfigError("--multi-scale: segmentation checkpoints only")
        task.multiscale = True
    td = task.build_data(config, train=False)
    if td.val is None:
        raise DataError(f"--data {data}: no validation split")
    if not _same_classes(list(loaded.classes or []), list(td.classes)):
        raise DataError(f"--data {data}: its {len(td.classes)} classes differ from the checkpoint's "
                        f"{len(loaded.classes)} ({', '.join(td.classes[:3])}... vs {', '.join(loaded.classes[:3])}...)")
    dev = module_device(loaded.model)
    # Detection batches are padded to their largest image, which moves the numbers slightly: with
    # --save-predictions one image per batch by default, so the files equal `convnext predict`'s.
    default_bs = 1 if save_predictions is not None else int(loaded.train_config.get("batch_size", 2))
    bs = td.eval_batch_size or batch_size or default_bs
    loader = make_eval_loader(td.val, bs, num_workers, DistInfo(device=dev), td.collate_eval)
    evaluator = _task_evaluator(task, td.val)
    saver = None
    if save_predictions is not None:
        saver = (_DetectionSaver(td.val) if loaded.task == "detection" else
                 _SegmentationSaver(td.val, Path(save_predictions)))
        evaluator = _Recording(evaluator, saver)
    res = run_eval(loaded.model, loader, dev, loaded_amp(amp), evaluator, progress=progress)
    if loaded.task == "segmentation":
        _name_classes_as_on_disk(res, list(td.classes), getattr(td.val, "reduce_zero_label", True))
    if td.notes:  # the data's warnings (skipped boxes, unreadable images, unlabelled maps), one line each
        res["warnings"] = list(td.notes)
    if saver is not None:
        res["predictions"] = saver.write(Path(save_predictions))
    return res


def _name_classes_as_on_disk(res: dict, classes: list[str], reduce_zero_label: bool) -> None:
    """Unnamed segmentation classes ("0", "1", ...: class indices) renamed to their label value in the
    annotation files (index + 1 under reduce_zero_label), the numbers a user finds on disk."""
    if not reduce_zero_label or classes != [str(i) for i in range(len(classes))]:
        return
    for metric, values in (res.get("per_class") or {}).items():
        if isinstance(values, dict):
            res["per_class"][metric] = {str(int(k) + 1) if k.isdigit() else k: v for k, v in values.items()}


class _DetectionSaver:
    """COCO results of every evaluated image, converted exactly as the COCO evaluator converts them."""

    def __init__(self, dataset):
        from ..dense.coco_eval import CocoEvaluator

        self.coco = CocoEvaluator(dataset)

    def __call__(self, outputs, targets) -> None:
        self.coco.update(outputs, targets)

    def write(self, out: Path) -> str:
        results = []
        for image_id in sorted(self.coco.predictions):
            res = self.coco.predictions[image_id]
            segm = res.get("segm") or [None] * len(res["bbox"])
            for box, mask in zip(res["bbox"], segm):
                r = {"image_id": box["image_id"], "category_id": box["category_id"],
                     "bbox": [round(float(v), 2) for v in box["bbox"]], "score": round(float(box["score"]), 5)}
                if mask is not None:
                    r["segmentation"] = mask["segmentation"]
                results.append(r)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "detections.json"
        path.write_text(json.dumps(results))
        return str(path)


class _SegmentationSaver:
    """One label-map PNG per validation image, named as its annotation file, in its values."""

    def __init__(self, dataset, out: Path):
        self.dataset, self.out = dataset, out
        self.index = 0
        self.offset = 1 if getattr(dataset, "reduce_zero_label", True) else 0  # class i is value i + 1 on disk
        out.mkdir(parents=True, exist_ok=True)

    def __call__(self, scores, labels) -> None:
        from .predict import label_map_to_full, write_label_map

        for i in range(len(labels)):  # one image per batch: the label has the image's own size
            _, ann = self.dataset.samples[self.index]
            pred = label_map_to_full(scores[i:i + 1], tuple(labels[i].shape))
            write_label_map(pred, self.out / Path(ann).name, offset=self.offset)
            self.index += 1

    def write(self, out: Path) -> str:
        return str(out)
