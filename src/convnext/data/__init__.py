"""Data: evaluation preprocessing (paper §A.2), datasets and the training pipeline."""
from .datasets import (
    BUILTIN_DATASETS,
    DataError,
    DigitsDataset,
    ImageFolderDataset,
    build_dataset,
    collate_skip_bad,
    find_split,
    subset,
)
from .pipeline import mixup_and_criterion, train_transform
from .transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, eval_transform, to_rgb

__all__ = [
    "BUILTIN_DATASETS", "DEFAULT_CROP_PCT", "DataError", "DigitsDataset", "IMAGENET_MEAN", "IMAGENET_STD",
    "ImageFolderDataset", "build_dataset", "collate_skip_bad", "eval_transform", "find_split",
    "mixup_and_criterion", "subset", "to_rgb", "train_transform",
]
