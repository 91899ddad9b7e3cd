"""Training speed (img/s) for the default thread count against hand-set ones, on this machine.

    python benchmarks/threads.py [--train-images 200] [--repeats 1] [--threads default 1 2]

Writes a small generated image folder (2 classes of random-noise JPEGs, 160x160), then for each
thread setting runs `convnext train --data FOLDER --model convnext_atto --img-size 128 --epochs 1` in
a fresh process (the defaults otherwise: 4 loader workers, adapted to the CPUs) and reports the
training img/s that run wrote to metrics.json. "default" passes no --threads: the trainer's own
choice (max(1, CPUs - loader workers), printed as an `adapted: threads` line). On a shared machine
the numbers move with the load: run it with --repeats 2 or more and read the spread.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def make_folder(root: Path, train_images: int, val_images: int = 20, size: int = 160) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train_images), ("val", val_images)):
        for c, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n // 2):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8) // (2 - c)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.jpg", quality=90)
    return root


def train_speed(data: Path, out: Path, threads: str) -> tuple[float, int, list[str]]:
    """(training img/s, torch threads used, the command) of one 1-epoch run."""
    cmd = [sys.executable, "-m", "convnext", "train", "--data", str(data), "--model", "convnext_atto",
           "--img-size", "128", "--epochs", "1", "--no-progress", "--output", str(out), "--overwrite"]
    if threads != "default":
        cmd += ["--threads", threads]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["train_images_per_sec"], metrics.get("threads"), cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, default=200)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", nargs="+", default=["default", "1", "2"])
    args = p.parse_args(argv)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_folder(Path(tmp) / "data", args.train_images)
        print(f"{cpus} CPU(s); convnext_atto, 128 px, 1 epoch of {args.train_images} images, default loader workers")
        print(f"{'--threads':>10}  {'threads used':>12}  img/s (each repeat)")
        for threads in args.threads:
            speeds, used = [], None
            for _ in range(args.repeats):
                speed, used, _cmd = train_speed(data, Path(tmp) / f"run-{threads}", threads)
                speeds.append(speed)
            print(f"{threads:>10}  {used!s:>12}  " + "  ".join(f"{s:.1f}" for s in speeds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
