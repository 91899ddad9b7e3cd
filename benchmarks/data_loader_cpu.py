"""Training-loader throughput on CPU: today's PIL DataLoader vs the device-resident loader.

Both produce the CIFAR-10 recipe's augmentation (RandomResizedCrop 0.35-1 bicubic, flip,
RandAugment rand-m9-mstd0.5-inc1, Random Erasing 0.25) at 32x32, batch 128, from the same
ImageFolder. Images per second are averaged over whole epochs after one warm-up epoch; the
device loader's one-off decode time is reported separately.

    python benchmarks/data_loader_cpu.py --data /tmp/cifar10 --split test --workers 0 2

`--data` is a folder with `<split>/<class>/*.jpg`; without it the CIFAR-10 test JPEGs are extracted
from ../shared/data/cifar10-test-jpeg.tar.gz into a temporary folder. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from convnext.data import build_dataset, train_transform
from convnext.data.device_loader import DeviceAugment, build_loader
from convnext.train.distributed import SeededSamples, TrainSampler

REPO = Path(__file__).resolve().parents[1]
TARBALL = REPO / ".." / "shared" / "data" / "cifar10-test-jpeg.tar.gz"


def _epochs(loader, sampler, epochs: int) -> list[float]:
    """img/s of each epoch (epoch 0 is the warm-up and is not returned)."""
    rates = []
    for epoch in range(epochs + 1):
        sampler.set_epoch(epoch)
        n, t0 = 0, time.perf_counter()
        for x, _, _ in loader:
            n += len(x)
        if epoch:
            rates.append(n / (time.perf_counter() - t0))
    return rates


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="ImageFolder root (default: extract the CIFAR-10 test JPEGs)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="sub-folder to read")
    p.add_argument("--images", type=int, default=None, help="use only the first N images of a fixed shuffle")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time")
    args = p.parse_args(argv)

    tmp = None
    root = Path(args.data) if args.data else None
    if root is None:
        if not TARBALL.exists():
            p.error(f"no --data and {TARBALL} is absent")
        tmp = tempfile.TemporaryDirectory()
        with tarfile.open(TARBALL) as tar:
            tar.extractall(tmp.name, filter="data")
        root = Path(tmp.name)
    split = "val" if args.split == "test" else "train"
    transform = train_transform(args.img_size, scale=(0.35, 1.0))
    ds = build_dataset(str(root), split, transform)
    if args.images:
        from convnext.data import subset

        ds = subset(ds, args.images)
    seeded = SeededSamples(ds, seed=0)
    sampler = TrainSampler(seeded, args.batch_size, seed=0, drop_last=False)
    aug = DeviceAugment(args.img_size, scale=(0.35, 1.0))
    common = dict(batch_size=args.batch_size, sampler=sampler, device="cpu", augment=aug, seed=0)

    report = {
        "command": "python benchmarks/data_loader_cpu.py " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "images": len(ds), "batch_size": args.batch_size, "img_size": args.img_size, "epochs_timed": args.epochs,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "load_before": os.getloadavg()[0], "loaders": {},
    }
    for workers in args.workers:
        loader, _ = build_loader("workers", seeded, num_workers=workers, generator=torch.Generator(), **common)
        rates = _epochs(loader, sampler, args.epochs)
        report["loaders"][f"workers={workers}"] = {"img_per_s": rates, "mean": sum(rates) / len(rates)}
    t0 = time.perf_counter()
    loader, _ = build_loader("device", seeded, **common)
    decode_s = time.perf_counter() - t0
    rates = _epochs(loader, sampler, args.epochs)
    report["loaders"]["device(cpu)"] = {"img_per_s": rates, "mean": sum(rates) / len(rates), "decode_s": decode_s}
    report["load_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
