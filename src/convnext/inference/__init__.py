"""Using a trained model: `load` any checkpoint of any task, then `evaluate`, `predict`, `export`.

    loaded = convnext.inference.load("runs/x/checkpoint-best.pt")  # task, model, classes, transform, weights
    convnext.inference.predict(loaded, ["cat.jpg"], topk=3)           # classification: [[("cat", 0.91), ...]]
    convnext.inference.predict_dense(loaded, "street.jpg", "out.png")  # detection / segmentation
    convnext.inference.evaluate(loaded, "path/to/data")                # top-1 / COCO AP / mIoU

Names are imported on first use (no torch import for `import convnext.inference`).
"""
from __future__ import annotations

from .._lazy import lazy_attributes

_PUBLIC: dict[str, str] = {
    **dict.fromkeys(("Loaded", "load", "resolve_resolution", "dense_task_of"), "convnext.inference.loaded"),
    **dict.fromkeys(("predict", "iter_predictions", "predict_dense", "detect", "segment", "label_map_to_full"),
                    "convnext.inference.predict"),
    **dict.fromkeys(("evaluate", "evaluate_classification", "evaluate_dense"), "convnext.inference.evaluate"),
    **dict.fromkeys(("export", "export_metadata", "EXPORTERS"), "convnext.inference.export"),
    **dict.fromkeys(("open_image", "expand_image_args", "read_rgb_tensor"), "convnext.inference.images"),
}

__all__ = list(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
