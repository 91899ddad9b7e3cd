"""`--loader dali`: NVIDIA DALI reads, decodes and crops image folders; the rest of the recipe runs batched.

For image folders too large to hold decoded (ImageNet), the per-image PIL pipeline in worker
processes caps a GPU run. `DaliLoader` runs the first steps of the paper's training augmentation
(PAPER.md §3.3) in DALI, with two pipelines built per epoch:

  read: fn.readers.file (this epoch's file order, sharded by rank) + the size from each file's header;
  crop: decode of the crop window only (`fn.decoders.image_slice`: nvJPEG, device="mixed", on CUDA;
        DALI's CPU decoders otherwise) -> bicubic antialiased resize to img_size -> horizontal flip,

then hands uint8 (B, 3, S, S) crops to `device_loader.augment_cropped`, the batched torch code of
`--loader device`: RandAugment `rand-m9-mstd0.5-inc1`, Normalize, Random Erasing (pixel mode);
Mixup/CutMix stay in the trainer. DALI has no RandAugment or Random Erasing of timm's semantics.

DALI draws no random number itself. Between the two pipelines, each image's crop window (timm's
RandomResizedCrop: 10 attempts, then the centre-crop fallback) and flip are computed in torch by
`device_loader.crop_window` from its header size and the counter-based uniforms of (seed, epoch,
image) that `--loader device` uses. So an epoch is a pure function of (seed, epoch): nothing depends
on batch size, threads or prefetching; a run resumed at batch k reads the sampler's order from batch
k on and augments every image as the uninterrupted run did; the windows are exactly those `--loader
device` would cut from the same image.

Sharding: the file list of an epoch is every rank's `TrainSampler` order, rank after rank (equal
lengths), read with `shard_id=rank, num_shards=world`: each rank reads exactly its sampler's share.

Where it differs from the PIL pipeline (`pipeline.train_transform`):
- Decoding: nvJPEG / DALI's decoders instead of libjpeg-turbo via Pillow; the IDCT and chroma
  upsampling differ, so pixels may differ by a few grey levels. EXIF orientation is ignored, as by PIL.
- Resampling: DALI's cubic filter, antialiased when downscaling like Pillow's bicubic, but not the
  same kernel arithmetic: pixels differ by a few grey levels (tests/data/test_dali.py measures it).
- Random streams: (seed, epoch, image) hashes, not Python's `random`: the same seed gives other,
  equally distributed, draws than the PIL pipeline (the same as `--loader device`).
- RandAugment and Random Erasing are `--loader device`'s batched versions (see its module notes).
- An unreadable image stops the epoch with a DataError (DALI cannot skip a sample); `--loader
  workers` skips and counts such files.
"""
from __future__ import annotations

import copy
import weakref
from typing import Iterator

import torch
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError, DataError
from .datasets import ImageFolderDataset
from .device_loader import DeviceAugment, _columns, _Draws, augment_cropped, crop_window, sample_uniforms
from .transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DaliLoader", "DaliEvalLoader", "dali_available", "dali_suits", "folder_samples", "CROP_COLUMNS"]

CROP_COLUMNS = 23  # uniforms of `sample_uniforms` for the crop (10 attempts x 2, top, left) and the flip
JPEG_EXTENSIONS = (".jpg", ".jpeg")
INSTALL_HINT = "pip install 'convnext[dali]' (NVIDIA DALI, nvidia-dali-cuda130)"



# The DALI pipelines alive in this process (their worker threads make a fork unsafe: data.worker_context).
LIVE_PIPELINES: weakref.WeakSet = weakref.WeakSet()

def dali_available() -> bool:
    """Whether NVIDIA DALI imports here."""
    try:
        import nvidia.dali  # noqa: F401
    except (ImportError, OSError):  # OSError: a wheel whose shared libraries do not load
        return False
    return True


def _require_dali() -> None:
    if not dali_available():
        raise ConfigError(f"--loader dali needs NVIDIA DALI: {INSTALL_HINT}")


def folder_samples(dataset: Dataset) -> list[tuple[str, int]]:
    """(file path, class index) of every item of `dataset`, in index order.

    `dataset` is an `ImageFolderDataset`, possibly inside torch `Subset`s and the trainer's
    `SeededSamples`; data sets held in memory (digits, CIFAR's torchvision files) have no files."""
    if isinstance(dataset, ImageFolderDataset):
        return list(dataset.samples)
    if isinstance(dataset, Subset):
        inner = folder_samples(dataset.dataset)
        return [inner[int(i)] for i in dataset.indices]
    if hasattr(dataset, "dataset"):  # SeededSamples-like wrappers
        return folder_samples(dataset.dataset)
    raise ConfigError(f"--loader dali (DALI) reads image folders; {type(dataset).__name__} is held in memory: "
                      "use --loader device or workers")


