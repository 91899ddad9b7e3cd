"""COCO-format instance data for detection and instance segmentation (PAPER.md §4.1).

The paper trains Mask R-CNN / Cascade Mask R-CNN with MMDetection's multi-scale 3x recipe. Its train
pipeline (official `mask_rcnn_convnext_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco_in1k.py`,
"augmentation strategy originates from DETR / Sparse RCNN") is, at the reference size 800:

    RandomFlip(0.5)
    one of, with equal probability:
      a) resize short side to one of 480, 512, ..., 800 (long side at most 1333)
      b) resize short side to one of 400, 500, 600 (long <= 1333); crop a random h x w, each side
         uniform in [384, 600] (capped by the image); then (a)
Test: short side 800, long side at most 1333, no flip.

`img_size` scales every length of the recipe by img_size / 800 for small runs. The geometry is
torchvision.transforms.v2 on tv_tensors, so boxes and masks move with the image; ours are only the
random-size crop and nearest-exact mask resizing (`InstanceMasks`). Train sizes round like
torchvision's Resize (floor), MMDetection rounds to nearest: the two can differ by one pixel. The
test resize is mmcv's own (`data.preprocess.detection_eval_transform`: sizes and cv2 pixels).

Dataset item: `(image (3, H, W) float in [0, 1], target)`, target = {boxes (N, 4) float32 xyxy in
the transformed image's pixels, labels (N,) int64 in 1..C (category ids in sorted order; 0 is
background), masks (N, H, W) uint8, image_id, orig_size (H0, W0), size (H, W)}. Crowd regions are
not in the targets (as in MMDetection); they stay in `dataset.coco`, where COCO evaluation ignores
detections on them. The annotation file and the image headers are validated when the dataset is
built (`validate_coco`, `CocoDataset`); an image that cannot be decoded is the item `None`.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from convnext.errors import ConfigError, DataError, UserError

__all__ = [
    "CocoDataset",
    "InstanceMasks",
    "RandomSizeCrop",
    "build_coco_dataset",
    "coco_backend",
    "coco_eval_transforms",
    "coco_split_paths",
    "coco_train_transforms",
    "collate_detection",
    "count_skipped",
    "validate_coco",
]

log = logging.getLogger(__name__)

# The official recipe's lengths at the reference test size 800 (pixels).
REF_SIZE = 800
MAX_SIZE = 1333
TRAIN_SHORT_SIDES = tuple(range(480, 801, 32))  # 480, 512, ..., 800
CROP_SHORT_SIDES = (400, 500, 600)
CROP_RANGE = (384, 600)


def _scale(lengths: tuple[int, ...], img_size: int) -> list[int]:
    """Recipe lengths scaled to img_size (at 800 unchanged), deduplicated, at least 1 pixel."""
    return sorted({max(1, round(n * img_size / REF_SIZE)) for n in lengths})


class InstanceMasks(tv_tensors.Mask):
    """(N, H, W) instance masks that `F.resize` resamples with nearest-exact (pixel centres), not
    torchvision's default nearest for masks, which floors the source index: shifted by up to one
    output pixel toward the bottom-right per resize, so masks drift off their boxes."""


@F.register_kernel(F.resize, InstanceMasks)
def _resize_instance_masks(mask: torch.Tensor, size: list[int] | None, interpolation: Any = None,
                           max_size: int | None = None, **kwargs: Any) -> torch.Tensor:
    out = F.resize_image(mask.as_subclass(torch.Tensor), size, interpolation=v2.InterpolationMode.NEAREST_EXACT,
                         max_size=max_size)
    return tv_tensors.wrap(out, like=mask)  # stays InstanceMasks for the transforms after this one


class RandomSizeCrop(v2.Transform):
    """Crop a random h x w window, h and w each uniform in [lo, hi] capped by the image's own side,
    at a uniform position (MMDetection's RandomCrop with crop_type='absolute_range').

    Boxes are clipped to the window; follow with `v2.SanitizeBoundingBoxes` to drop those left empty
    (an empty crop is allowed, as `allow_negative_crop=True` in the recipe).
    """

    def __init__(self, lo: int, hi: int):
        super().__init__()
        if not 0 < lo <= hi:
            raise ValueError(f"RandomSizeCrop needs 0 < lo <= hi, got {lo}, {hi}")
        self.lo, self.hi = lo, hi

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image))
        h, w = F.get_size(image)

        def side(n: int) -> int:  # uniform in [min(n, lo), min(n, hi)]
            return int(torch.randint(min(n, self.lo), min(n, self.hi) + 1, ()))

        ch, cw = side(h), side(w)
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return dict(top=top, left=left, height=ch, width=cw)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, **params)

    # torchvision < 0.21 (pyproject allows >= 0.17) calls these private names
    _get_params, _transform = make_params, transform


def coco_train_transforms(img_size: int = REF_SIZE) -> v2.Compose:
    """The official multi-scale + crop train pipeline (module docstring), lengths scaled by img_size/800."""
    max_size = round(MAX_SIZE * img_size / REF_SIZE)
    multiscale = v2.RandomShortestSize(_scale(TRAIN_SHORT_SIDES, img_size), max_size=max_size)
    crop_then_multiscale = v2.Compose([
        v2.RandomShortestSize(_scale(CROP_SHORT_SIDES, img_size), max_size=max_size),
        RandomSizeCrop(*_scale(CROP_RANGE, img_size)),
        multiscale,
    ])
    return v2.Compose([
        v2.RandomHorizontalFlip(0.5),
        v2.RandomChoice([multiscale, crop_then_multiscale]),
        v2.SanitizeBoundingBoxes(min_size=1),  # boxes the crop left empty go, with their labels and masks
        v2.ToDtype(torch.float32, scale=True),  # image only: uint8 -> [0, 1]
    ])


def coco_eval_transforms(img_size: int = REF_SIZE) -> v2.Compose:
    """Test pipeline: short side img_size, long side at most 1333 * img_size / 800, no flip."""
    from ..data.preprocess import detection_eval_transform  # shared with `convnext predict`

    return detection_eval_transform(img_size)


def coco_backend() -> tuple[type, type, Any]:
    """(COCO, COCOeval, mask API) from faster-coco-eval, else pycocotools (same interface)."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster
        from faster_coco_eval.core import mask

        return COCO, COCOeval_faster, mask
    except ImportError:
        pass
    try:
        from pycocotools import mask
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval, mask
    except ImportError:
        raise UserError("COCO data needs faster-coco-eval or pycocotools: pip install faster-coco-eval") from None


def _make_coco(data: dict) -> Any:
    """A COCO api object indexed from an already-loaded dict (no file read, no printing)."""
    COCO, _, _ = coco_backend()
    coco = COCO()
    coco.dataset = data
    if hasattr(coco, "print_function"):  # faster-coco-eval logs, pycocotools prints
        coco.print_function = lambda *a, **k: None
        coco.createIndex()
    else:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    return coco


def _first(items: list, n: int = 5) -> str:
    return ", ".join(map(str, items[:n])) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _require(records: Any, keys: tuple[str, ...], where: str, path: Path) -> None:
    """Every record a dict with `keys`, else a DataError naming the file, the list and the key."""
    if not isinstance(records, list):
        raise DataError(f"{path}: '{where}' must be a list")
    for i, r in enumerate(records):
        missing = [k for k in keys if not isinstance(r, dict) or k not in r]
        if missing:
            raise DataError(f"{path}: {where}[{i}] lacks key '{missing[0]}' (expected {', '.join(keys)})")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ids_of(records: list[dict], where: str, path: Path) -> list:
    """The records' ids, refused by name when not integers or not unique."""
    one = {"images": "image", "annotations": "annotation", "categories": "category"}[where]
    ids = [r["id"] for r in records]
    bad = [i for i in ids if not _is_int(i)]
    if bad:
        raise DataError(f"{path}: {one} ids must be integers, got {_first([repr(b) for b in bad])}")
    seen: set[int] = set()
    dup = sorted({i for i in ids if i in seen or seen.add(i)})
    if dup:
        raise DataError(f"{path}: duplicate {one} ids {_first(dup)} in '{where}' (every {one} needs its own id)")
    return ids


def _polygon_problem(segm: list) -> str | None:
    """Why `segm` (a list of polygons) is not valid COCO polygons, or None."""
    if not segm:
        return "is an empty list"
    for poly in segm:
        if not isinstance(poly, list) or not all(_is_num(v) for v in poly):
            return "polygons must be lists of numbers"
        if not all(math.isfinite(v) for v in poly):
            return "has a non-finite polygon coordinate"
        if len(poly) < 6 or len(poly) % 2:
            return (f"has a polygon of {len(poly)} coordinates (a COCO polygon needs an even count of at "
                    f"least 6: x, y of 3 or more points)")
    return None


def _rle_problem(segm: dict, h: int, w: int) -> str | None:
    """Why `segm` is not a valid COCO RLE of an h x w image, or None."""
    size, counts = segm.get("size"), segm.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        return f"RLE 'size' must be [height, width], got {size!r}"
    if list(size) != [h, w]:
        return f"RLE size {size} differs from its image's [height, width] [{h}, {w}]"
    if isinstance(counts, list):
        if not all(_is_int(v) and v >= 0 for v in counts) or sum(counts) != h * w:
            return f"uncompressed RLE counts must be non-negative integers summing to {h}x{w} = {h * w}"
        return None
    if isinstance(counts, (str, bytes)) and counts:
        _, _, mask_api = coco_backend()
        try:
            mask_api.area([{"size": size, "counts": counts}])
        except (ValueError, RuntimeError, TypeError):
            return "compressed RLE counts are malformed"
        return None
    return "RLE 'counts' must be a list of run lengths or a non-empty compressed string"


def _segmentation_problem(segm: Any, h: int, w: int) -> str | None:
    if isinstance(segm, list):
        return _polygon_problem(segm)
    if isinstance(segm, dict):
        return _rle_problem(segm, h, w)
    return f"must be polygons [[x0, y0, x1, y1, x2, y2, ...]] or an RLE dict, got {type(segm).__name__}"


def validate_coco(data: dict, path: Path) -> None:
    """Refuse, naming the ids, what would silently corrupt training or COCO evaluation.

    Checked: integer, unique image / annotation / category ids (duplicates move boxes onto the
    wrong image or corrupt the evaluation's index); positive integer image sizes; integer
    category ids; bbox 4 numbers; segmentations that are valid polygons (even count >= 6: a
    4-number polygon would be read as a box, a 5-number one as an empty mask) or RLE of the
    image's size. Non-finite boxes are not refused here: the dataset skips and counts them.
    """
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    _ids_of(cats, "categories", path)
    bad_names = [c["id"] for c in cats if not isinstance(c["name"], str)]
    if bad_names:
        raise DataError(f"{path}: categories {_first(bad_names)}: 'name' must be a string")
    _ids_of(images, "images", path)
    for key in ("width", "height"):
        bad = [img["id"] for img in images if not (_is_int(img[key]) and img[key] > 0)]
        if bad:
            example = next(img[key] for img in images if img["id"] == bad[0])
            raise DataError(f"{path}: image id(s) {_first(bad)}: '{key}' must be a positive integer, got {example!r}")
    bad = [img["id"] for img in images if not isinstance(img["file_name"], str)]
    if bad:
        raise DataError(f"{path}: image id(s) {_first(bad)}: 'file_name' must be a string")
    if any("id" not in a for a in anns):
        i = next(i for i, a in enumerate(anns) if "id" not in a)
        raise DataError(f"{path}: annotations[{i}] lacks key 'id' (every COCO annotation needs a unique id)")
    _ids_of(anns, "annotations", path)
    for key in ("image_id", "category_id"):
        bad = [a["id"] for a in anns if not _is_int(a[key])]
        if bad:
            example = next(a[key] for a in anns if a["id"] == bad[0])
            raise DataError(f"{path}: annotation id(s) {_first(bad)}: '{key}' must be an integer, got {example!r}")
    bad = [a["id"] for a in anns
           if not (isinstance(a["bbox"], list) and len(a["bbox"]) == 4 and all(_is_num(v) for v in a["bbox"]))]
    if bad:
        example = next(a["bbox"] for a in anns if a["id"] == bad[0])
        raise DataError(f"{path}: annotation id(s) {_first(bad)}: bbox must be 4 numbers [x, y, w, h], got {example!r}")
    size = {img["id"]: (img["height"], img["width"]) for img in images}
    problems: dict[str, list[int]] = {}
    for a in anns:
        if "segmentation" in a and a["image_id"] in size:
            why = _segmentation_problem(a["segmentation"], *size[a["image_id"]])
            if why is not None:
                problems.setdefault(why, []).append(a["id"])
    if problems:
        why, ids = next(iter(problems.items()))
        more = sum(map(len, problems.values())) - len(ids)
        raise DataError(f"{path}: annotation id(s) {_first(ids)}: segmentation {why}"
                        + (f" ({more} more annotation(s) with other segmentation problems)" if more else ""))


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: missing top-level key '{key}' (expected images, annotations, categories)")
    _require(data["images"], ("id", "file_name", "height", "width"), "images", path)
    _require(data["annotations"], ("image_id", "category_id", "bbox"), "annotations", path)
    _require(data["categories"], ("id", "name"), "categories", path)
    return data


# EXIF orientations (tag 0x0112) that turn the stored image by 90 degrees: shown width = stored height.
_TRANSPOSING = (5, 6, 7, 8)


def _image_header(path: Path) -> tuple[int, int, int] | None:
    """(stored width, stored height, EXIF orientation) from the file's header, None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            # JPEG-like headers hold EXIF up front; PIL would decode a whole PNG to find its eXIf chunk
            orientation = im.getexif().get(0x0112, 1) if im.format in ("JPEG", "MPO", "TIFF", "WEBP") else 1
            return im.size[0], im.size[1], orientation if orientation in range(1, 9) else 1
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


class CocoDataset(Dataset):
    """Images and instance annotations of one COCO JSON file, validated once at construction.

    The JSON is checked up front (`validate_coco`: ids, categories, boxes, segmentation formats)
    and so is every image's header: it must exist and its size must be the JSON's width/height.
    Those are the size of the image as shown, EXIF orientation applied, as mmdet/mmcv
    (`imfrombytes(flag='color')`) and detectron2 (`read_image` + `check_image_size`) read images.
    An image whose EXIF orientation swaps width and height but whose JSON gives the stored size
    is read as stored (the annotations fit only that frame), counted in `stored_orientation`.

    Annotations whose box, clipped to the image, is 1 pixel or less wide or high are skipped and
    counted in `skipped_annotations`; boxes with NaN/inf in `nonfinite_annotations` (skipped
    too); crowd regions are counted in `crowd_annotations` and kept out of the targets. Images
    whose header or pixels cannot be read are items `None` (dropped and counted by the collate),
    or a DataError with `strict`. `warnings` holds one line per kind of thing skipped.
    `classes[l - 1]` / `cat_ids[l - 1]` are the name / COCO id of label l.

    Args:
        ann_file: COCO instances JSON.
        img_dir: folder the images' `file_name`s are relative to.
        transforms: callable (tv_tensors.Image, target) -> (image, target), e.g.
            `coco_train_transforms(800)`; None keeps the original size.
        with_masks: decode instance masks (needs every annotation's `segmentation`).
        strict: an unreadable image is a DataError instead of a skipped item.
    """

    def __init__(self, ann_file: str | Path, img_dir: str | Path, transforms: Callable | None = None,
                 with_masks: bool = True, strict: bool = False):
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        self.transforms = transforms if transforms is not None else v2.ToDtype(torch.float32, scale=True)
        self.with_masks, self.strict = with_masks, strict
        data = _load_json(self.ann_file)
        path = self.ann_file
        validate_coco(data, path)

        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [c["id"] for c in cats]
        self.classes: list[str] = [c["name"] for c in cats]
        label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.images: list[dict] = data["images"]
        index_of = {img["id"]: i for i, img in enumerate(self.images)}

        anns = data["annotations"]
        no_image = [a["id"] for a in anns if a["image_id"] not in index_of]
        if no_image:
            raise DataError(f"{path}: {len(no_image)} annotations point to image ids not in 'images' "
                            f"(annotation ids {_first(no_image)})")
        bad_cat = sorted({a["category_id"] for a in anns if a["category_id"] not in label_of})
        if bad_cat:
            raise DataError(f"{path}: category ids {_first(bad_cat)} are used by annotations but not in 'categories'")
        absent = [img["file_name"] for img in self.images if not (self.img_dir / img["file_name"]).is_file()]
        if absent:
            raise DataError(f"{path}: {len(absent)} of {len(self.images)} images are missing from {self.img_dir}: "
                            f"{_first(absent)}")
        self.warnings: list[str] = []
        self._check_images()

        # Per image: (xyxy box clipped to the image, label, segmentation) of its usable annotations.
        self._targets: list[list[tuple[list[float], int, Any]]] = [[] for _ in self.images]
        self.skipped_annotations = self.crowd_annotations = 0
        nonfinite: list[int] = []
        for a in anns:
            if a.get("iscrowd", 0):
                self.crowd_annotations += 1
                continue
            img = self.images[index_of[a["image_id"]]]
            box = a["bbox"]
            if not all(math.isfinite(v) for v in box):
                nonfinite.append(a["id"])
                continue
            x0, y0 = max(box[0], 0), max(box[1], 0)
            x1, y1 = min(box[0] + box[2], img["width"]), min(box[1] + box[3], img["height"])
            if x1 - x0 <= 1 or y1 - y0 <= 1:
                self.skipped_annotations += 1
                continue
            if with_masks and "segmentation" not in a:
                raise DataError(f"{path}: annotation id {a['id']} lacks key 'segmentation' (needed for masks)")
            self._targets[index_of[a["image_id"]]].append(([x0, y0, x1, y1], label_of[a["category_id"]],
                                                           a.get("segmentation")))
        self.nonfinite_annotations = len(nonfinite)
        if nonfinite:
            self.warnings.append(f"{path}: skipped {len(nonfinite)} annotation(s) whose bbox holds NaN or inf "
                                 f"(annotation ids {_first(nonfinite)})")
        if self.skipped_annotations:
            self.warnings.append(f"{path}: skipped {self.skipped_annotations} annotation(s) with boxes of 1 pixel "
                                 f"or less (width or height)")
        # COCOeval reads each ground-truth 'area' (area ranges); a file without it gets the box area.
        gt = dict(data, annotations=[a if "area" in a else dict(a, area=float(a["bbox"][2] * a["bbox"][3]))
                                     for a in anns if all(math.isfinite(v) for v in a["bbox"])])
        self.coco = _make_coco(gt)  # the ground truth COCO evaluation reads, crowd included
        self.num_annotations = sum(map(len, self._targets))
        for w in self.warnings:  # the training/eval commands print them once, as notes
            log.info(w)

    def _check_images(self) -> None:
        """Header of every image (no decoding): readable, and of the JSON's size (see the class doc)."""
        self.unreadable: set[int] = set()
        self._exif: list[bool] = []
        stored, wrong = [], []
        for i, info in enumerate(self.images):
            header = _image_header(self.img_dir / info["file_name"])
            if header is None:
                if self.strict:
                    raise DataError(f"{self.img_dir / info['file_name']}: unreadable image (no valid image header)")
                self.unreadable.add(i)
                self._exif.append(False)
                continue
            sw, sh, orientation = header
            shown = (sh, sw) if orientation in _TRANSPOSING else (sw, sh)
            json_size = (info["width"], info["height"])
            if json_size == shown:
                self._exif.append(orientation != 1)
            elif json_size == (sw, sh):  # EXIF swaps the sides, the JSON gives the stored size
                stored.append(info["file_name"])
                self._exif.append(False)
            else:
                wrong.append(f"{info['file_name']} is {shown[0]}x{shown[1]}" +
                             (f" (stored {sw}x{sh}, EXIF orientation {orientation})" if orientation != 1 else "") +
                             f", the JSON says {json_size[0]}x{json_size[1]}")
                self._exif.append(False)
        if wrong:
            raise DataError(f"{self.ann_file}: {len(wrong)} image(s) differ from their width/height "
                            f"(width x height, EXIF orientation applied): {_first(wrong, 3)}")
        self.stored_orientation = len(stored)
        if stored:
            self.warnings.append(f"{self.ann_file}: {len(stored)} image(s) carry an EXIF orientation that swaps "
                                 f"width and height, but the JSON gives their stored size: read as stored "
                                 f"({_first(stored, 3)})")
        if self.unreadable:
            names = [self.images[i]["file_name"] for i in sorted(self.unreadable)]
            self.warnings.append(f"{self.img_dir}: {len(names)} unreadable image(s) will be skipped: {_first(names, 3)}")

    def __len__(self) -> int:
        return len(self.images)

    def _mask(self, segm: Any, h: int, w: int, index: int) -> np.ndarray:
        """(h, w) uint8 mask from polygons, uncompressed RLE or compressed RLE (validated at construction)."""
        _, _, mask_api = coco_backend()
        if isinstance(segm, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
            rle = mask_api.merge(mask_api.frPyObjects(segm, h, w))
        elif isinstance(segm.get("counts"), list):  # uncompressed RLE
            rle = mask_api.frPyObjects(segm, h, w)
        else:  # compressed RLE
            rle = segm
        return mask_api.decode(rle)

    def _unreadable(self, path: Path, why: str) -> None:
        if self.strict:
            raise DataError(f"{path}: cannot decode image ({why}); drop --strict-images to skip such images")
        log.debug("%s: unreadable image skipped (%s)", path, why)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        """(image, target), or None for an image that cannot be decoded (see the class doc)."""
        from torchvision.io import ImageReadMode, decode_image

        info = self.images[index]
        path = self.img_dir / info["file_name"]
        if index in self.unreadable:
            return self._unreadable(path, "no valid image header")
        try:
            image = decode_image(str(path), mode=ImageReadMode.RGB,
                                 apply_exif_orientation=self._exif[index])  # (3, H0, W0) uint8
        except (RuntimeError, OSError, ValueError) as e:
            return self._unreadable(path, str(e).splitlines()[0] if str(e) else type(e).__name__)
        h, w = info["height"], info["width"]
        if tuple(image.shape[-2:]) != (h, w):
            raise DataError(f"{path}: image is {image.shape[2]}x{image.shape[1]} but {self.ann_file} says {w}x{h}")

        objs = self._targets[index]
        boxes = torch.tensor([o[0] for o in objs], dtype=torch.float32).reshape(-1, 4)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([o[1] for o in objs], dtype=torch.int64),
            "image_id": info["id"],
            "orig_size": (h, w),
        }
        if self.with_masks:
            masks = np.stack([self._mask(o[2], h, w, index) for o in objs]) if objs else np.zeros((0, h, w), np.uint8)
            target["masks"] = InstanceMasks(torch.from_numpy(masks))  # (N, H0, W0) uint8

        image, target = self.transforms(tv_tensors.Image(image), target)
        # Plain tensors out: the model needs no tv_tensors metadata.
        image = image.as_subclass(torch.Tensor)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        if self.with_masks:
            target["masks"] = target["masks"].as_subclass(torch.Tensor)
        target["size"] = tuple(image.shape[-2:])
        return image, target


def coco_split_paths(root: str | Path, split: str) -> tuple[Path, Path, str | None]:
    """(annotation JSON, image folder, warning or None) of `split` in the standard COCO layout
    `root/annotations/instances_{split}2017.json`, `root/{split}2017/`.

    A missing val JSON falls back to the train split (as for coco128, which has only train2017),
    with a one-line warning returned.
    """
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(root)

    def paths(s: str) -> tuple[Path, Path]:
        return root / "annotations" / f"instances_{s}2017.json", root / f"{s}2017"

    ann, img_dir = paths(split)
    warning = None
    if split == "val" and not ann.is_file() and paths("train")[0].is_file():
        warning = f"{root}: no annotations/instances_val2017.json, evaluating on the train split"
        ann, img_dir = paths("train")
    if not ann.is_file():
        raise DataError(f"{ann}: COCO annotation file not found (expected DIR/annotations/instances_{split}2017.json)")
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: COCO image folder not found (expected DIR/{img_dir.name}/)")
    return ann, img_dir, warning


def build_coco_dataset(root: str | Path, split: str, img_size: int = REF_SIZE, train: bool | None = None,
                       with_masks: bool = True, strict: bool = False, num_classes: int | None = None) -> CocoDataset:
    """The COCO dataset of `split` under `root` with the recipe's transforms at `img_size`.

    `train` (default: split == 'train') picks the train or test transforms. The val->train fallback
    warning is logged and kept as `dataset.warning` (None otherwise). `strict`: unreadable images
    are errors. `num_classes` (the `--num-classes` flag), when given, must equal the number of
    categories: detection takes its classes from the annotation file.
    """
    ann, img_dir, warning = coco_split_paths(root, split)
    if warning:
        log.warning(warning)
    train = split == "train" if train is None else train
    tf = coco_train_transforms(img_size) if train else coco_eval_transforms(img_size)
    ds = CocoDataset(ann, img_dir, transforms=tf, with_masks=with_masks, strict=strict)
    if num_classes is not None and num_classes != len(ds.classes):
        raise ConfigError(f"--num-classes {num_classes}: {ann} has {len(ds.classes)} categories "
                          f"({_first(ds.classes)}); detection takes its classes from the annotation file "
                          f"(drop --num-classes)")
    ds.warning = warning
    return ds


def collate_detection(batch: list[tuple[torch.Tensor, dict] | None]) -> tuple[list[torch.Tensor], list[dict]]:
    """Images of different sizes stay a list (the model pads them); targets a list of dicts.
    `None` items (unreadable images) are left out; `count_skipped` counts them."""
    batch = [b for b in batch if b is not None]
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def count_skipped(batch: list) -> int:
    """How many items of a batch are `None` (images the dataset could not read)."""
    return sum(b is None for b in batch)
