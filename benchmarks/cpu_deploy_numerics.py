"""Numerics of the CPU deployment paths on real images: bf16 and int8 against fp32.

Trains ConvNeXt-atto on CIFAR-10 (32 px, a few epochs; a model that has learnt something, so
that top-1 and its change mean something), saves it, then on held-out CIFAR-10 test JPEGs
reports top-1 of fp32, bf16 (`fast_cpu_model`, each candidate path) and int8 (PT2E), their
top-1 agreement with fp32 and the logit differences. docs/benchmarks.md quotes its output.

    python benchmarks/cpu_deploy_numerics.py --data ../shared/data --out /tmp/deploy_numerics
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from convnext.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from convnext.deploy.cpu import fast_cpu_model
from convnext.deploy.features import cpu_features
from convnext.deploy.int8 import load_int8, quantize_int8, save_int8
from convnext.models import create_model


def read_split(tar_path: Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(N, 3, 32, 32) normalised float images, (N,) labels, class names from an ImageFolder tarball."""
    images, labels, classes = [], [], {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            if not m.isfile() or not m.name.endswith(".jpg"):
                continue
            cls = m.name.split("/")[-2]
            label = classes.setdefault(cls, len(classes))
            img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            images.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(32, 32, 3))
            labels.append(label)
    x = torch.stack(images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    x, y = (x - mean) / std, torch.tensor(labels)
    if limit is not None:
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:limit]
        x, y = x[idx], y[idx]
    return x, y, sorted(classes, key=classes.get)


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int = 128) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=10, drop_path_rate=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * (len(y) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    step, start = 0, time.time()
    for epoch in range(epochs):
        order = torch.randperm(len(y))
        for i in range(len(y) // batch):
            idx = order[i * batch : (i + 1) * batch]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)  # horizontal flip
            pad = F.pad(xb, (4, 4, 4, 4), mode="reflect")  # random 32x32 crop of the 4-px padded image
            dx, dy = torch.randint(0, 9, (2,)).tolist()
            xb = pad[:, :, dy : dy + 32, dx : dx + 32]
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                print(f"epoch {epoch} step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)",
                      flush=True)
    return model.eval()


@torch.no_grad()
def logits(fn, x: torch.Tensor, batch: int = 100) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]).float() for i in range(0, len(x), batch)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="/tmp/deploy_numerics")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-images", type=int, default=50000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--calib-images", type=int, default=256)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the trained model is reused only by a run with the same training settings
    ckpt = out / f"atto_cifar10_e{args.epochs}_n{args.train_images}.pt"
    xt, yt, classes = read_split(Path(args.data) / "cifar10-test-jpeg.tar.gz", args.test_images + args.calib_images)
    x_cal, x_test, y_test = xt[: args.calib_images], xt[args.calib_images :], yt[args.calib_images :]
    if ckpt.exists():
        model = create_model("convnext_atto", num_classes=10)
        model.load_state_dict(torch.load(ckpt, weights_only=True))
        model.eval()
    else:
        x, y, _ = read_split(Path(args.data) / "cifar10-train-jpeg.tar.gz", args.train_images)
        model = train(x, y, args.epochs)
        torch.save(model.state_dict(), ckpt)
    ref = logits(model, x_test)
    report = {"test_images": len(y_test), "calibration_images": args.calib_images, "classes": classes,
              "train_epochs": args.epochs, "train_images": args.train_images,
              "fp32_top1": 100 * (ref.argmax(1) == y_test).float().mean().item(), "paths": {}}

    def compare(name, got):
        report["paths"][name] = {
            "top1": 100 * (got.argmax(1) == y_test).float().mean().item(),
            "top1_agreement_with_fp32": 100 * (got.argmax(1) == ref.argmax(1)).float().mean().item(),
            "max_abs_logit_diff": (got - ref).abs().max().item(),
            "mean_abs_logit_diff": (got - ref).abs().mean().item(),
            "max_abs_logit_fp32": ref.abs().max().item(),
        }
        print(name, json.dumps(report["paths"][name]), flush=True)

    for cand in ("eager", "jit", "compile"):
        compare(f"bf16 {cand}", logits(fast_cpu_model(model, "bf16", 100, 32, candidates=(cand,)), x_test))
    mixed_modes = (False, True) if cpu_features().native_bf16 else (False,)  # True: what load_int8 picks there
    for convs in (False, True):  # Linears only (the default), and the convolutions too
        program = quantize_int8(model, [x_cal[i : i + 32] for i in range(0, len(x_cal), 32)], 32,
                                quantize_convs=convs)
        save_int8(program, out / f"atto_int8_convs{int(convs)}.pt2")
        for mixed in mixed_modes:
            q, _ = load_int8(out / f"atto_int8_convs{int(convs)}.pt2", mixed_bf16=mixed)  # compiled: deployed kernels
            compare(f"int8 {'Linears + convolutions' if convs else 'Linears'} (inductor, "
                    f"{'bf16' if mixed else 'fp32'} LN/GELU)", logits(q, x_test))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "paths"}))


if __name__ == "__main__":
    main()