def dali_suits(dataset: Dataset) -> bool:
    """Whether `auto` should stream `dataset` through DALI: a folder of JPEGs, and DALI imports."""
    try:
        samples = folder_samples(dataset)
    except ConfigError:
        return False
    return bool(samples) and all(p.lower().endswith(JPEG_EXTENSIONS) for p, _ in samples) and dali_available()


# ---- helpers ------------------------------------------------------------------------------------------

def _round_half_even(x):
    """Python's / torch's round() on a DALI float64 node (floor(x + 0.5), ties to the even neighbour)."""
    import nvidia.dali.math as dmath

    r = dmath.floor(x + 0.5)
    tie = (r - x) == 0.5
    odd = (r - 2.0 * dmath.floor(r * 0.5)) == 1.0
    return r - (tie & odd)


def _device_id(device: torch.device) -> int | None:
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    if device.type != "cpu":
        raise ConfigError(f"--loader dali runs on CUDA or CPU, not {device.type}")
    return None


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A dense DALI TensorList -> a torch tensor of its own (DALI reuses its buffers): on `device` when
    the list lives on the GPU, else on the CPU."""
    from nvidia.dali.backend import TensorListGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray
    from nvidia.dali.plugin.pytorch.torch_utils import to_torch_type

    t = tensor_list.as_tensor()
    gpu = isinstance(tensor_list, TensorListGPU)
    out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device if gpu else "cpu")
    feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(out.device) if gpu else None)
    return out


def _run(pipe):
    try:
        return pipe.run()
    except RuntimeError as e:  # e.g. a corrupt JPEG: DALI names the operator, the file and the reason
        text = str(e)
        reason = text.split("encountered:", 1)[-1]
        lines = [ln.strip() for ln in reason.splitlines()
                 if ln.strip() and not ln.startswith(("Critical error", "Current pipeline", "C++ context"))]
        raise DataError(f"--loader dali: {' '.join(lines[:3]) or text} (DALI cannot skip an unreadable image; "
                        "--loader workers skips and counts them)") from None


def _decodes(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as f:
            f.load()
        return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


class DaliLoader:
    """Training batches of an image folder through a DALI pipeline, then the batched recipe on `device`.

    Yields `(images float (B, 3, S, S), targets int64 (B,), dropped)` like the trainer's other loaders
    (`dropped` is always 0: DALI reads every file or stops, see the module notes).

    Args:
        dataset: the training set: an `ImageFolderDataset` (inside Subsets / `SeededSamples`); its
            transform is ignored, DALI reads the files.
        batch_size: images per batch.
        sampler: the epoch's order (the trainer's `TrainSampler`: its `epoch`, `rank` and
            `world_size` are used; any other iterable of indices is read as one rank's order).
        device: CUDA (nvJPEG, GPU resize) or CPU (DALI's CPU operators).
        augment: the recipe's settings (`DeviceAugment`: scale, ratio, flip, RandAugment, erasing).
        seed: base seed; image i of epoch e is augmented from (seed, e, i) only.
        num_threads: DALI's CPU threads (the trainer passes --num-workers).
        even: unused (nothing is dropped); kept for the loaders' common signature.
        prefetch: DALI's prefetch queue depth.
    """

    def __init__(self, dataset: Dataset, batch_size: int, sampler, device: torch.device | str,
                 augment: DeviceAugment, seed: int, *, num_threads: int = 2, even: bool = False, prefetch: int = 2):
        _require_dali()
        augment.rand_params()  # validate the RandAugment string now
        samples = folder_samples(dataset)
        self.files = [p for p, _ in samples]
        self.targets = torch.tensor([t for _, t in samples], dtype=torch.long)
        self.batch_size, self.sampler, self.augment, self.seed = batch_size, sampler, augment, seed
        self.device = torch.device(device)
        self.device_id = _device_id(self.device)
        self.num_threads, self.prefetch = max(1, int(num_threads or 1)), prefetch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def _orders(self) -> tuple[list[list[int]], int]:
        """Every rank's order of this epoch (from batch `start_batch` on) and this rank."""
        rank, world = getattr(self.sampler, "rank", 0), getattr(self.sampler, "world_size", 1)
        if world == 1:
            return [[int(i) for i in self.sampler]], 0
        orders = []
        for r in range(world):
            s = copy.copy(self.sampler)
            s.rank = r
            orders.append([int(i) for i in s])
        if len({len(o) for o in orders}) != 1:
            raise DataError(f"--loader dali: the ranks' shares differ in length ({[len(o) for o in orders]})")
        return orders, rank

    def _pipeline(self, orders: list[list[int]], rank: int, epoch: int):
        """Two DALI pipelines: `read` (files + header sizes) feeds `crop` (decode window, resize, flip).

        Between them, in torch, each image's window from its size and its (seed, epoch, index) draws:
        `device_loader.crop_window`, the code of `--loader device`. (Computing it with DALI's arithmetic
        operators instead cost about 30 operators per batch and ran at a third of the speed on CPU.)"""
        import numpy as np
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        bs, aug = self.batch_size, self.augment
        flat = [i for order in orders for i in order]
        seed = (self.seed * 1_000_003 + epoch) % 2**31  # nothing in either pipeline draws from it

        @pipeline_def(batch_size=bs, num_threads=self.num_threads, device_id=None, seed=seed,
                      prefetch_queue_depth=self.prefetch)
        def read_pipe():
            jpegs, index = fn.readers.file(files=[self.files[i] for i in flat], labels=flat, shard_id=rank,
                                           num_shards=len(orders), random_shuffle=False, stick_to_shard=True,
                                           pad_last_batch=True, name="reader")
            return jpegs, index, fn.peek_image_shape(jpegs, adjust_orientation=False)

        reader = read_pipe()
        reader.build()
        LIVE_PIPELINES.add(reader)

        def windows():  # called by `crop` once per batch, in order: batch i of `read` is batch i of `crop`
            jpegs, index, shape = (t.as_tensor() if i else t for i, t in enumerate(reader.run()))
            idx = torch.from_numpy(np.array(index)).view(-1).long()
            hw = torch.from_numpy(np.array(shape))[:, :2].long()  # (B, 2): H, W from the file's header
            d = _Draws(sample_uniforms(self.seed, epoch, idx, CROP_COLUMNS))
            top, left, h, w = crop_window(d, hw[:, 0], hw[:, 1], aug)
            flip = d.take() < aug.hflip
            return (jpegs, torch.stack([top, left], 1).int().numpy(), torch.stack([h, w], 1).int().numpy(),
                    flip.int().numpy(), idx.int().numpy())

        decoder = "mixed" if self.device_id is not None else "cpu"

        @pipeline_def(batch_size=bs, num_threads=self.num_threads, device_id=self.device_id, seed=seed,
                      prefetch_queue_depth=self.prefetch)
        def crop_pipe():
            jpegs, anchor, shape, flip, index = fn.external_source(
                source=windows, num_outputs=5, batch=True,
                dtype=[types.UINT8, types.INT32, types.INT32, types.INT32, types.INT32])
            img = fn.decoders.image_slice(jpegs, anchor, shape, axis_names="HW", device=decoder,
                                          output_type=types.RGB, adjust_orientation=False)
            img = fn.resize(img, size=[aug.img_size, aug.img_size], interp_type=types.INTERP_CUBIC, antialias=True)
            img = fn.crop_mirror_normalize(img, mirror=flip, dtype=types.UINT8, output_layout="CHW")
            return img, index, anchor, shape

        pipe = crop_pipe()
        pipe.build()
        LIVE_PIPELINES.add(pipe)
        return pipe, reader

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This epoch's (uint8 crops (B, 3, S, S) on `device`, data-set indices (B,), windows (B, 4))."""
        epoch = getattr(self.sampler, "epoch", self.epoch)
        orders, rank = self._orders()
        mine = orders[rank]
        if not mine:
            return
        pipe, reader = self._pipeline(orders, rank, epoch)
        cpu = torch.device("cpu")
        try:
            for start in range(0, len(mine), self.batch_size):
                expected = torch.tensor(mine[start : start + self.batch_size], dtype=torch.long)
                try:
                    crops, index, anchor, shape = _run(pipe)
                except DataError as e:  # name the file: DALI's message may not (prefetching: look ahead)
                    ahead = mine[start : start + (self.prefetch + 1) * self.batch_size]
                    bad = next((self.files[i] for i in ahead if not _decodes(self.files[i])), None)
                    raise DataError(f"{e}; unreadable: {bad}" if bad else str(e)) from None
                n = len(expected)
                index = _to_torch(index, cpu).view(-1)[:n].long()
                if not torch.equal(index, expected):  # DALI's shard must be the sampler's share, in order
                    raise RuntimeError(f"DALI reader out of step with the sampler at batch {start // self.batch_size}")
                window = torch.cat([_to_torch(anchor, cpu), _to_torch(shape, cpu)], 1)[:n].long()
                yield _to_torch(crops, self.device)[:n].to(self.device), index, window
        finally:
            del pipe, reader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        epoch = getattr(self.sampler, "epoch", self.epoch)
        cols = _columns(r[0] if (r := self.augment.rand_params()) else 0)
        for crops, index, _ in self.batches():
            dev_idx = index.to(self.device)
            d = _Draws(sample_uniforms(self.seed, epoch, dev_idx, cols))
            d.take(CROP_COLUMNS)  # the crop window and flip, drawn before DALI cut the images
            x = augment_cropped(crops.float(), d, self.augment)
            yield x, self.targets[index].to(self.device), 0


class DaliEvalLoader:
    """The paper's test-time preprocessing (`transforms.eval_transform`) in DALI, for image folders.

    Below 384: bicubic (antialiased) resize of the shorter side to int(size / crop_pct) (the longer
    side truncated as torchvision does), centre crop `size` (torchvision's rounding); at >= 384 a
    square warp. Yields (normalised float (B, 3, S, S), targets (B,)) on `device`, in data-set order.
    """

    def __init__(self, dataset: Dataset, batch_size: int, img_size: int, device: torch.device | str = "cpu",
                 crop_pct: float | None = None, num_threads: int = 2):
        _require_dali()
        samples = folder_samples(dataset)
        self.files = [p for p, _ in samples]
        self.targets = torch.tensor([t for _, t in samples], dtype=torch.long)
        if crop_pct is None:
            crop_pct = 1.0 if img_size >= 384 else DEFAULT_CROP_PCT
        if not 0 < crop_pct <= 1:
            raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.batch_size, self.img_size, self.crop_pct = batch_size, img_size, crop_pct
        self.device = torch.device(device)
        self.device_id, self.num_threads = _device_id(self.device), max(1, int(num_threads or 1))

    def __len__(self) -> int:
        return -(-len(self.files) // self.batch_size)

    def _pipeline(self):
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        s = self.img_size

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id, seed=0)
        def eval_pipe():
            jpegs, index = fn.readers.file(files=self.files, labels=list(range(len(self.files))),
                                           random_shuffle=False, pad_last_batch=True, name="reader")
            img = fn.decoders.image(jpegs, device="mixed" if self.device_id is not None else "cpu",
                                    output_type=types.RGB, adjust_orientation=False)
            if self.crop_pct == 1.0:  # square warp
                img = fn.resize(img, size=[s, s], interp_type=types.INTERP_CUBIC, antialias=True)
                return fn.crop_mirror_normalize(img, dtype=types.UINT8, output_layout="CHW"), index
            hw = fn.cast(fn.peek_image_shape(jpegs, adjust_orientation=False), dtype=types.FLOAT64)
            h, w = hw[0], hw[1]
            r = float(int(s / self.crop_pct))
            portrait = w <= h  # torchvision: the shorter side becomes r, the longer int(r * long / short)
            nh = portrait * dmath.floor(r * h / w) + (1 - portrait) * r
            nw = portrait * r + (1 - portrait) * dmath.floor(r * w / h)
            img = fn.resize(img, size=fn.cast(fn.stack(nh, nw), dtype=types.FLOAT), interp_type=types.INTERP_CUBIC,
                            antialias=True)
            top, left = _round_half_even((nh - s) * 0.5), _round_half_even((nw - s) * 0.5)
            img = fn.slice(img, fn.cast(fn.stack(top, left), dtype=types.INT32), [s, s], axis_names="HW")
            return fn.crop_mirror_normalize(img, dtype=types.UINT8, output_layout="CHW"), index

        pipe = eval_pipe()
        pipe.build()
        LIVE_PIPELINES.add(pipe)
        return pipe

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pipe = self._pipeline()
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, -1, 1, 1)
        try:
            for start in range(0, len(self.files), self.batch_size):
                n = min(self.batch_size, len(self.files) - start)
                crops, index = _run(pipe)
                x = _to_torch(crops, self.device)[:n].to(self.device)
                index = _to_torch(index, torch.device("cpu")).view(-1)[:n].long()
                yield (x.float() / 255 - mean) / std, self.targets[index].to(self.device)
        finally:
            del pipe

