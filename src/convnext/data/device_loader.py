"""A device-resident training loader: decode once, augment whole batches on the device.

For data sets that fit in (device) memory, such as digits, CIFAR or a small ImageFolder, the
per-image PIL pipeline of `pipeline.train_transform` is the bottleneck of a GPU run. `DeviceLoader`
decodes every image once into one uint8 tensor (N, 3, H, W) on the device and runs the paper's
training augmentation (PAPER.md §3.3) on each batch with batched tensor ops:

  RandomResizedCrop (bicubic) -> horizontal flip -> RandAugment `rand-m9-mstd0.5-inc1`
  -> ToTensor + Normalize -> Random Erasing (pixel mode); Mixup/CutMix stay in the trainer.

Every random draw of image i in epoch e is a counter-based hash of (seed, e, i, draw), so a batch
does not depend on which other images share it: a run resumed mid-epoch augments every image
exactly as the uninterrupted run did, on any device and batch size.

Where it differs from the PIL pipeline (same op set, probabilities and magnitude semantics as timm):
- Images of different sizes are resized once, at decode time, to a square `pre_size` (shorter side
  to `pre_size`, bicubic, centre crop). The crop then samples from that square, so the outer parts
  of non-square images are never seen. With one image size (CIFAR, digits) nothing is resized.
- Resampling (crop, rotate, shear, translate) is `F.grid_sample` bicubic without antialiasing;
  PIL's bicubic antialiases when it downscales, so strong downscaling crops alias more here.
- Colour ops are written after Pillow's formulas on integer-valued tensors; results may differ from
  Pillow by one grey level where Pillow rounds differently (blends, the sharpness filter).
- The random streams are not Python's `random`: the same seed gives other (equally distributed) draws.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError, DataError
from .transforms import IMAGENET_MEAN, IMAGENET_STD, to_rgb

__all__ = ["DeviceAugment", "DeviceLoader", "decode_dataset", "build_loader", "LOADER_KINDS"]

LOADER_KINDS = ("auto", "workers", "device", "dali")

# The 15 ops of timm's `_RAND_INCREASING_TRANSFORMS` (the `inc1` set), in timm's order.
RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)


@dataclasses.dataclass(frozen=True)
class DeviceAugment:
    """The training augmentation, with the arguments of `pipeline.train_transform`.

    `randaug` accepts timm's `rand-m<M>-n<N>-mstd<S>-inc1` strings (inc1: the "increasing" op set,
    the only one implemented here) or None.
    """

    img_size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaug: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def rand_params(self) -> tuple[int, float, float] | None:
        """(num_layers, magnitude, magnitude_std) of `randaug`, or None when it is off."""
        if not self.randaug:
            return None
        parts = self.randaug.split("-")
        if parts[0] != "rand":
            raise ConfigError(f"randaug {self.randaug!r}: the device loader implements RandAugment ('rand-...') only")
        n, m, mstd, inc = 2, 10.0, 0.0, 0
        for p in parts[1:]:
            key = p.rstrip("0123456789.")
            try:
                value = float(p[len(key):])
            except ValueError:
                raise ConfigError(f"randaug {self.randaug!r}: cannot read {p!r}") from None
            if key == "m":
                m = value
            elif key == "n":
                n = int(value)
            elif key == "mstd":
                mstd = value
            elif key == "inc":
                inc = int(value)
            else:
                raise ConfigError(f"randaug {self.randaug!r}: option {key!r} is not supported by the device loader")
        if not inc:
            raise ConfigError(f"randaug {self.randaug!r}: the device loader implements the 'inc1' op set only")
        return n, m, mstd


# ---- counter-based random numbers ---------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32  # int64 products wrap; the low 32 bits are exact
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    return int(_mix32(torch.tensor([x & _MASK32]))[0])


def sample_uniforms(seed: int, epoch: int, indices: torch.Tensor, count: int) -> torch.Tensor:
    """(len(indices), count) uniforms in [0, 1), a pure function of (seed, epoch, index, column)."""
    base = _mix32_int(_mix32_int(seed) ^ (epoch * 0x9E3779B9))
    keys = _mix32((indices.long() * 0x85EBCA6B + base) & _MASK32)  # (B,)
    cols = torch.arange(count, device=indices.device) * 0xC2B2AE35  # (count,)
    bits = _mix32((keys[:, None] ^ cols[None, :]) & _MASK32)
    return (bits >> 8).float() / 2.0**24  # exact in float32


class _Draws:
    """Hands out consecutive columns of the (B, K) uniforms; one column per random decision."""

    def __init__(self, u: torch.Tensor):
        self.u, self.i = u, 0

    def take(self, n: int = 1) -> torch.Tensor:
        out = self.u[:, self.i : self.i + n]
        self.i += n
        return out if n > 1 else out[:, 0]


# Columns used per image: crop 10 attempts x 2 + 2, flip 1, RandAugment 5 per layer, erasing 1 + 20 + 2 + 1.
def _columns(num_layers: int) -> int:
    return 22 + 1 + 5 * num_layers + 24


def _randint(u: torch.Tensor, low: torch.Tensor | int, high: torch.Tensor | int) -> torch.Tensor:
    """Integers in [low, high] (inclusive, like `random.randint`) from uniforms u."""
    span = torch.as_tensor(high - low + 1, device=u.device)
    return low + torch.minimum((u * span).floor().long(), span - 1)


def _box_params(d: _Draws, h, w, area_range, log_ratio, strict: bool):
    """Ten vectorised attempts of timm's box sampling; first fitting attempt per image.

    `h`, `w`: the image size, ints (one for the batch) or (B,) int64 tensors (one per image).
    Returns (top, left, box_h, box_w, found) as (B,) tensors. `strict` uses `<` (Random Erasing),
    otherwise `<=` (RandomResizedCrop)."""
    u = d.take(20).view(-1, 10, 2)
    hh, ww = (h[:, None], w[:, None]) if torch.is_tensor(h) else (h, w)  # against the 10 attempts
    target = (area_range[0] + (area_range[1] - area_range[0]) * u[..., 0].double()) * (hh * ww)
    aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[..., 1].double())
    bw = torch.sqrt(target * aspect).round().long()  # Python's round(): half to even, like torch
    bh = torch.sqrt(target / aspect).round().long()
    ok = (bw < ww) & (bh < hh) if strict else (bw <= ww) & (bh <= hh)
    found = ok.any(1)
    first = ok.long().argmax(1)  # index of the first fitting attempt (0 when none)
    bh, bw = bh.gather(1, first[:, None])[:, 0], bw.gather(1, first[:, None])[:, 0]
    ut, ul = d.take(2).unbind(1)
    top, left = _randint(ut, 0, h - bh), _randint(ul, 0, w - bw)
    return top, left, bh, bw, found


# ---- geometric ops --------------------------------------------------------------------------------

def _warp(x: torch.Tensor, mat: torch.Tensor, out_hw: tuple[int, int], fill: torch.Tensor | None) -> torch.Tensor:
    """Resample x (B, C, H, W) float at positions mat @ (x_out, y_out, 1) (pixel centres at +0.5), bicubic.

    `mat` (B, 2, 3) maps output pixel coordinates to input ones, like PIL's AFFINE data. Positions
    outside the input read `fill` (C,) (0 when None), rounded to integers like PIL's uint8 output.
    """
    b, _, h, w = x.shape
    oh, ow = out_hw
    ys = torch.arange(oh, device=x.device, dtype=torch.float32) + 0.5
    xs = torch.arange(ow, device=x.device, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (oh, ow)
    pts = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(1, -1, 3)  # (1, oh*ow, 3)
    src = pts @ mat.float().transpose(1, 2)  # (B, oh*ow, 2) input pixel coordinates
    grid = torch.stack([src[..., 0] / w * 2 - 1, src[..., 1] / h * 2 - 1], -1).view(b, oh, ow, 2)
    shift = fill.view(1, -1, 1, 1) if fill is not None else 0.0
    out = F.grid_sample(x - shift, grid, mode="bicubic", padding_mode="zeros", align_corners=False) + shift
    return out.round_().clamp_(0, 255)


def _affine_rows(a, b, c, d, e, f) -> torch.Tensor:
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1)], 1)  # (B, 2, 3)


def _geometric(name: str, x: torch.Tensor, level: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """timm's Rotate / ShearX / ShearY / TranslateXRel / TranslateYRel at signed level in [-1, 1]."""
    h, w = x.shape[-2:]
    one, zero = torch.ones_like(level), torch.zeros_like(level)
    if name == "Rotate":  # PIL rotate(deg): counter-clockwise about the centre
        a = -torch.deg2rad(level * 30.0)
        cos, sin = torch.cos(a), torch.sin(a)
        cx, cy = w / 2.0, h / 2.0
        mat = _affine_rows(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    elif name == "ShearX":
        mat = _affine_rows(one, level * 0.3, zero, zero, one, zero)
    elif name == "ShearY":
        mat = _affine_rows(one, zero, zero, level * 0.3, one, zero)
    elif name == "TranslateXRel":
        mat = _affine_rows(one, zero, level * 0.45 * w, zero, one, zero)
    else:  # TranslateYRel
        mat = _affine_rows(one, zero, zero, zero, one, level * 0.45 * h)
    return _warp(x, mat, (h, w), fill)


# ---- colour ops (x: (n, 3, H, W) float holding integers 0..255) ------------------------------------

def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's convert("L"): (R*19595 + G*38470 + B*7471 + 2^15) >> 16, shape (n, 1, H, W)."""
    r, g, b = x.unbind(1)
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536).unsqueeze(1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Image.blend(degenerate, x, factor): clip, then truncate to uint8."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp_(0, 255).floor_()


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.equalize per channel: lut[i] = (step // 2 + #pixels below i) // step."""
    n, c, h, w = x.shape
    v = x.long().reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, v, torch.ones_like(v))
    last = hist.gather(1, (255 - (hist > 0).long().flip(1).argmax(1, keepdim=True)))  # count of the top bin
    step = (h * w - last) // 255  # (n*c, 1)
    below = hist.cumsum(1) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    out = lut.gather(1, v).view(n, c, h, w).to(x.dtype)
    return torch.where((step > 0).view(n, c, 1, 1), out, x)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0): per channel, map [min, max] to [0, 255]."""
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    scale = 255.0 / (hi - lo).clamp(min=1)
    out = ((x - lo) * scale).floor().clamp(0, 255)
    return torch.where(hi > lo, out, x)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL ImageFilter.SMOOTH ([[1,1,1],[1,5,1],[1,1,1]] / 13); border pixels kept, as in PIL."""
    k = torch.ones(3, 1, 3, 3, device=x.device, dtype=x.dtype)
    k[:, :, 1, 1] = 5
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = (F.conv2d(x, k / 13, groups=3) + 0.5).floor().clamp(0, 255)
    return out


