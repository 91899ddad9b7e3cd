"""One entry point on one CPU, one GPU or many nodes: torchrun's environment decides.

`torchrun --nproc_per_node=G [--nnodes=N --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT] -m convnext train ...`
sets RANK / WORLD_SIZE / LOCAL_RANK; without them the run is a single process. NCCL on GPUs, gloo
on CPU. Only rank 0 writes files; metrics are summed across ranks before they are reported.
"""
from __future__ import annotations

import gc
import hashlib
import os
import random
import sys
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "wrap_model", "all_reduce_sum", "barrier",
           "TrainSampler", "ShardSampler", "SeededSamples"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    from ..devices import resolve_device

    dev = resolve_device(device)  # None = cuda if available, else cpu; one-line errors for tpu, cuda without GPU
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Destroy the process group while the interpreter is fully alive.

    FSDP's DeviceMesh holds the process group, and DTensor's global caches hold the mesh: left
    alone they keep the group alive until interpreter shutdown, where gloo's worker threads can
    abort the process (seen as a SIGABRT after a finished run). Empty them, collect, then destroy.
    """
    if dist.is_initialized():
        _release_dtensor_caches()
        gc.collect()
        dist.destroy_process_group()


def _release_dtensor_caches() -> None:
    """Clear every `functools` cache of the `torch.distributed.tensor` modules (and their classes).

    The caches are private to torch and change between releases, so this is generic and best
    effort, plus the C++ fast-path sharding cache and the redistribute-planner cache where present.
    """
    if "torch.distributed.tensor" not in sys.modules:  # no FSDP / DTensor in this run
        return
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("torch.distributed.tensor"):
            continue
        for obj in list(vars(module).values()):
            candidates = [obj]
            if isinstance(obj, type) and obj.__module__ == name:
                candidates += [getattr(v, "__func__", v) for v in vars(obj).values()]
            for c in candidates:
                clear = getattr(c, "cache_clear", None)
                if callable(clear) and not isinstance(c, type):
                    try:
                        clear()
                    except Exception:  # noqa: BLE001 - a cache that cannot be cleared just stays
                        pass
    if hasattr(torch._C, "_clear_DTensor_sharding_propagator_cache"):
        torch._C._clear_DTensor_sharding_propagator_cache()
    planner = sys.modules.get("torch.distributed.tensor._redistribute")
    if planner is not None and hasattr(planner, "clear_redistribute_planner_cache"):
        planner.clear_redistribute_planner_cache()


def wrap_model(model: nn.Module, info: DistInfo, fsdp: bool = False) -> nn.Module:
    """DDP (or FSDP, sharding every Block) across the process group; identity on one process.

    FSDP shards `model` in place (and returns it); DDP returns a wrapper around it.
    """
    if not info.enabled:
        return model
    if fsdp:
        # FSDP2 (`fully_shard`): one shard group per Block, then the rest of the model. Parameters
        # become DTensors under their original names; works with NCCL and with gloo on CPU.
        from torch.distributed.fsdp import fully_shard

        from ..models.layers import Block

        # A Block returns its (B, H, W, C) result permuted back to (B, C, H, W): a view, which FSDP2
        # warns about in case a caller writes into it in place. Nothing does (the next Block reads it
        # as its shortcut; our in-place residual adds write into fresh branch tensors), and the
        # gloo test proves FSDP gradients equal a single process's, so the warning is noise here.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPBlock\) returned a view tensor")
        for module in model.modules():
            if isinstance(module, Block):
                fully_shard(module)
        fully_shard(model)
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over all ranks (no-op on one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class TrainSampler(Sampler[int]):
    """Shuffled, rank-sharded indices for one epoch, reproducible from (seed, epoch).

    Each rank takes every world_size-th index of one global permutation, so a global batch of
    B = world_size x b images holds exactly the images of a single-process batch of B: the same
    run gives the same weights on 1 or N processes. The tail that does not fill a whole global
    batch is dropped with `drop_last` (the official recipe); otherwise it becomes one short last
    batch per rank, of equal size on every rank (at least 2 images, for BatchNorm, and a multiple
    of `multiple`, e.g. 2 for Mixup pairs), padded with images from the start of the permutation.
    `start_batch` skips batches already trained before a mid-epoch interrupt.
    """

    def __init__(self, dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 drop_last: bool = True, multiple: int = 1):
        self.n = len(dataset)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.drop_last, self.multiple = drop_last, multiple
        self.epoch, self.start_batch = 0, 0

    @property
    def full_batches(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    @property
    def tail_per_rank(self) -> int:
        """Images in the short last batch of each rank (0 when there is none)."""
        tail = self.n - self.full_batches * self.batch_size * self.world_size
        if self.drop_last or tail == 0:
            return 0
        size = max(-(-tail // self.world_size), min(2, self.batch_size))
        return -(-size // self.multiple) * self.multiple

    @property
    def batches_per_epoch(self) -> int:
        return self.full_batches + (1 if self.tail_per_rank else 0)

    @property
    def dropped_per_epoch(self) -> int:
        return 0 if self.tail_per_rank else self.n - self.full_batches * self.batch_size * self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        full = self.full_batches * self.batch_size * self.world_size
        mine = perm[:full][self.rank :: self.world_size]  # (full_batches * batch_size,)
        if self.tail_per_rank:
            need = self.tail_per_rank * self.world_size
            tail = perm[full:]
            tail = torch.cat([tail, perm[: need - len(tail)]])  # pad with the first images (duplicates, no drops)
            mine = torch.cat([mine, tail[self.rank :: self.world_size]])
        return mine

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return self.full_batches * self.batch_size + self.tail_per_rank - self.start_batch * self.batch_size


class SeededSamples(Dataset):
    """`dataset` whose random augmentation of sample i in epoch e depends on (seed, e, i) only.

    In DataLoader worker processes every item reseeds Python's, NumPy's and torch's generators
    from that triple before the transform runs. Which worker loads an image then no longer matters,
    so a run resumed mid-epoch (whose batches land on other workers than before) augments every
    image exactly as the uninterrupted run did. In the main process (`num_workers=0`) nothing is
    reseeded: the global stream, saved in every checkpoint, already makes that case exact. Each
    index occurs once per epoch and rank (`TrainSampler`), so the streams never repeat.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:  # before the epoch's workers start (they copy self)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if torch.utils.data.get_worker_info() is not None:
            key = (self.seed * 1_000_003 + self.epoch) * 2_147_483_659 + int(index)
            seed = int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little")
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
        return self.dataset[index]


class ShardSampler(Sampler[int]):
    """Evaluation: rank r takes indices r, r + W, ... (no padding, so every image counts once)."""

    def __init__(self, dataset: Dataset, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, len(dataset), world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
