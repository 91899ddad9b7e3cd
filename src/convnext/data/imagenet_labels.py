"""Class names of the label sets our pretrained checkpoints use.

ImageNet-1K names come from torchvision's metadata at run time (not copied here). No package we
depend on ships the 21841 ImageNet-22K names, so those classes are shown by index.
"""
from __future__ import annotations

__all__ = ["imagenet_1k_labels", "labels_for"]


def imagenet_1k_labels() -> list[str]:
    """The 1000 ImageNet-1K class names in the standard (synset-sorted) order."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def labels_for(num_classes: int, label_set: str | None = None) -> list[str] | None:
    """Class names for a `num_classes`-way head of `label_set`: the ImageNet-1K names, or None if unknown."""
    if label_set in (None, "imagenet-1k") and num_classes == 1000:
        return imagenet_1k_labels()
    return None