def _colour(name: str, x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """timm's colour ops at magnitude mag (n,) in [0, 10] and random sign (n,) in {-1, 1}."""
    view = (-1, 1, 1, 1)
    if name == "AutoContrast":
        return _autocontrast(x)
    if name == "Equalize":
        return _equalize(x)
    if name == "Invert":
        return 255 - x
    if name == "PosterizeIncreasing":  # keep 4 - int(mag / 10 * 4) bits; 0 bits -> black
        shift = 2.0 ** (8 - (4 - (mag / 10 * 4).floor()))
        return torch.floor(x / shift.view(view)) * shift.view(view) * (shift < 256).view(view)
    if name == "SolarizeIncreasing":  # invert pixels >= 256 - int(mag / 10 * 256)
        thresh = 256 - (mag / 10 * 256).floor().clamp(max=256)
        return torch.where(x >= thresh.view(view), 255 - x, x)
    if name == "SolarizeAdd":  # pixels < 128 get + min(128, int(mag / 10 * 110))
        add = (mag / 10 * 110).floor().clamp(max=128)
        return torch.where(x < 128, (x + add.view(view)).clamp(max=255), x)
    factor = (1.0 + sign * mag / 10 * 0.9).clamp(min=0.1)  # timm's "increasing" enhance level
    if name == "ColorIncreasing":
        return _blend(_gray(x).expand_as(x), x, factor)
    if name == "ContrastIncreasing":
        mean = (_gray(x).mean((1, 2, 3)) + 0.5).floor().view(view)
        return _blend(mean.expand_as(x), x, factor)
    if name == "BrightnessIncreasing":
        return _blend(torch.zeros_like(x), x, factor)
    return _blend(_smooth(x), x, factor)  # SharpnessIncreasing


def _rand_augment(x: torch.Tensor, d: _Draws, params: tuple[int, float, float], fill: torch.Tensor) -> torch.Tensor:
    """timm RandAugment: `num_layers` ops drawn uniformly with replacement, each applied with p=0.5
    at magnitude clip(N(m, mstd), 0, 10), with a random sign for the signed ops."""
    num_layers, m, mstd = params
    for _ in range(num_layers):
        op = _randint(d.take(), 0, len(RAND_OPS) - 1)
        apply = d.take() < 0.5
        u1, u2 = d.take(), d.take()
        gauss = torch.sqrt(-2 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)  # Box-Muller
        mag = (m + mstd * gauss).clamp(0, 10)
        sign = torch.where(d.take() < 0.5, 1.0, -1.0)
        for k, name in enumerate(RAND_OPS):
            idx = torch.nonzero(apply & (op == k))[:, 0]
            if idx.numel() == 0:
                continue
            sub = x.index_select(0, idx)
            if name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
                sub = _geometric(name, sub, (mag * sign / 10).index_select(0, idx), fill)
            else:
                sub = _colour(name, sub, mag.index_select(0, idx), sign.index_select(0, idx))
            x = x.index_copy(0, idx, sub)
    return x


# ---- the loader ------------------------------------------------------------------------------------

def crop_window(d: _Draws, h, w, aug: DeviceAugment):
    """RandomResizedCrop's window per image: timm's 10 attempts, then the centre-crop fallback.

    `h`, `w`: the image size, ints or (B,) int64 tensors (the DALI loader's images differ in size).
    Returns (top, left, height, width) as (B,) int64 tensors."""
    log_ratio = (math.log(aug.ratio[0]), math.log(aug.ratio[1]))
    top, left, ch, cw, found = _box_params(d, h, w, aug.scale, log_ratio, strict=False)
    hd, wd = (torch.as_tensor(v, dtype=torch.float64, device=found.device) for v in (h, w))
    hi, wi = (torch.as_tensor(v, dtype=torch.long, device=found.device) for v in (h, w))
    in_ratio = wd / hd
    fw = torch.where(in_ratio <= max(aug.ratio), wi, (hd * max(aug.ratio)).round().long())
    fh = torch.where(in_ratio < min(aug.ratio), (wd / min(aug.ratio)).round().long(), hi)
    ch, cw = torch.where(found, ch, fh), torch.where(found, cw, fw)
    top, left = torch.where(found, top, (hi - fh) // 2), torch.where(found, left, (wi - fw) // 2)
    return top, left, ch, cw


def augment_batch(images: torch.Tensor, indices: torch.Tensor, epoch: int, seed: int, aug: DeviceAugment) -> torch.Tensor:
    """uint8 (B, 3, H, W) images of data-set `indices` -> augmented, normalised float (B, 3, S, S)."""
    b, _, h, w = images.shape
    rand = aug.rand_params()
    d = _Draws(sample_uniforms(seed, epoch, indices, _columns(rand[0] if rand else 0)))
    top, left, ch, cw = crop_window(d, h, w, aug)
    flip = d.take() < aug.hflip  # (B,)
    s = aug.img_size
    sx, sy = cw.float() / s, ch.float() / s  # input pixels per output pixel
    zero = torch.zeros_like(sx)
    # output (x, y) -> input (left + x * sx, top + y * sy); flipped: left + (s - x) * sx
    mat = _affine_rows(torch.where(flip, -sx, sx), zero, left.float() + torch.where(flip, cw.float(), zero),
                       zero, sy, top.float())
    x = _warp(images.float(), mat, (s, s), None)  # crops lie inside the image: no fill needed
    return augment_cropped(x, d, aug)


def augment_cropped(x: torch.Tensor, d: _Draws, aug: DeviceAugment) -> torch.Tensor:
    """The recipe after crop and flip: float (B, 3, S, S) holding 0..255 -> RandAugment, Normalize, Random Erasing.

    `d` has handed out the crop and flip columns already (the DALI loader crops in DALI, then calls this)."""
    rand = aug.rand_params()
    fill = torch.tensor([min(255, round(255 * v)) for v in aug.mean], device=x.device, dtype=x.dtype)
    if rand is not None:
        x = _rand_augment(x, d, rand, fill)
    mean = torch.tensor(aug.mean, device=x.device).view(1, -1, 1, 1) * 255
    std = torch.tensor(aug.std, device=x.device).view(1, -1, 1, 1) * 255
    x = (x - mean) / std
    if aug.reprob > 0:
        x = _random_erasing(x, d, aug.reprob)
    return x


def _random_erasing(x: torch.Tensor, d: _Draws, prob: float) -> torch.Tensor:
    """timm RandomErasing(prob, mode='pixel', max_count=1) on normalised images, per image."""
    b, c, h, w = x.shape
    erase = d.take() < prob
    top, left, eh, ew, found = _box_params(d, h, w, (0.02, 1 / 3), (math.log(0.3), math.log(1 / 0.3)), strict=True)
    noise_seed = (d.take() * 2**31).long()
    todo = torch.nonzero(erase & found)[:, 0].tolist()  # about prob x B images: a short loop
    for i in todo:
        t, l, hh, ww = int(top[i]), int(left[i]), int(eh[i]), int(ew[i])
        g = torch.Generator(device=x.device).manual_seed(int(noise_seed[i]))
        x[i, :, t : t + hh, l : l + ww] = torch.randn(c, hh, ww, generator=g, device=x.device, dtype=x.dtype)
    return x


def _raw_view(dataset: Dataset) -> Dataset:
    """`dataset` yielding untransformed PIL images: a shallow copy with `transform = None`.

    Unwraps the trainer's `SeededSamples` (`.dataset`) and torch `Subset`s."""
    if isinstance(dataset, Subset):
        out = copy.copy(dataset)
        out.dataset = _raw_view(dataset.dataset)
        return out
    if hasattr(dataset, "dataset") and not hasattr(dataset, "transform"):  # SeededSamples-like wrappers
        return _raw_view(dataset.dataset)
    if not hasattr(dataset, "transform"):
        raise DataError(f"{type(dataset).__name__}: the device loader needs a data set with a `transform` attribute")
    out = copy.copy(dataset)
    out.transform = None
    return out


def _to_uint8(img, pre_size: int | None) -> torch.Tensor:
    """PIL image (any mode) -> uint8 (3, H, W); resized and centre-cropped to pre_size when given."""
    import numpy as np
    from PIL import Image

    img = to_rgb(img)
    if pre_size is not None:
        w, h = img.size
        scale = pre_size / min(w, h)
        nw, nh = max(pre_size, round(w * scale)), max(pre_size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        l, t = (nw - pre_size) // 2, (nh - pre_size) // 2
        img = img.crop((l, t, l + pre_size, t + pre_size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def decode_dataset(dataset: Dataset, pre_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode every image of `dataset` once: (uint8 (N, 3, H, W), targets int64 (N,), valid bool (N,)).

    Unreadable images (`None` items, see `ImageFolderDataset`) become zeros with valid False.
    Without `pre_size` all images must have the same size."""
    raw = _raw_view(dataset)
    n = len(raw)
    images, targets, valid = None, torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool)
    for i in range(n):
        item = raw[i]
        if item is None:
            valid[i] = False
            continue
        t = _to_uint8(item[0], pre_size)
        if images is None:
            images = torch.zeros(n, *t.shape, dtype=torch.uint8)
        elif t.shape != images.shape[1:]:
            raise DataError(
                f"image {i} of the training set is {t.shape[2]}x{t.shape[1]}, image 0 is "
                f"{images.shape[3]}x{images.shape[2]}: the device loader needs one size (pass pre_size to resize once)"
            )
        images[i], targets[i] = t, int(item[1])
    if images is None:
        raise DataError("the training set holds no readable image")
    return images, targets, valid


class DeviceLoader:
    """Batches of augmented images from a decoded, device-resident copy of `dataset`.

    Yields `(images float (B, 3, S, S), targets int64 (B,), dropped)` on `device`, like the trainer's
    DataLoader with `collate_skip_bad`; `dropped` counts unreadable images left out of the batch.

    Args:
        dataset: the training set (its `transform` is ignored; the images are decoded once).
        batch_size: images per batch.
        sampler: yields data-set indices for the current epoch (e.g. the trainer's `TrainSampler`,
            whose `epoch` attribute then seeds the augmentation; otherwise `set_epoch` does).
        device: where the images live and the augmentation runs (CPU works too).
        augment: the augmentation settings.
        seed: base seed; image i of epoch e is augmented from (seed, e, i) only.
        pre_size: resize every image once to this square side (needed when sizes differ).
        even: trim a batch that lost images to an even size (Mixup/CutMix pair images).
    """

    def __init__(self, dataset: Dataset, batch_size: int, sampler, device: torch.device | str, augment: DeviceAugment,
                 seed: int, *, pre_size: int | None = None, even: bool = False):
        augment.rand_params()  # validate the RandAugment string now
        self.batch_size, self.sampler, self.augment, self.seed, self.even = batch_size, sampler, augment, seed, even
        self.device = torch.device(device)
        images, targets, valid = decode_dataset(dataset, pre_size)
        self.images, self.targets, self.valid = images.to(self.device), targets.to(self.device), valid
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        epoch = getattr(self.sampler, "epoch", self.epoch)
        order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            good = idx[self.valid[idx]]
            dropped = len(idx) - len(good)
            if self.even and dropped and len(good) % 2:
                good = good[:-1]
            if len(good) == 0:
                yield torch.empty(0), torch.empty(0, dtype=torch.long), dropped
                continue
            dev_idx = good.to(self.device)
            x = augment_batch(self.images.index_select(0, dev_idx), dev_idx, epoch, self.seed, self.augment)
            yield x, self.targets.index_select(0, dev_idx), dropped


def decoded_bytes(dataset: Dataset, pre_size: int | None = None) -> int:
    """Bytes of the decoded uint8 copy, estimated from the first image."""
    raw = _raw_view(dataset)
    first = next(item for item in (raw[i] for i in range(len(raw))) if item is not None)
    return _to_uint8(first[0], pre_size).numel() * len(raw)


# `--loader device` asked for explicitly may use up to this share of the free memory.
EXPLICIT_FRACTION = 0.8


def free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, or the available RAM for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def build_loader(kind: str, dataset: Dataset, *, batch_size: int, sampler, device: torch.device | str,
                 augment: DeviceAugment, seed: int, num_workers: int = 0, generator: torch.Generator | None = None,
                 even: bool = False, pre_size: int | None = None, memory_fraction: float = 0.25):
    """The training loader of `--loader kind`, and the kind that was built ("workers", "device" or "dali").

    `dataset` is the trainer's training set with its PIL transform (used as is by "workers"; "device"
    decodes the raw images; "dali" reads its image files). "auto" picks "device" when the decoded images
    take at most `memory_fraction` of the device's free memory (CUDA) or of the available RAM (CPU);
    otherwise "dali" on CUDA for a JPEG folder when DALI imports (`convnext.data.dali`), else "workers".
    "device" asked for explicitly is a ConfigError when the decoded images would take more than
    `EXPLICIT_FRACTION` of that free memory (the whole set is allocated at once).
    """
    import functools

    from torch.utils.data import DataLoader

    from .datasets import collate_skip_bad, worker_context

    if kind not in LOADER_KINDS:
        raise ConfigError(f"--loader {kind}: expected one of {', '.join(LOADER_KINDS)}")
    device = torch.device(device)
    if kind == "device":  # asked for explicitly: refuse what cannot fit, before allocating it
        need, free = decoded_bytes(dataset, pre_size), free_bytes(device)
        if need > EXPLICIT_FRACTION * free:
            where = f"{device} memory" if device.type == "cuda" else "available RAM"
            raise ConfigError(f"--loader device: the decoded training set takes {_gib(need)} "
                              f"({len(_raw_view(dataset))} images), more than {EXPLICIT_FRACTION:.0%} of the "
                              f"{_gib(free)} of {where} free; use --loader workers (or auto, which picks a loader "
                              f"that fits)")
    if kind == "auto":
        need, free = decoded_bytes(dataset, pre_size), free_bytes(device)
        if need <= memory_fraction * free:
            kind = "device"
        else:  # too large to hold decoded: DALI streams JPEG folders through nvJPEG, else worker processes
            from .dali import dali_suits

            kind = "dali" if device.type == "cuda" and dali_suits(dataset) else "workers"
    if kind == "dali":
        from .dali import DaliLoader

        return DaliLoader(dataset, batch_size, sampler, device, augment, seed, num_threads=num_workers, even=even), kind
    if kind == "device":
        return DeviceLoader(dataset, batch_size, sampler, device, augment, seed, pre_size=pre_size, even=even), kind
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, generator=generator,
                        collate_fn=functools.partial(collate_skip_bad, even=even), pin_memory=device.type == "cuda",
                        persistent_workers=False, multiprocessing_context=worker_context(num_workers))
    return loader, "workers"
