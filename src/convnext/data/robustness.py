"""The robustness benchmarks of the paper's Table 8 (PAPER.md §4.3): folder layouts, class maps, constants.

- ImageNet-C (Hendrycks & Dietterich 2019): `<root>/<corruption>/<severity 1-5>/<wnid>/*.JPEG`, 15 corruptions.
- ImageNet-A / ImageNet-R: `<root>/<wnid>/*`, 200 of the 1000 ImageNet-1K classes each.
- ImageNet-Sketch: `<root>/<wnid>/*`, all 1000 classes.

Every folder is named by its WordNet id (wnid). A wnid maps to its index in the ImageNet-1K class
order (the 1000 wnids sorted), never to its position among the folders present. The wnid lists
and the A/R subsets are read from timm's package data (`timm/data/_info/`), not copied here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..errors import DataError
from .datasets import ImageFolderDataset

__all__ = [
    "BENCHMARKS", "CORRUPTIONS", "SEVERITIES", "ALEXNET_ERR", "PAPER_TABLE8", "PaperRow",
    "imagenet_wnids", "subset_wnids", "wnid_dataset", "corruption_datasets",
]

BENCHMARKS = ("imagenet-c", "imagenet-a", "imagenet-r", "imagenet-sketch")

# The 15 corruptions that define mCE, in the standard order (noise, blur, weather, digital). ImageNet-C's
# 4 extra corruptions (speckle_noise, gaussian_blur, spatter, saturate) are not part of it and are ignored.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)

# AlexNet's top-1 error (fraction) on each corruption, averaged over the 5 severities: the mCE normaliser,
# CE_c = mean_s E_{s,c} / ALEXNET_ERR[c] (equal to sum_s E / sum_s E^AlexNet). Values as published with
# the official robustness code (github.com/hendrycks/robustness, quoted as "raw AlexNet errors taken from"
# it in google-research/augmix `imagenet.py`, ALEXNET_ERR, same corruption order).
ALEXNET_ERR = dict(zip(CORRUPTIONS, (
    0.886428, 0.894468, 0.922640,
    0.819880, 0.826268, 0.785948, 0.798360,
    0.866816, 0.826572, 0.819324, 0.564592,
    0.853204, 0.646056, 0.717840, 0.606500,
)))


@dataclass(frozen=True)
class PaperRow:
    """One ConvNeXt row of the paper's Table 8 (percent). `c_bar` is the paper's C̄ column."""

    label: str
    clean: float
    mce: float
    c_bar: float
    a: float
    r: float
    sketch: float


# (model, pre-training data, resolution) -> the paper's Table 8 row (PAPER.md §4.3); only ConvNeXt rows.
PAPER_TABLE8: dict[tuple[str, str, int], PaperRow] = {
    ("convnext_tiny", "1k", 224): PaperRow("ConvNeXt-T 1K/224", 82.1, 53.2, 40.0, 24.2, 47.2, 33.8),
    ("convnext_base", "1k", 224): PaperRow("ConvNeXt-B 1K/224", 83.8, 46.8, 34.4, 36.7, 51.3, 38.2),
    ("convnext_base", "22k", 384): PaperRow("ConvNeXt-B 22K/384", 86.8, 43.1, 30.7, 62.3, 64.9, 51.6),
    ("convnext_large", "22k", 384): PaperRow("ConvNeXt-L 22K/384", 87.5, 40.2, 29.9, 65.5, 66.7, 52.8),
    ("convnext_xlarge", "22k", 384): PaperRow("ConvNeXt-XL 22K/384", 87.8, 38.8, 27.1, 69.3, 68.2, 55.0),
}


def _timm_lines(name: str) -> list[str]:
    from importlib.resources import files

    return (files("timm.data") / "_info" / name).read_text().split()


@lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1K wnids in class-index order (sorted)."""
    return tuple(_timm_lines("imagenet_synsets.txt"))


@lru_cache(maxsize=None)
def subset_wnids(benchmark: str) -> tuple[str, ...] | None:
    """The 200 wnids that ImageNet-A or -R score, in ImageNet-1K index order; None for the other benchmarks."""
    key = {"imagenet-a": "a", "imagenet-r": "r"}.get(benchmark)
    if key is None:
        return None
    wnids = imagenet_wnids()
    # timm's index file is the authority for the mapping; the synset file must agree with it.
    indices = [int(i) for i in _timm_lines(f"imagenet_{key}_indices.txt")]
    names = _timm_lines(f"imagenet_{key}_synsets.txt")
    assert [wnids[i] for i in indices] == names, f"timm's imagenet_{key} indices and synsets disagree"
    return tuple(names)


def wnid_dataset(root: Path, transform: Callable | None, classes: tuple[str, ...], what: str,
                 strict: bool = False) -> tuple[ImageFolderDataset, list[str]]:
    """(`root/<wnid>/*` labelled by the wnid's position in `classes`, the wnids of `classes` with no images).

    A sub-folder that is not one of `classes` is a DataError naming it (`what` names the class set).
    """
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    allowed = set(classes)
    unknown = [n for n in found if n not in allowed]
    if unknown:
        raise DataError(f"{root}: folder(s) {', '.join(unknown[:5])} are not {what} wnids "
                        f"(expected {root}/<wnid>/*.JPEG with wnids like {classes[0]})")
    ds = ImageFolderDataset(root, transform, classes=list(classes), strict=strict)
    return ds, list(ds.empty_classes)


def corruption_datasets(root: Path, transform: Callable | None, strict: bool = False
                        ) -> tuple[dict[tuple[str, int], ImageFolderDataset], list[str]]:
    """ImageNet-C: ({(corruption, severity): dataset} for the folders present, the missing ones).

    Missing entries are "corruption" (its whole folder is absent) or "corruption/severity".
    """
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder; expected {root}/<corruption>/<severity 1-5>/<wnid>/*.JPEG")
    wnids = imagenet_wnids()
    out, missing = {}, []
    for c in CORRUPTIONS:
        if not (root / c).is_dir():
            missing.append(c)
            continue
        for s in SEVERITIES:
            folder = root / c / str(s)
            if folder.is_dir():
                out[c, s], _ = wnid_dataset(folder, transform, wnids, "ImageNet-1K", strict)
            else:
                missing.append(f"{c}/{s}")
    return out, missing
