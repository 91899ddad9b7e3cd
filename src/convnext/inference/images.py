"""Reading the images `predict` is given: folders expanded, each image decoded as its task's dataset does."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import DataError

__all__ = ["expand_image_args", "open_image", "read_rgb_tensor"]


def expand_image_args(args: Iterable[str | os.PathLike]) -> list[str]:
    """Command-line image arguments as files: a folder becomes its images (sorted, recursive).

    URLs and folders without images are errors; paths that do not exist are kept (`open_image`
    reports them per image, so the other images are still classified).
    """
    from ..data.datasets import IMG_EXTENSIONS, list_images

    out = []
    for a in args:
        text = str(a)
        if "://" in text:
            raise DataError(f"{text}: URLs are not supported; download the file first")
        if Path(text).is_dir():
            found = list_images(text)
            if not found:
                raise DataError(f"{text}: folder holds no images ({', '.join(IMG_EXTENSIONS)})")
            out.extend(found)
        else:
            out.append(text)
    return out


def _check_file(text: str) -> Path:
    if "://" in text:
        raise DataError(f"{text}: URLs are not supported; download the file first")
    p = Path(text)
    if p.is_dir():
        raise DataError(f"{p}: is a folder, not an image")
    if not p.is_file():
        raise DataError(f"image not found: {p}")
    return p


def open_image(path: str | os.PathLike):
    """The decoded PIL image at `path`, or a one-line DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    p = _check_file(str(path))
    try:
        with Image.open(p) as img:
            img.load()
            return img.copy()
    except Image.DecompressionBombError as e:
        raise DataError(f"{p}: refused, larger than Pillow's decompression-bomb limit ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{p}: not a readable image ({e})") from None


def read_rgb_tensor(path: str | os.PathLike, task: str):
    """(3, H, W) uint8 RGB of an image, decoded as the task's dataset decodes it: torchvision's
    decoder for detection (`CocoDataset`), Pillow + `to_rgb` for segmentation (`SegmentationFolder`)."""
    import numpy as np
    import torch

    p = _check_file(str(path))
    if task == "detection":
        from torchvision.io import ImageReadMode, decode_image

        try:
            return decode_image(str(p), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError, ValueError) as e:
            raise DataError(f"{p}: cannot decode image ({str(e).splitlines()[0] if str(e) else e})") from None
    from ..data.transforms import to_rgb

    img = open_image(p)
    return torch.from_numpy(np.array(to_rgb(img), dtype=np.uint8)).permute(2, 0, 1)
