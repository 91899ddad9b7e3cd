"""Data: evaluation preprocessing (paper §A.2), datasets and the training pipeline.

Names are imported on first use (`convnext._lazy`): classifying an image needs only
`data.transforms`, not the training pipeline (timm, torchvision), which then stays unimported.
"""
from __future__ import annotations

from .._lazy import lazy_attributes

_PUBLIC: dict[str, str] = {
    **dict.fromkeys(("BUILTIN_DATASETS", "DataError", "DigitsDataset", "ImageFolderDataset", "build_dataset",
                     "collate_skip_bad", "find_split", "subset"), "convnext.data.datasets"),
    **dict.fromkeys(("mixup_and_criterion", "train_transform"), "convnext.data.pipeline"),
    **dict.fromkeys(("DEFAULT_CROP_PCT", "IMAGENET_MEAN", "IMAGENET_STD", "eval_transform", "to_rgb"),
                    "convnext.data.transforms"),
}

__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
