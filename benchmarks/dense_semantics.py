"""How much each torchvision-vs-mmdet/mmseg test-time choice moves a dense model's output.

Runs our models twice with the same random weights (every tensor randomised: norms, layer scale,
BatchNorm statistics), once per choice, and prints the agreement:

  detection   anchors="torchvision" (rounded corners, derived strides) vs "mmdet" (float, fixed)
              -> share of the mmdet-anchor detections reproduced (same label, box IoU > 0.99,
              score within 1e-4), and the mean IoU of binary masks pasted by torchvision's rule
              (> 0.5) vs mmdet's (>= 0.5) from the same smooth 28x28 probabilities on those boxes.
              Also: pasting at the original image size (mmdet rescale=True) vs pasting at the
              network input and resizing the probabilities.
  upernet     the old pad-to-32 whole-image inference vs feeding the image as is
              -> max logit difference relative to the largest logit, argmax agreement.

    OMP_NUM_THREADS=2 python benchmarks/dense_semantics.py [--size 512 683] [--backbone convnext_tiny]
        [--head cascade_mask_rcnn --score-thresh 0.01]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

import convnext
from convnext.testing import randomise_
from convnext.dense.detection import paste_masks
from torchvision.models.detection.roi_heads import paste_masks_in_image


randomise = randomise_  # every tensor: norms, layer scale, BatchNorm statistics


def match(a: dict, b: dict) -> torch.Tensor:
    """For each detection of `a`: index of a detection of `b` with the same label, IoU > 0.99 and
    score within 1e-4 (-1 if none)."""
    out = torch.full((len(a["boxes"]),), -1, dtype=torch.long)
    if not len(a["boxes"]) or not len(b["boxes"]):
        return out
    iou = box_iou(a["boxes"], b["boxes"])
    ok = (iou > 0.99) & (a["labels"][:, None] == b["labels"][None]) & \
        ((a["scores"][:, None] - b["scores"][None]).abs() <= 1e-4)
    has = ok.any(1)
    out[has] = (iou * ok).argmax(1)[has]
    return out


def detection(head: str, backbone: str, size: tuple[int, int], images: int, score_thresh: float) -> None:
    name = f"{head}_{backbone}"
    models = {}
    for anchors in ("mmdet", "torchvision"):
        m = convnext.create_model(name, num_classes=80, anchors=anchors, score_thresh=score_thresh).eval()
        randomise(m)
        models[anchors] = m
    g = torch.Generator().manual_seed(0)
    kept = total = 0
    for _ in range(images):
        x = [torch.rand(3, *size, generator=g)]
        with torch.no_grad():
            ref, other = models["mmdet"](x)[0], models["torchvision"](x)[0]
        m = match(ref, other)
        kept += int((m >= 0).sum())
        total += len(m)
    print(f"{name} {size[0]}x{size[1]}, {images} images, score > {score_thresh}: torchvision anchors reproduce "
          f"{kept}/{total} ({100 * kept / max(total, 1):.1f}%) of the mmdet-anchor detections")

    # Mask paste: the same smooth 28x28 probabilities (random-weight masks are noise, unlike a
    # trained model's), an ellipse of random radius per box, pasted both ways on the model's boxes.
    boxes = ref["boxes"]
    if not len(boxes):
        print("no detections for the mask paste comparison")
        return
    c = (torch.arange(28) + 0.5) / 14 - 1  # cell centres in [-1, 1]
    radius = 0.5 + 0.4 * torch.rand(len(boxes), 1, 1, generator=g)
    dist = (c[None, :, None] ** 2 + c[None, None, :] ** 2).sqrt()
    probs = torch.sigmoid((radius - dist) / 0.1)[:, None]  # (K, 1, 28, 28)
    a = paste_masks(probs, boxes, size)[:, 0] >= 0.5
    b = paste_masks_in_image(probs, boxes, size)[:, 0] > 0.5
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    iou = inter[union > 0] / union[union > 0]
    side = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1).sqrt()[union > 0]
    small = side < 64
    print(f"mask paste torchvision vs mmdet, {len(iou)} smooth masks on those boxes: mean IoU {iou.mean():.4f}; "
          f"boxes under 64 px: {iou[small].mean():.4f} ({int(small.sum())} masks)")

    # Evaluation at the original size (here 0.8x the network input, as a 640-px COCO image fed at
    # 800): mmdet pastes there with the boxes scaled; pasting at the input size and resizing the
    # probabilities bilinearly is not the same.
    big = (round(size[0] * 0.8), round(size[1] * 0.8))
    scale = torch.tensor([big[1] / size[1], big[0] / size[0]] * 2)
    a = paste_masks(probs, boxes * scale, big)[:, 0] >= 0.5
    b = F.interpolate(paste_masks(probs, boxes, size), size=big, mode="bilinear", align_corners=False)[:, 0] >= 0.5
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    iou = inter[union > 0] / union[union > 0]
    print(f"paste at the original size vs paste + bilinear resize (x0.8), same masks: mean IoU {iou.mean():.4f}")


def upernet(size: tuple[int, int]) -> None:
    model = convnext.create_model("upernet_convnext_atto", num_classes=150, channels=64, aux_channels=32).eval()
    randomise(model)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    h, w = size
    with torch.no_grad():
        plain = model(x)
        padded = model(F.pad(x, (0, -w % 32, 0, -h % 32)))[..., :h, :w]  # the former whole-image rule
    rel = ((padded - plain).abs().max() / plain.abs().max()).item()
    agree = (padded.argmax(1) == plain.argmax(1)).float().mean().item()
    print(f"upernet_convnext_atto (64-channel heads) {h}x{w}: padded-to-32 vs as-is: max diff {rel:.3f} "
          f"of the largest logit, argmax agreement {100 * agree:.1f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=2, default=(512, 683))
    p.add_argument("--head", default="mask_rcnn", choices=("mask_rcnn", "cascade_mask_rcnn"))
    p.add_argument("--backbone", default="convnext_atto")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--score-thresh", type=float, default=0.05, help="test score threshold (random-weight "
                   "Cascade models average three stages' logits and rarely pass 0.05)")
    args = p.parse_args()
    torch.manual_seed(0)
    upernet(tuple(args.size))
    detection(args.head, args.backbone, tuple(args.size), args.images, args.score_thresh)


if __name__ == "__main__":
    main()
