"""Input-pipeline benchmark: images/s that one CPU worker gets through the training transform.

One DataLoader worker is one process doing JPEG decode + the paper's augmentation
(`convnext.data.train_transform`: RandomResizedCrop bicubic, flip, RandAugment
rand-m9-mstd0.5-inc1, Random Erasing 0.25 pixel) per image, single-threaded; so the rate of a
single-threaded loop over in-memory JPEG bytes is the per-worker ceiling (file reads excluded).

Real JPEGs come from the CIFAR-10 tarball (32x32, ~1 KB: decoding is nearly free). Because an
ImageNet JPEG (~400x350) costs far more to decode, the benchmark also re-encodes the same images
upscaled to `imagenet_size` and reports both, clearly labelled.
"""
from __future__ import annotations

import io
import statistics
import tarfile
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

__all__ = ["read_jpegs", "upscaled_jpegs", "bench_transform", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # what a folder source may hold


def read_jpegs(source: str | Path, limit: int) -> list[bytes]:
    """The encoded bytes of the first `limit` images of `source`, read into memory.

    `source` is a .tar(.gz) of JPEGs (no extraction to disk), or a folder: an ImageFolder root
    (class sub-folders) or a flat folder of images, walked in sorted order.
    """
    source = Path(source)
    out = []
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            out.append(path.read_bytes())
            if len(out) == limit:
                break
        if not out:
            raise ValueError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or its sub-folders")
        return out
    with tarfile.open(source) as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg")):
                out.append(tar.extractfile(member).read())
                if len(out) == limit:
                    break
    if not out:
        raise ValueError(f"{source}: no .jpg files found")
    return out


def upscaled_jpegs(jpegs: list[bytes], size: tuple[int, int] = (500, 375), quality: int = 90) -> list[bytes]:
    """The same images resized (bicubic) to an ImageNet-typical `size` (W, H) and re-encoded."""
    out = []
    for data in jpegs:
        img = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def bench_transform(jpegs: list[bytes], transform, *, repeats: int = 3, progress: bool = True) -> dict:
    """Images/s of decode + `transform` in this single thread (= one DataLoader worker).

    Each repeat passes over all `jpegs`; returns the median and spread over repeats.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs torch single-threaded
    rates = []
    try:
        bar = tqdm(total=repeats * len(jpegs), desc="decode+augment", unit="img", disable=not progress)
        for _ in range(repeats):
            start = time.perf_counter()
            for data in jpegs:
                img = Image.open(io.BytesIO(data)).convert("RGB")
                transform(img)
            rates.append(len(jpegs) / (time.perf_counter() - start))
            bar.update(len(jpegs))
        bar.close()
    finally:
        torch.set_num_threads(threads)
    return {
        "img_per_s_per_worker": statistics.median(rates),
        "img_per_s_min": min(rates),
        "img_per_s_max": max(rates),
        "images": len(jpegs),
        "repeats": repeats,
        "source_size": list(Image.open(io.BytesIO(jpegs[0])).size),
        "mean_jpeg_kib": sum(map(len, jpegs)) / len(jpegs) / 1024,
    }
