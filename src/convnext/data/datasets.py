"""Datasets: ImageFolder (ImageNet layout), CIFAR-10/100 and scikit-learn's built-in digits.

Every dataset yields `(transform(RGB PIL image), class index)` and exposes `classes`. Unreadable
images are never allowed to crash an epoch: `ImageFolderDataset` returns `None` for them and
`collate_skip_bad` drops those samples and counts them (or, with `strict=True`, raises).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, default_collate

from ..errors import DataError
from .transforms import to_rgb

__all__ = [
    "IMG_EXTENSIONS", "BUILTIN_DATASETS", "DataError", "ImageFolderDataset", "DigitsDataset",
    "build_dataset", "find_split", "collate_skip_bad", "subset", "list_images", "class_folders", "error_line",
    "worker_context",
]


def worker_context(num_workers: int) -> str | None:
    """The multiprocessing start method for DataLoader workers: "spawn" while a DALI pipeline is alive.

    A DALI pipeline runs its own threads; a worker forked beside them can crash with a segmentation
    fault (DALI's documentation asks for spawn), so a loader started while one exists (the evaluation
    loader of a `--loader dali` run, `bench --mode data` after its DALI pass) spawns its workers; at any
    other time the default (fork) is kept, which needs nothing picklable and starts fast. Ask when the
    workers start (the training loop asks each time it iterates a loader), not when the loader is built:
    a pipeline may come or go in between. Pipelines left in reference-cycle garbage are collected here,
    in the parent: a forked worker that collected one would hang in DALI's executor destructor.
    """
    import gc
    import sys

    dali = sys.modules.get("convnext.data.dali")
    if num_workers <= 0 or dali is None or not dali.LIVE_PIPELINES:
        return None
    gc.collect()  # pipelines left only in reference cycles are not alive
    return "spawn" if dali.LIVE_PIPELINES else None


IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
BUILTIN_DATASETS = ("digits", "cifar10", "cifar100")
VAL_SPLIT_NAMES = ("val", "test")  # `test/` is accepted as the validation split (CIFAR JPEG folders)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def class_folders(root: str | Path) -> list[str]:
    """The sorted names of `root`'s sub-folders (hidden ones left out): an ImageFolder's classes in label order."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def list_images(folder: str | Path, within: str | Path | None = None) -> list[str]:
    """Every image file under `folder`, sorted, following symlinks but each real folder only once.

    Symlinked folders are followed (datasets are often assembled from links), so a link back to an
    ancestor would be walked again and again (`os.walk` stops only at the OS's path-length limit):
    a class folder of 5 images was counted as 205. Folders already seen, by (st_dev, st_ino), are
    pruned from the walk. With `within` (the data set's root), a link leading to another part of
    that root (e.g. a class folder linking to the benchmark root) is not followed either: those
    images belong to other classes, not to `folder`.
    """
    seen: set[tuple[int, int]] = set()
    inside = os.path.realpath(folder)
    root = os.path.realpath(within) if within is not None else None
    files = []
    for dirpath, dirnames, names in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []  # a cycle (or a second link to a folder already listed): skip its subtree
            continue
        seen.add((st.st_dev, st.st_ino))
        if root is not None:
            real = os.path.realpath(dirpath)
            if _under(real, root) and not _under(real, inside):
                dirnames[:] = []  # a link into the data set outside this folder: not this folder's images
                continue
        files.extend(os.path.join(dirpath, f) for f in names if _is_image(f))
    return sorted(files)


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def error_line(e: BaseException) -> str:
    """The one-line message of `e`, also when a DataLoader worker re-raised it.

    torch re-raises a worker's exception in the main process with the type kept but the message
    replaced by "Caught X in DataLoader worker process N. Original Traceback ...": the original
    message is the last line, after "module.X: ".
    """
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    prefix = f"{type(e).__module__}.{type(e).__qualname__}: "
    for p in (prefix, f"{type(e).__qualname__}: "):
        if last.startswith(p):
            return last[len(p):]
    return last


