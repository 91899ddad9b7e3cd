"""The device-resident loader on CPU tensors: shapes, exact resume, op semantics vs PIL."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import DataLoader, Dataset

from convnext.data.device_loader import (
    RAND_OPS, DeviceAugment, DeviceLoader, _colour, _geometric, augment_batch, build_loader, decode_dataset,
)
from convnext.data.transforms import eval_transform
from convnext.errors import ConfigError, DataError
from convnext.train.distributed import SeededSamples, TrainSampler

IDENTITY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, randaug=None, reprob=0.0)


class Pictures(Dataset):
    """`n` random RGB PIL images of one size, label i % 3; `None` (unreadable) at indices in `bad`."""

    def __init__(self, n=12, size=(12, 10), bad=(), transform=None):
        rng = np.random.default_rng(0)
        self.arrays = [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]
        self.bad, self.transform = set(bad), transform

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, i):
        if i in self.bad:
            return None
        img = Image.fromarray(self.arrays[i])
        return (self.transform(img) if self.transform else img), i % 3


def _batches(loader):
    return [(x.clone(), y.clone(), d) for x, y, d in loader]


def test_shapes_targets_and_dtypes():
    ds = Pictures(10)
    loader = DeviceLoader(ds, 4, list(range(10)), "cpu", DeviceAugment(img_size=8), seed=0)
    out = _batches(loader)
    assert len(loader) == len(out) == 3
    assert [tuple(x.shape) for x, _, _ in out] == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 and d == 0 for x, y, d in out)
    assert torch.cat([y for _, y, _ in out]).tolist() == [i % 3 for i in range(10)]
    assert all(torch.isfinite(x).all() for x, _, _ in out)


def test_deterministic_across_runs_and_mid_epoch_restart():
    ds = Pictures(12)
    aug = DeviceAugment(img_size=8, scale=(0.3, 1.0))
    sampler = TrainSampler(ds, 4, seed=3)
    sampler.set_epoch(2)
    full = _batches(DeviceLoader(ds, 4, sampler, "cpu", aug, seed=7))
    again = _batches(DeviceLoader(ds, 4, sampler, "cpu", aug, seed=7))
    sampler.set_epoch(2, start_batch=1)  # resumed after the first batch
    resumed = _batches(DeviceLoader(ds, 4, sampler, "cpu", aug, seed=7))
    for (a, ya, _), (b, yb, _) in zip(full, again):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert len(resumed) == 2
    for (a, ya, _), (b, yb, _) in zip(full[1:], resumed):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    sampler.set_epoch(3)
    other_epoch = _batches(DeviceLoader(ds, 4, sampler, "cpu", aug, seed=7))
    assert not torch.equal(other_epoch[0][0], full[0][0])


def test_augmentation_of_an_image_does_not_depend_on_its_batch():
    images, _, _ = decode_dataset(Pictures(6))
    aug = DeviceAugment(img_size=8)
    idx = torch.arange(6)
    whole = augment_batch(images, idx, epoch=1, seed=0, aug=aug)
    part = augment_batch(images[3:5], idx[3:5], epoch=1, seed=0, aug=aug)
    torch.testing.assert_close(part, whole[3:5], atol=1e-5, rtol=0)


def test_identity_augmentation_matches_the_cpu_eval_pipeline():
    ds = Pictures(4, size=(9, 9))
    loader = DeviceLoader(ds, 4, range(4), "cpu", DeviceAugment(img_size=9, **IDENTITY), seed=0)
    x, _, _ = next(iter(loader))
    ref = torch.stack([eval_transform(9, crop_pct=1.0)(ds[i][0]) for i in range(4)])
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)


def test_flip_and_crop_are_exact_pixel_copies():
    ds = Pictures(3, size=(16, 16))
    images, _, _ = decode_dataset(ds)
    plain = eval_transform(16, crop_pct=1.0)
    flipped = augment_batch(images, torch.arange(3), 0, 0, DeviceAugment(img_size=16, **dict(IDENTITY, hflip=1.0)))
    ref = torch.stack([plain(ds[i][0]) for i in range(3)]).flip(-1)
    torch.testing.assert_close(flipped, ref, atol=1e-5, rtol=1e-5)
    # An 8x8 crop (a quarter of the area, square) resized to 8x8 is an exact window of the image.
    crop = augment_batch(images, torch.arange(3), 0, 0, DeviceAugment(img_size=8, **dict(IDENTITY, scale=(0.25, 0.25))))
    full = torch.stack([plain(ds[i][0]) for i in range(3)])
    windows = full.unfold(2, 8, 1).unfold(3, 8, 1)  # (3, 3, 9, 9, 8, 8)
    for i in range(3):
        err = (windows[i] - crop[i][:, None, None]).abs().amax((0, 3, 4))  # (9, 9) over window positions
        assert err.min() < 1e-5


@pytest.mark.parametrize("name", [n for n in RAND_OPS if n not in ("Rotate", "ShearX", "ShearY", "TranslateXRel",
                                                                      "TranslateYRel")])
@pytest.mark.parametrize("mag, sign", [(9.0, 1.0), (6.5, -1.0)])
def test_colour_ops_match_pillow(name, mag, sign):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (2, 11, 13, 3), dtype=np.uint8)
    arr[1] = arr[1] // 3 + 40  # a low-contrast image too (autocontrast / equalize stretch it)
    factor = max(0.1, 1.0 + sign * mag / 10 * 0.9)
    pil = {
        "AutoContrast": ImageOps.autocontrast,
        "Equalize": ImageOps.equalize,
        "Invert": ImageOps.invert,
        "PosterizeIncreasing": lambda im: ImageOps.posterize(im, 4 - int(mag / 10 * 4)),
        "SolarizeIncreasing": lambda im: ImageOps.solarize(im, 256 - min(256, int(mag / 10 * 256))),
        "SolarizeAdd": lambda im: Image.fromarray(
            np.where(np.asarray(im) < 128, np.minimum(255, np.asarray(im).astype(int) + min(128, int(mag / 10 * 110))),
                     np.asarray(im)).astype(np.uint8)),
        "ColorIncreasing": lambda im: ImageEnhance.Color(im).enhance(factor),
        "ContrastIncreasing": lambda im: ImageEnhance.Contrast(im).enhance(factor),
        "BrightnessIncreasing": lambda im: ImageEnhance.Brightness(im).enhance(factor),
        "SharpnessIncreasing": lambda im: ImageEnhance.Sharpness(im).enhance(factor),
    }[name]
    ref = torch.stack([torch.from_numpy(np.asarray(pil(Image.fromarray(a))).copy()).permute(2, 0, 1) for a in arr])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    out = _colour(name, x, torch.full((2,), mag), torch.full((2,), sign))
    assert out.shape == x.shape
    assert (out - ref.float()).abs().max() <= 1  # Pillow's rounding may differ by one level


@pytest.mark.parametrize("name, pil", [
    ("Rotate", lambda im, lv: im.rotate(lv * 30, resample=Image.BICUBIC, fillcolor=(124, 116, 104))),
    ("ShearX", lambda im, lv: im.transform(im.size, Image.AFFINE, (1, lv * 0.3, 0, 0, 1, 0), Image.BICUBIC,
                                           fillcolor=(124, 116, 104))),
    ("TranslateYRel", lambda im, lv: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, lv * 0.45 * im.size[1]),
                                                  Image.BICUBIC, fillcolor=(124, 116, 104))),
])
def test_geometric_ops_follow_pillow(name, pil):
    # A smooth image, so that resampling differences stay small; the fill and direction must agree.
    yy, xx = np.mgrid[0:24, 0:24]
    arr = np.stack([xx * 10, yy * 10, (xx + yy) * 5], -1).astype(np.uint8)
    level = -0.7
    ref = torch.from_numpy(np.asarray(pil(Image.fromarray(arr), level)).copy()).permute(2, 0, 1).float()
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
    out = _geometric(name, x, torch.tensor([level]), torch.tensor([124.0, 116.0, 104.0]))[0]
    diff = (out - ref).abs()
    assert diff.mean() < 3 and (diff > 40).float().mean() < 0.03  # only edge pixels may differ much


def test_random_erasing_replaces_one_box_with_noise():
    ds = Pictures(8, size=(16, 16))
    images, _, _ = decode_dataset(ds)
    base = dict(IDENTITY, reprob=0.0)
    clean = augment_batch(images, torch.arange(8), 0, 0, DeviceAugment(img_size=16, **base))
    erased = augment_batch(images, torch.arange(8), 0, 0, DeviceAugment(img_size=16, **dict(base, reprob=1.0)))
    for i in range(8):
        changed = (erased[i] != clean[i]).any(0)  # (16, 16)
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert 0.02 * 256 * 0.5 <= h * w <= 256 / 3 + 16  # one box of 2%..33% of the area (rounded sides)
        assert changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].float().mean() > 0.9


def test_unreadable_images_are_dropped_and_counted():
    ds = Pictures(6, bad={1, 4})
    loader = DeviceLoader(ds, 3, range(6), "cpu", DeviceAugment(img_size=8), seed=0, even=True)
    out = _batches(loader)
    assert [(len(x), d) for x, _, d in out] == [(2, 1), (2, 1)]  # 2 good of 3, already even
    assert out[0][1].tolist() == [0, 2]


def test_sizes_must_agree_or_be_resized_once():
    class Mixed(Pictures):
        def __getitem__(self, i):
            img, t = super().__getitem__(i)
            return (img.resize((20, 14)) if i == 2 else img), t

    with pytest.raises(DataError, match="pre_size"):
        decode_dataset(Mixed(4))
    images, targets, valid = decode_dataset(Mixed(4), pre_size=8)
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.uint8 and valid.all()


def test_build_loader_kinds_and_the_raw_view_of_a_transformed_dataset():
    ds = SeededSamples(Pictures(8, transform=eval_transform(8, crop_pct=1.0)), seed=0)
    kw = dict(batch_size=4, sampler=range(8), device="cpu", augment=DeviceAugment(img_size=8), seed=0)
    loader, kind = build_loader("workers", ds, **kw)
    assert kind == "workers" and isinstance(loader, DataLoader)
    assert next(iter(loader))[0].shape == (4, 3, 8, 8)
    loader, kind = build_loader("auto", ds, **kw)  # 8 tiny images fit in RAM
    assert kind == "device" and isinstance(loader, DeviceLoader)
    assert next(iter(loader))[0].shape == (4, 3, 8, 8)
    with pytest.raises(ConfigError, match="--loader bogus"):
        build_loader("bogus", ds, **kw)
    with pytest.raises(ConfigError, match="dali"):
        build_loader("dali", ds, **kw)


def test_explicit_device_loader_checks_the_decoded_size(monkeypatch):
    """--loader device asked for explicitly: a one-line error before allocating a set that cannot fit."""
    import convnext.data.device_loader as dl

    ds = SeededSamples(Pictures(8, transform=eval_transform(8, crop_pct=1.0)), seed=0)
    kw = dict(batch_size=4, sampler=range(8), device="cpu", augment=DeviceAugment(img_size=8), seed=0)
    need = dl.decoded_bytes(ds)
    assert need > 0
    monkeypatch.setattr(dl, "free_bytes", lambda device: need)  # fits in 100%, not in 80%
    with pytest.raises(ConfigError, match=r"^--loader device: the decoded training set takes \d\.\d MiB \(8 images\), "
                                          r"more than 80% of the \d\.\d MiB of available RAM free; use --loader workers"):
        build_loader("device", ds, **kw)
    monkeypatch.setattr(dl, "free_bytes", lambda device: 2 * need)
    assert build_loader("device", ds, **kw)[1] == "device"


def test_randaug_strings():
    assert DeviceAugment(8).rand_params() == (2, 9.0, 0.5)
    assert DeviceAugment(8, randaug="rand-m7-n3-mstd1-inc1").rand_params() == (3, 7.0, 1.0)
    assert DeviceAugment(8, randaug=None).rand_params() is None
    for bad in ("rand-m9", "augmix-m5", "rand-m9-w0-inc1"):
        with pytest.raises(ConfigError, match="randaug"):
            DeviceAugment(8, randaug=bad).rand_params()
