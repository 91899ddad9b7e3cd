"""Data: evaluation preprocessing (paper §A.2), datasets and the training pipeline."""
from .transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, eval_transform, to_rgb

__all__ = ["DEFAULT_CROP_PCT", "IMAGENET_MEAN", "IMAGENET_STD", "eval_transform", "to_rgb"]
