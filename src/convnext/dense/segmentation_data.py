"""Semantic-segmentation data in the ADE20K folder layout, with the official ADE20K pipeline
(mmseg `configs/_base_/datasets/ade20k.py`, used by the paper's UperNet runs, PAPER.md §4.2).

Layout:
    DIR/images/{training,validation}/<stem>.jpg|jpeg|png
    DIR/annotations/{training,validation}/<stem>.png     single-channel class map, same stem
    DIR/classes.txt                                      optional: one class name per line
    DIR/objectInfo150.csv (or .txt)                      optional (ADE20K's own): names by label value

ADE20K stores 0 for "other" and classes as 1..150: with `reduce_zero_label=True` (default) 0
becomes the ignore index 255 and every other value v becomes v - 1. Other sets whose labels start
at 0 use `reduce_zero_label=False`.

Training (per image): random rescale to `ratio` x the base scale (W, H) = (4 * crop, crop) keeping
the aspect ratio, ratio ~ U(0.5, 2.0) -> random crop x crop (re-drawn up to 10 times while one
class covers >= 75% of the crop) -> horizontal flip p=0.5 -> photometric distortion -> ImageNet
normalisation -> pad to crop x crop (image 0, label 255). At crop 512 the base scale is (2048,
512), the official one. Validation: rescale to the base scale keeping the ratio, normalise; the
label keeps its original size (predictions are resized to it, as mmseg evaluates).

`coco_to_semantic` rasterises COCO instance annotations into this layout (used to train UperNet
on coco128 in the docs and tests).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

# The evaluation preprocessing is shared with `convnext predict` (data/preprocess.py).
from ..data.preprocess import normalize_255 as _normalize
from ..data.preprocess import rescale_size as _rescale_size
from ..data.preprocess import resize_bilinear as _resize
from ..data.preprocess import segmentation_eval_image
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_rgb
from ..errors import DataError

__all__ = [
    "SegmentationFolder", "SegTrainTransform", "SegValTransform", "photometric_distortion",
    "collate_segmentation", "coco_to_semantic", "scan_num_classes", "read_class_names", "IGNORE_INDEX",
]

IGNORE_INDEX = 255
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255


# ------------------------------------------------------------------------------------------------
# Transforms on (image (3, H, W) float 0..255 RGB, label (H, W) int64) pairs
# ------------------------------------------------------------------------------------------------


def _resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return TF.resize(label[None], list(size), interpolation=TF.InterpolationMode.NEAREST)[0]


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def photometric_distortion(image: torch.Tensor, brightness: float = 32, contrast: tuple[float, float] = (0.5, 1.5),
                           saturation: tuple[float, float] = (0.5, 1.5), hue: float = 18) -> torch.Tensor:
    """mmseg `PhotoMetricDistortion` on a (3, H, W) float RGB image in 0..255: each step applied with
    probability 0.5, contrast before or after the colour steps (coin flip), clipped to 0..255.

    brightness: add U(-b, b); contrast: multiply by U(lo, hi); saturation: multiply HSV S by
    U(lo, hi); hue: shift HSV H by an integer in [-hue, hue] in OpenCV units (180 = full turn).
    mmseg rounds to uint8 between steps; here the image stays float.
    """
    def coin() -> bool:
        return bool(torch.rand(()) < 0.5)

    def clip(x: torch.Tensor) -> torch.Tensor:
        return x.clamp_(0, 255)

    if coin():
        image = clip(image + _uniform(-brightness, brightness))
    contrast_first = coin()
    if contrast_first and coin():
        image = clip(image * _uniform(*contrast))
    if coin():
        # HSV S -> clip(alpha * S, 0, 1) with H and V kept, in closed form on RGB: with V = max and
        # chroma C = max - min, each channel moves to V - (V - c) * k where k = min(alpha, V / C).
        alpha = _uniform(*saturation)
        v = image.amax(0, keepdim=True)
        c = v - image.amin(0, keepdim=True)
        k = torch.minimum(torch.full_like(c, alpha), v / c.clamp(min=1e-6))
        image = clip(v - (v - image) * k)
    if coin():
        shift = int(torch.randint(-int(hue), int(hue) + 1, ()).item())
        image = TF.adjust_hue(image / 255, shift / 180) * 255  # hue_factor: fraction of a full turn
    if not contrast_first and coin():
        image = clip(image * _uniform(*contrast))
    return image


@dataclass(frozen=True)
class SegTrainTransform:
    """The official ADE20K training pipeline (see the module docstring); randomness from torch's RNG."""

    crop: int = 512
    base_scale: tuple[int, int] | None = None  # (W, H); default (4 * crop, crop)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = IGNORE_INDEX

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.base_scale or (4 * self.crop, self.crop)
        ratio = _uniform(*self.ratio_range)
        size = _rescale_size(*image.shape[-2:], (int(base[0] * ratio), int(base[1] * ratio)))
        image, label = _resize(image, size), _resize_label(label, size)
        image, label = self._random_crop(image, label)
        if torch.rand(()) < self.flip_prob:
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric:
            image = photometric_distortion(image)
        image = _normalize(image)
        pad_h, pad_w = self.crop - image.shape[-2], self.crop - image.shape[-1]
        if pad_h > 0 or pad_w > 0:
            image = F.pad(image, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=0.0)
            label = F.pad(label, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=self.ignore_index)
        return image, label

    def _random_crop(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = label.shape
        ch, cw = min(self.crop, h), min(self.crop, w)
        for _ in range(10):  # mmseg RandomCrop: avoid crops dominated by one class
            y = int(torch.randint(0, h - ch + 1, ()))
            x = int(torch.randint(0, w - cw + 1, ()))
            crop = label[y:y + ch, x:x + cw]
            counts = torch.bincount(crop[crop != self.ignore_index].flatten())
            counts = counts[counts > 0]
            if self.cat_max_ratio >= 1 or (len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio):
                break
        return image[:, y:y + ch, x:x + cw], crop


@dataclass(frozen=True)
class SegValTransform:
    """Rescale the image to the base scale keeping its ratio and normalise; the label is untouched."""

    base_scale: tuple[int, int] = (2048, 512)  # (W, H)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return segmentation_eval_image(image, self.base_scale), label


# ------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------
def _read_label_values(path: Path) -> np.ndarray:
    """Class map of a single-channel 8-bit PNG as uint8 (H, W)."""
    try:
        with Image.open(path) as img:
            _check_label_mode(path, img.mode)
            return np.array(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: unreadable label image ({e})") from None


def _check_label_mode(path: Path, mode: str) -> None:
    if mode in ("L", "P"):
        return
    if mode.startswith("I"):  # I;16, I;16B, I: values would be cut to 8 bits
        raise DataError(f"{path}: 16/32-bit label PNG (mode {mode}); expected an 8-bit single-channel class map "
                        f"(mode L or P, values 0-255)")
    raise DataError(f"{path}: expected a single-channel (mode L or P) label PNG, got mode {mode} "
                    f"(a colour picture of the classes is not a class map)")


def _reduce_zero(label: np.ndarray) -> np.ndarray:
    """ADE20K: 0 (other) -> 255 (ignored), v -> v - 1; 255 stays ignored."""
    out = label.astype(np.int64) - 1
    out[(label == 0) | (label == IGNORE_INDEX)] = IGNORE_INDEX
    return out


# (path, size, mtime) -> (width, height, values present): each label file decoded once per process.
_LABEL_CACHE: dict[tuple[str, int, int], tuple[int, int, np.ndarray]] = {}


def _label_stats(path: Path) -> tuple[int, int, np.ndarray]:
    """(width, height, bool (256,) values present) of a label PNG, mode checked."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _LABEL_CACHE:
        try:
            with Image.open(path) as img:
                _check_label_mode(path, img.mode)
                present = np.array(img.histogram()[:256]) > 0  # C-level count per value: fast
                _LABEL_CACHE[key] = (img.size[0], img.size[1], present)
        except (OSError, ValueError, SyntaxError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}: unreadable label image ({e})") from None
    return _LABEL_CACHE[key]


def _unlabelled(present: np.ndarray, reduce_zero_label: bool) -> np.ndarray:
    """`present` without the values that carry no class (255; and 0 under reduce_zero_label)."""
    out = present.copy()
    out[IGNORE_INDEX] = False
    if reduce_zero_label:
        out[0] = False
    return out


def scan_num_classes(annotation_files: Sequence[Path], reduce_zero_label: bool = True) -> int:
    """Max label + 1 (after the zero-label reduction) over `annotation_files` (each decoded once per process)."""
    present = np.zeros(256, dtype=bool)
    for p in annotation_files:
        present |= _label_stats(p)[2]
    values = np.flatnonzero(_unlabelled(present, reduce_zero_label))
    if len(values) == 0:
        folder = os.path.commonpath([str(p.parent) for p in annotation_files]) if annotation_files else "?"
        raise DataError(f"{folder}: no labelled pixel in {len(annotation_files)} annotation files")
    return int(values.max()) + (0 if reduce_zero_label else 1)


def read_class_names(root: Path, reduce_zero_label: bool = True) -> tuple[list[str] | None, Path | None]:
    """(class names in class-index order, the file they came from), or (None, None).

    `root/classes.txt`: one name per line (trailing blank lines dropped; a blank line inside or a
    repeated name is an error). Else, with reduce_zero_label, ADE20K's `objectInfo150.csv`
    (`Idx,Ratio,Train,Val,Name`, names `wall;brick`) or `objectInfo150.txt` (tab-separated, names
    `building, edifice`): class Idx (the value on disk) named by its first synonym.
    """
    txt = root / "classes.txt"
    if txt.is_file():
        lines = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        blank = [i + 1 for i, n in enumerate(lines) if not n]
        if blank:
            raise DataError(f"{txt}: line(s) {', '.join(map(str, blank[:5]))} are empty (one class name per line; "
                            f"a blank line would be a class named '')")
        if not lines:
            raise DataError(f"{txt}: no class names")
        _refuse_repeats(lines, txt)
        return lines, txt
    if not reduce_zero_label:
        return None, None
    for name, sep, alias in (("objectInfo150.csv", ",", ";"), ("objectInfo150.txt", "\t", ",")):
        f = root / name
        if not f.is_file():
            continue
        import csv

        rows = list(csv.reader(f.read_text(encoding="utf-8").splitlines(), delimiter=sep))
        header = [h.strip().lower() for h in rows[0]] if rows else []
        if "idx" not in header or "name" not in header:
            raise DataError(f"{f}: expected a header with Idx and Name columns, got {rows[0] if rows else 'nothing'}")
        i, n = header.index("idx"), header.index("name")
        try:
            by_idx = {int(r[i]): r[n].split(alias)[0].strip() for r in rows[1:] if r}
        except (ValueError, IndexError):
            raise DataError(f"{f}: every row needs an integer Idx and a Name") from None
        if sorted(by_idx) != list(range(1, len(by_idx) + 1)):
            raise DataError(f"{f}: Idx must run 1..{len(by_idx)} (the label values on disk)")
        names = [by_idx[k] for k in range(1, len(by_idx) + 1)]
        return names, f
    return None, None


def _refuse_repeats(names: list[str], path: Path) -> None:
    seen: set[str] = set()
    repeated = sorted({n for n in names if n in seen or seen.add(n)})
    if repeated:
        raise DataError(f"{path}: class name(s) {', '.join(repeated[:5])} appear more than once")


def _pair_by_stem(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """{stem: file} of the folder's files with these extensions; two files of one stem are refused."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in exts or p.name.startswith("."):
            continue
        if p.stem in out:
            raise DataError(f"{folder}: {out[p.stem].name} and {p.name} share the stem {p.stem!r}; images and "
                            f"labels are paired by stem, so keep one of them")
        out[p.stem] = p
    return out


class _Unreadable(DataError):
    """An image whose pixels cannot be decoded (skipped and counted unless strict)."""


# EXIF orientations that turn the stored image by 90 degrees (shown width = stored height).
_TRANSPOSING = (5, 6, 7, 8)


class SegmentationFolder(torch.utils.data.Dataset):
    """An ADE20K-layout folder (see the module docstring) -> (image (3, H, W) float, label (H, W) int64).

    Validated once at construction, naming the file: images and labels paired one-to-one by stem
    (two images of one stem, e.g. a.jpg and a.png, are refused); every label an 8-bit
    single-channel PNG (not RGB, not 16-bit) of its image's size, with no value beyond the class
    count. Label maps without a labelled pixel are counted in `unlabelled_images` and warned about
    (they add nothing to the loss); a split where all are is refused. Image headers are read
    (cheap); an image whose pixels cannot be decoded is an item `None` (the collate drops it and
    the loop counts it), or a DataError with `strict`. An image with an EXIF orientation is turned
    when that makes it fit its label map (mmseg reads images with it applied), else read as stored.

    `class_names[i]` names class i and `label_values[i]` is its value in the label files (i + 1
    under reduce_zero_label): names come from `classes.txt` or ADE's `objectInfo150.csv/.txt`
    (`read_class_names`), else they are the values on disk ("1" is the class stored as 1).
    `warnings` holds one line per kind of thing warned about.

    Args:
        root: the folder holding `images/` and `annotations/`.
        split: sub-folder name, "training" or "validation".
        train: training augmentation (default: split == "training") or the validation transform.
        crop_size: training crop; the base scale is (4 * crop_size, crop_size) (2048 x 512 at 512).
        reduce_zero_label: label 0 is "unlabelled" (ignored) and classes start at 1, as ADE20K.
        num_classes: class count; default: the number of class names if a names file is present,
            else max label + 1 found in all annotation files of `root`.
        transform: replaces the default transform; a callable (image 0..255, label) -> (image, label).
        strict: an undecodable image is a DataError instead of a skipped item.
    """

    def __init__(self, root: str | os.PathLike, split: str = "training", *, train: bool | None = None,
                 crop_size: int = 512, reduce_zero_label: bool = True, num_classes: int | None = None,
                 transform=None, strict: bool = False):
        self.root = Path(root)
        self.split = split
        self.reduce_zero_label, self.strict = reduce_zero_label, strict
        img_dir, ann_dir = self.root / "images" / split, self.root / "annotations" / split
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise DataError(f"{d}: folder not found (expected the ADE20K layout DIR/images/{split}/ and "
                                f"DIR/annotations/{split}/)")
        images = _pair_by_stem(img_dir, _IMAGE_EXTS)
        labels = _pair_by_stem(ann_dir, (".png",))
        if not images:
            raise DataError(f"{img_dir}: no {'/'.join(_IMAGE_EXTS)} images")
        for stem, p in images.items():
            if stem not in labels:
                raise DataError(f"{p}: image without annotation (expected {ann_dir / (stem + '.png')})")
        for stem, p in labels.items():
            if stem not in images:
                raise DataError(f"{p}: annotation without image in {img_dir}")
        self.samples = [(images[s], labels[s]) for s in sorted(images)]

        self.class_names, names_file = read_class_names(self.root, reduce_zero_label)
        if num_classes is None:
            if self.class_names is not None:
                num_classes = len(self.class_names)
            else:
                anns = sorted((self.root / "annotations").glob("*/*.png"))
                num_classes = scan_num_classes(anns, reduce_zero_label)
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise DataError(f"{names_file}: {len(self.class_names)} class names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.label_values = [i + 1 if reduce_zero_label else i for i in range(num_classes)]
        if self.class_names is None:
            self.class_names = [str(v) for v in self.label_values]
        self.warnings: list[str] = []
        self._check_files()
        self.train = split == "training" if train is None else train
        base = (4 * crop_size, crop_size)
        self.transform = transform or (SegTrainTransform(crop_size, base) if self.train else SegValTransform(base))

    def _check_files(self) -> None:
        """Label modes, sizes and values, image headers: once, before any training step."""
        from PIL import Image as PILImage

        top = self.num_classes + (1 if self.reduce_zero_label else 0)  # first value beyond the classes
        self._exif: list[bool] = []
        self.unreadable: set[int] = set()
        beyond, unlabelled, mismatch = [], [], []
        for i, (img_path, ann_path) in enumerate(self.samples):
            lw, lh, present = _label_stats(ann_path)
            values = np.flatnonzero(_unlabelled(present, self.reduce_zero_label))
            if len(values) == 0:
                unlabelled.append(ann_path.name)
            elif values.max() >= top:
                beyond.append((ann_path, int(values.max())))
            try:
                with PILImage.open(img_path) as im:
                    sw, sh = im.size
                    orientation = im.getexif().get(0x0112, 1) if im.format in ("JPEG", "MPO", "WEBP") else 1
            except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as e:
                if self.strict:
                    raise DataError(f"{img_path}: unreadable image ({e})") from None
                self.unreadable.add(i)
                self._exif.append(False)
                continue
            shown = (sh, sw) if orientation in _TRANSPOSING else (sw, sh)
            if shown == (lw, lh):
                self._exif.append(orientation not in (None, 1))
            elif (sw, sh) == (lw, lh):
                self._exif.append(False)
            else:
                mismatch.append(f"{ann_path} is {lw}x{lh}, its image {img_path.name} {shown[0]}x{shown[1]}")
                self._exif.append(False)
        if mismatch:
            raise DataError(f"label size differs from its image for {len(mismatch)} file(s): {mismatch[0]}"
                            + (f" (and {len(mismatch) - 1} more)" if len(mismatch) > 1 else ""))
        if beyond:
            path, value = beyond[0]
            valid = (f"values 1..{self.num_classes} are classes, 0 and 255 ignored" if self.reduce_zero_label
                     else f"values 0..{self.num_classes - 1} are classes, 255 ignored")
            raise DataError(f"{path}: label value {value} beyond {self.num_classes} classes ({valid})"
                            + (f"; {len(beyond) - 1} more file(s) like it" if len(beyond) > 1 else ""))
        self.unlabelled_images = len(unlabelled)
        if unlabelled:
            ignored = "0 and 255" if self.reduce_zero_label else "255"
            if len(unlabelled) == len(self.samples):
                raise DataError(f"{self.root / 'annotations' / self.split}: none of the {len(self.samples)} label maps "
                                f"has a labelled pixel (only {ignored}, which are ignored): nothing to learn from")
            self.warnings.append(f"{self.root / 'annotations' / self.split}: {len(unlabelled)} of {len(self.samples)} "
                                 f"label map(s) have no labelled pixel (only {ignored}) and add nothing to the loss: "
                                 f"{', '.join(unlabelled[:3])}" + (" ..." if len(unlabelled) > 3 else ""))
        if self.unreadable:
            names = [self.samples[i][0].name for i in sorted(self.unreadable)]
            self.warnings.append(f"{self.root / 'images' / self.split}: {len(names)} unreadable image(s) will be "
                                 f"skipped: {', '.join(names[:3])}" + (" ..." if len(names) > 3 else ""))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw pair: image (3, H, W) float RGB 0..255, label (H, W) int64 (reduced, checked)."""
        from PIL import ImageOps

        img_path, ann_path = self.samples[index]
        try:
            with Image.open(img_path) as img:
                img.load()
                if self._exif[index]:
                    img = ImageOps.exif_transpose(img)
                image = torch.from_numpy(np.array(to_rgb(img), dtype=np.uint8)).permute(2, 0, 1).float()
        except (OSError, ValueError, SyntaxError) as e:
            raise _Unreadable(f"{img_path}: unreadable image ({e})") from None
        label = _read_label_values(ann_path)
        if label.shape != tuple(image.shape[-2:]):
            raise DataError(f"{ann_path}: label size {label.shape[1]}x{label.shape[0]} differs from its image "
                            f"{img_path.name} ({image.shape[2]}x{image.shape[1]})")
        label = _reduce_zero(label) if self.reduce_zero_label else label.astype(np.int64)
        bad = (label >= self.num_classes) & (label != IGNORE_INDEX)
        if bad.any():
            raise DataError(f"{ann_path}: label value {int(label[bad].max()) + self.reduce_zero_label} beyond "
                            f"{self.num_classes} classes (reduce_zero_label={self.reduce_zero_label})")
        return image, torch.from_numpy(label)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The transformed pair, or None for an image that cannot be decoded (unless strict)."""
        try:
            if index in self.unreadable:
                raise _Unreadable(f"{self.samples[index][0]}: unreadable image (no valid image header)")
            pair = self.load(index)
        except _Unreadable as e:
            if self.strict:
                raise DataError(f"{e}; drop --strict-images to skip such images") from None
            return None
        return self.transform(*pair)


def collate_segmentation(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (image, label) pairs, padding right/bottom to the largest size (images 0, labels 255).

    Returns images (B, 3, H, W) and labels (B, H, W) int64 (images and labels padded separately:
    validation labels keep their original size).
    """
    def pad_stack(tensors: list[torch.Tensor], value: float) -> torch.Tensor:
        h = max(t.shape[-2] for t in tensors)
        w = max(t.shape[-1] for t in tensors)
        return torch.stack([F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]), value=value) for t in tensors])

    batch = [b for b in batch if b is not None]  # None: an image the dataset could not read
    if not batch:
        return torch.zeros(0, 3, 0, 0), torch.zeros(0, 0, 0, dtype=torch.int64)
    images, labels = zip(*batch)
    return pad_stack(list(images), 0.0), pad_stack(list(labels), IGNORE_INDEX)


# ------------------------------------------------------------------------------------------------
# COCO instances -> ADE-layout class maps
# ------------------------------------------------------------------------------------------------
def coco_to_semantic(coco_json: str | os.PathLike, images_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     split: str = "training") -> dict:
    """Rasterise COCO instance annotations into an ADE20K-layout folder (`SegmentationFolder` input).

    Class value = contiguous category index + 1 (categories sorted by id), 0 = unlabelled; crowd
    regions are set to 0 (ignored under reduce_zero_label). Instances are painted largest first, so
    a small object lying on a large one stays visible. Images are copied to `out_dir/images/split`,
    class maps written as `out_dir/annotations/split/<stem>.png`, names to `out_dir/classes.txt`.

    Returns {"images": count, "num_classes": count, "out_dir": path}.
    """
    coco_json, images_dir, out_dir = Path(coco_json), Path(images_dir), Path(out_dir)
    if not coco_json.is_file():
        raise DataError(f"{coco_json}: COCO annotation file not found")
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    from pycocotools.coco import COCO

    from .coco import _load_json, validate_coco

    validate_coco(_load_json(coco_json), coco_json)  # ids, polygons, RLE: as the detection data checks them
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(coco_json))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{coco_json}: not a COCO instances file ({e})") from None
    cat_ids = sorted(coco.getCatIds())
    value = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    if len(cat_ids) > 254:
        raise DataError(f"{coco_json}: {len(cat_ids)} categories do not fit an 8-bit class map (max 254)")
    img_out, ann_out = out_dir / "images" / split, out_dir / "annotations" / split
    img_out.mkdir(parents=True, exist_ok=True)
    ann_out.mkdir(parents=True, exist_ok=True)
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        src = images_dir / info["file_name"]
        if not src.is_file():
            raise DataError(f"{src}: image listed in {coco_json.name} not found")
        canvas = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        for ann in sorted((a for a in anns if not a.get("iscrowd")), key=lambda a: -a["area"]):
            canvas[coco.annToMask(ann) > 0] = value[ann["category_id"]]
        for ann in (a for a in anns if a.get("iscrowd")):
            canvas[coco.annToMask(ann) > 0] = 0
        shutil.copyfile(src, img_out / src.name)
        Image.fromarray(canvas).save(ann_out / f"{src.stem}.png")
    names = [coco.loadCats(cid)[0]["name"] for cid in cat_ids]
    (out_dir / "classes.txt").write_text("\n".join(names) + "\n")
    return {"images": len(coco.getImgIds()), "num_classes": len(names), "out_dir": str(out_dir)}