class ImageFolderDataset(Dataset):
    """`root/<class>/<image>` with classes taken from `classes` (or the sub-folders of `root`).

    Args:
        root: split folder, e.g. `DIR/train`.
        transform: applied to the RGB PIL image.
        classes: class names fixing the label order (pass the training classes for the val split).
        strict: raise on an unreadable image instead of skipping it.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, classes: list[str] | None = None,
                 strict: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a folder")
        found = class_folders(self.root)
        if classes is None:
            classes = found
        if not classes:
            raise DataError(f"{self.root} has no class sub-folders; expected {self.root}/<class>/<image>.jpg")
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{self.root} has class folder(s) not in the training split: {', '.join(unknown[:5])}")
        self.classes = list(classes)
        self.transform, self.strict = transform, strict
        self.samples: list[tuple[str, int]] = []
        self.empty_classes: list[str] = []
        self.duplicate_files: list[str] = []  # links to a file already listed: each real file counts once
        seen: set[str] = set()
        for idx, name in enumerate(self.classes):
            folder = self.root / name
            files = list_images(folder, within=self.root) if folder.is_dir() else []
            kept = []
            for f in files:
                real = os.path.realpath(f)
                if real in seen:
                    self.duplicate_files.append(f)
                    continue
                seen.add(real)
                kept.append(f)
            if not kept:
                self.empty_classes.append(name)
            self.samples.extend((f, idx) for f in kept)
        if not self.samples:
            raise DataError(f"{self.root} holds no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            with Image.open(path) as f:
                f.load()  # decode now: a truncated/corrupt file fails here, inside the try
                img = to_rgb(f)  # grayscale / palette / CMYK -> RGB
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            if self.strict:
                raise DataError(f"unreadable image {path}: {e} (drop --strict-images to skip such files)") from None
            return None
        return (self.transform(img) if self.transform else img), target


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), offline and built in.

    The pixels (0..16) become 8x8 grayscale PIL images (then RGB); the split is a fixed
    stratified 80/20 (1437 train / 360 test), independent of the training seed.
    """

    classes = [str(d) for d in range(10)]

    def __init__(self, train: bool, transform: Callable | None = None):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # (1797, 8, 8)
        idx_train, idx_test = train_test_split(
            np.arange(len(images)), test_size=0.2, random_state=0, stratify=digits.target
        )
        idx = idx_train if train else idx_test
        self.images, self.targets = images[idx], digits.target[idx].astype(int).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode="L").convert("RGB")
        return (self.transform(img) if self.transform else img), self.targets[index]


def _cifar(name: str, train: bool, transform: Callable | None, data_dir: str | None) -> Dataset:
    from torchvision import datasets

    root = Path(data_dir or os.environ.get("CONVNEXT_DATA", Path.home() / ".cache" / "convnext" / "data"))
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    allow_download = not os.environ.get("CONVNEXT_NO_DOWNLOAD")
    try:
        return cls(str(root), train=train, transform=transform, download=allow_download)
    except Exception as e:  # offline: URLError; no download allowed: RuntimeError "Dataset not found"
        raise DataError(
            f"{name} is not in {root} and could not be downloaded ({type(e).__name__}: {e}). "
            f"Offline, pass an ImageFolder instead: --data DIR with DIR/train/<class>/*.png and DIR/test/<class>/*.png "
            f"(e.g. the extracted CIFAR-10 JPEG tarballs), or --data-dir where the torchvision files are."
        ) from None


def find_split(root: Path, split: str) -> Path | None:
    """`root/train`, or for the validation split `root/val` then `root/test`; None when absent."""
    names = ("train",) if split == "train" else VAL_SPLIT_NAMES
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def build_dataset(data: str, split: str, transform: Callable | None, *, classes: list[str] | None = None,
                  strict: bool = False, data_dir: str | None = None) -> Dataset:
    """The `split` ("train" or "val") of `data` (a folder, or digits | cifar10 | cifar100)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    train = split == "train"
    if data == "digits":
        return DigitsDataset(train, transform)
    if data in ("cifar10", "cifar100"):
        return _cifar(data, train, transform, data_dir)
    return ImageFolderDataset(split_folder(data, split), transform, classes=classes, strict=strict)


def split_folder(data: str, split: str) -> Path:
    """The folder of `split` ("train" / "val") under the folder `data`; a DataError naming what is missing."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"--data {data}: no such folder (or use one of: {', '.join(BUILTIN_DATASETS)})")
    folder = find_split(root, split)
    if folder is None:
        expected = (f"{root}/train/<class>/*.jpg" if split == "train"
                    else f"{root}/val/<class>/*.jpg (or {root}/test/...)")
        raise DataError(f"--data {data}: missing {split} split; expected {expected}")
    return folder


def subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """The first `n` images of a fixed shuffle of `dataset` (all of it when n is None)."""
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise DataError(f"train_subset must be >= 1, got {n}")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    out = Subset(dataset, idx.tolist())
    out.classes = dataset.classes
    return out


def collate_skip_bad(batch: list, even: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Collate `(image, target)` samples, dropping the `None`s of unreadable images.

    Returns (images, targets, number of dropped samples). With `even`, a batch that lost samples
    is trimmed to an even size, because Mixup/CutMix pair images within the batch.
    """
    good = [s for s in batch if s is not None]
    dropped = len(batch) - len(good)
    if even and dropped and len(good) % 2:
        good = good[:-1]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), dropped
    images, targets = default_collate(good)
    return images, targets, dropped
