"""`predict`: classes of images (classification), detections, or class maps, from a `Loaded`.

The network gets exactly what `convnext eval` gives it: the task's eval transform of the
dataset (`Loaded.transform`, `convnext.data.preprocess`) on the image decoded as the dataset
decodes it, and the same post-processing back to the original pixels (detections: the detector's
own, as mmdet's rescale=True: boxes divided by the per-axis resize factor, masks pasted at the
original size and thresholded at >= 0.5, as `convnext eval`; segmentation: sliding-window logits
resized bilinearly to the original size, argmax).

Memory is bounded: classification decodes `batch_size` images at a time; segmentation turns the
low-resolution scores into the full-resolution class map one band of rows at a time (never the
full-resolution score map of every class), and draws it the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..devices import module_device
from ..errors import ConfigError, DataError, UserError
from .images import open_image, read_rgb_tensor
from .loaded import Loaded, as_loaded

__all__ = ["iter_predictions", "predict", "detect", "segment", "label_map_to_full", "predict_dense",
           "seg_display_names", "write_label_map"]

_BAND_ELEMENTS = 1 << 23  # floats per band of the full-resolution score map (32 MB)


def iter_predictions(
    target: Any, images: Iterable[Any], *, topk: int = 5, batch_size: int = 32
) -> Iterator[tuple[Any, list[tuple[str, float, int]] | None, str | None]]:
    """(image, [(class name, probability, index)] * k or None, error message or None) per image, in order.

    Images (paths, PIL images, or (3, S, S) tensors already preprocessed by `Loaded.transform`) are
    decoded and run `batch_size` at a time. An image that cannot be read yields its error and the
    others go on.
    """
    import torch
    from PIL import Image

    if topk < 1:
        raise ConfigError(f"--topk {topk}: must be >= 1")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
    loaded = as_loaded(target)
    if loaded.task != "classification":
        raise UserError(f"{loaded.source}: a {loaded.task} model; use predict_dense (or `convnext predict`)")
    model = loaded.model
    num_classes = getattr(model, "num_classes", 0)
    if num_classes <= 0:
        raise UserError(f"{loaded.source or 'model'}: the model has no classifier head; nothing to predict")
    device = module_device(model)
    k = min(topk, num_classes)

    def prepare(item: Any) -> torch.Tensor:
        if isinstance(item, torch.Tensor):
            return item
        return loaded.transform(item if isinstance(item, Image.Image) else open_image(item))

    def run(batch: list) -> Iterator:
        inputs, errors = {}, {}
        for i, item in enumerate(batch):
            try:
                inputs[i] = prepare(item)
            except DataError as e:
                errors[i] = e.args[0]
        if inputs:
            with torch.no_grad():
                probs = model(torch.stack(list(inputs.values())).to(device)).float().softmax(dim=-1)  # (n, C)
            top_p, top_i = probs.topk(k, dim=-1)
            rows = dict(zip(inputs, zip(top_p.tolist(), top_i.tolist())))
        for i, item in enumerate(batch):
            if i in errors:
                yield item, None, errors[i]
            else:
                ps, idx = rows[i]
                names = [loaded.classes[j] if loaded.classes else f"class {j}" for j in idx]
                yield item, list(zip(names, ps, idx)), None

    batch: list = []
    for item in images:
        batch.append(item)
        if len(batch) == batch_size:
            yield from run(batch)
            batch = []
    if batch:
        yield from run(batch)


def predict(target: Any, images: Any, topk: int = 5, batch_size: int = 32) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image, as `convnext predict` prints them.

    Args:
        target: a `Loaded`, a checkpoint path (loaded with `load`), or a model (224px, paper preprocessing).
        images: paths, PIL images or preprocessed (3, S, S) tensors (a single one is accepted too).
        topk: classes per image.
        batch_size: images decoded and run at once (memory is bounded by one batch).

    Raises:
        DataError: an image that cannot be read (the CLI reports it and goes on instead).
    """
    import torch
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, torch.Tensor) and images.ndim == 3):
        images = [images]
    out = []
    for _, top, error in iter_predictions(target, images, topk=topk, batch_size=batch_size):
        if error is not None:
            raise DataError(error)
        out.append([(name, p) for name, p, _ in top])
    return out


# ------------------------------------------------------------------------------------------ dense
def _device(loaded: Loaded):
    return module_device(loaded.model)


def detect(loaded: Loaded, image) -> dict:
    """Detections of one (3, H0, W0) uint8 image in its own pixels, as `convnext eval` computes them
    (`model(images, out_sizes=[(H0, W0)])`): {"boxes" (K, 4) xyxy, "scores" (K,), "labels" (K,) in
    1..C, "mask_probs" (K, 1, H0, W0) or None, "size" (h, w) the network saw}."""
    import torch

    h0, w0 = image.shape[-2:]
    if min(h0, w0) < 2:
        raise DataError(f"image of {w0}x{h0} pixels: too small to detect objects in")
    x = loaded.transform(image)  # the dataset's test-scale resize, float [0, 1]
    h, w = x.shape[-2:]
    with torch.no_grad():
        out = loaded.model([x.to(_device(loaded))], out_sizes=[(int(h0), int(w0))])[0]
    masks = out.get("masks")
    return {"boxes": out["boxes"].detach().float().cpu().reshape(-1, 4), "scores": out["scores"].detach().float().cpu(),
            "labels": out["labels"].cpu(), "mask_probs": masks.detach().float().cpu() if masks is not None else None,
            "size": (h, w)}


def full_masks(mask_probs, size: tuple[int, int], orig: tuple[int, int]):
    """(K, 1, h, w) probabilities -> (K, H0, W0) bool at >= 0.5, after a bilinear resize where they are
    not at the original size yet (the COCO evaluator's rule); `size` is the probabilities' (h, w)."""
    import torch
    import torch.nn.functional as F

    if mask_probs is None or len(mask_probs) == 0:
        return torch.zeros(0, *orig, dtype=torch.bool)
    chunks = []
    for chunk in mask_probs.split(16):  # bound the (16, 1, H0, W0) float buffer
        if tuple(chunk.shape[-2:]) != tuple(orig):
            chunk = F.interpolate(chunk[:, :, :size[0], :size[1]], size=orig, mode="bilinear", align_corners=False)
        chunks.append(chunk[:, 0] >= 0.5)
    return torch.cat(chunks)


def segment_scores(loaded: Loaded, image):
    """Sliding-window class scores (1, K, h, w) of one (3, H0, W0) uint8 image at the base scale,
    as segmentation eval computes them (crop = img_size, stride 2/3 of it)."""
    import torch

    from ..dense.seg_inference import slide_inference

    x = loaded.transform(image.float())[None].to(_device(loaded))  # (1, 3, h, w) normalised
    crop = loaded.img_size
    with torch.no_grad():
        return slide_inference(loaded.model, x, crop=crop, stride=max(crop * 2 // 3, 1),
                               num_classes=len(loaded.classes) or None).float().cpu()


def _bilinear_rows(n_in: int, n_out: int):
    """Source rows and weights of a bilinear resize n_in -> n_out (align_corners=False, PyTorch's rule)."""
    import torch

    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = (src - i0).float()
    return i0, i1, frac


def label_map_to_full(scores, out_size: tuple[int, int], band: int | None = None):
    """argmax of `scores` (1, K, h, w) resized bilinearly to `out_size` (H0, W0) -> (H0, W0) int64,
    computed a band of rows at a time: at most `band` x W0 x K floats exist at once."""
    import torch
    import torch.nn.functional as F

    k, h, w = scores.shape[1:]
    h0, w0 = out_size
    if band is None:
        band = max(1, _BAND_ELEMENTS // max(k * w0, 1))
    if (h, w) == (h0, w0):
        return scores[0].argmax(0)
    i0, i1, frac = _bilinear_rows(h, h0)
    out = torch.empty(h0, w0, dtype=torch.int64)
    for y in range(0, h0, band):
        sl = slice(y, min(y + band, h0))
        f = frac[sl].view(1, 1, -1, 1)
        rows = scores[:, :, i0[sl]] * (1 - f) + scores[:, :, i1[sl]] * f  # (1, K, b, w): rows resampled
        cols = F.interpolate(rows, size=(rows.shape[2], w0), mode="bilinear", align_corners=False)  # then columns
        out[sl] = cols[0].argmax(0)
    return out


def segment(loaded: Loaded, image):
    """(H0, W0) int64 class indices of one (3, H0, W0) uint8 image."""
    return label_map_to_full(segment_scores(loaded, image), tuple(image.shape[-2:]))


def seg_display_names(loaded: Loaded) -> list[str]:
    """Class names to show: the data's names, or, for unnamed classes, the label value on disk
    (ADE-style files store class i as i + 1, 0 being "other")."""
    names = list(loaded.classes or [])
    if names == [str(i) for i in range(len(names))]:
        return [str(i + 1) for i in range(len(names))]
    return names


def write_label_map(pred, path: str | os.PathLike, offset: int = 1) -> None:
    """A class map (H, W) of indices as a PNG in the annotation files' values: index + `offset`
    (1 under reduce_zero_label, as ADE20K: 0 is "other")."""
    import numpy as np
    from PIL import Image

    arr = pred.numpy() if hasattr(pred, "numpy") else np.asarray(pred)
    if arr.size and int(arr.max()) + offset > 255:
        raise UserError(f"{path}: class values above 255 do not fit an 8-bit label PNG")
    Image.fromarray((arr + offset).astype(np.uint8)).save(path)


# --------------------------------------------------------------------------------------- drawing
def _palette(n: int) -> list[tuple[int, int, int]]:
    """A fixed, distinguishable colour per class (tab20 repeated), for boxes, masks and class maps."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(max(n, 1))]


def _font(image_size: tuple[int, int]):
    from PIL import ImageFont

    return ImageFont.load_default(size=max(10, round(min(image_size) / 40)))  # readable at any size


def _legend(img, entries: list[tuple[str, tuple[int, int, int]]]) -> None:
    """Colour swatch + name per entry, top-left, on a dark box (inside the picture: its size is kept)."""
    from PIL import ImageDraw

    if not entries:
        return
    font = _font(img.size)
    draw = ImageDraw.Draw(img)
    pad = max(2, font.size // 4)
    line = font.size + pad
    width = max(draw.textlength(name, font=font) for name, _ in entries) + line + 3 * pad
    draw.rectangle([0, 0, width, pad + line * len(entries)], fill=(0, 0, 0))
    for i, (name, colour) in enumerate(entries):
        y = pad + i * line
        draw.rectangle([pad, y, pad + font.size, y + font.size], fill=colour)
        draw.text((2 * pad + font.size, y), name, fill=(255, 255, 255), font=font)


def draw_segmentation(image, pred, names: list[str], alpha: float = 0.55):
    """The image with the class map blended in (a band of rows at a time) and a legend -> PIL image."""
    import numpy as np
    from PIL import Image

    from ..outputs import printable

    palette = np.array(_palette(len(names)), dtype=np.float32)  # (K, 3)
    rgb = image.permute(1, 2, 0).numpy()  # (H, W, 3) uint8 view
    out = np.empty_like(rgb)
    band = max(1, (1 << 22) // max(rgb.shape[1], 1))
    for y in range(0, rgb.shape[0], band):
        colour = palette[pred[y:y + band].numpy()]  # (b, W, 3)
        out[y:y + band] = (rgb[y:y + band] * (1 - alpha) + colour * alpha).round().astype(np.uint8)
    img = Image.fromarray(out)
    present = pred.unique().tolist()
    _legend(img, [(printable(names[c]), tuple(int(v) for v in palette[c])) for c in present])
    return img


def draw_detections(image, boxes, labels, scores, masks, names: list[str]):
    """Masks (translucent), boxes and "name score" labels sized to the picture -> PIL image."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..outputs import printable

    palette = _palette(len(names))
    colour = [palette[(int(lb) - 1) % len(palette)] for lb in labels]
    rgb = image.permute(1, 2, 0).numpy().astype(np.float32)
    for m, c in zip(masks, colour):
        m = m.numpy()
        rgb[m] = rgb[m] * 0.55 + np.array(c, dtype=np.float32) * 0.45
    img = Image.fromarray(rgb.round().astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = _font(img.size)
    width = max(1, round(min(img.size) / 300))
    for box, lb, s, c in zip(boxes.tolist(), labels, scores, colour):
        draw.rectangle(box, outline=c, width=width)
        text = f"{printable(names[int(lb) - 1]) if 0 < int(lb) <= len(names) else int(lb)} {float(s):.2f}"
        x, y = box[0], max(0, box[1] - font.size - 2)
        draw.rectangle(draw.textbbox((x, y), text, font=font), fill=c)
        draw.text((x, y), text, fill=(255, 255, 255), font=font)
    return img


# ---------------------------------------------------------------------------------- predict_dense
def predict_dense(loaded: Loaded, image_path: str | os.PathLike, output: str | os.PathLike | None = None,
                  json_path: str | os.PathLike | None = None, *, label_map: str | os.PathLike | None = None,
                  score_thresh: float = 0.3) -> dict:
    """Run a detector / segmenter on one image; draw it into `output` (PNG), write `json_path`
    and, for segmentation, `label_map` (PNG of the annotation files' values).

    Detection: boxes (original pixels, xyxy), class names and scores of detections above
    `score_thresh`, masks drawn translucent. Segmentation: a colour-coded class map over the image
    with a legend, and the fraction of pixels of each class.
    """
    image = read_rgb_tensor(image_path, loaded.task)  # (3, H0, W0) uint8, decoded as the dataset does
    h0, w0 = image.shape[-2:]
    if loaded.task == "detection":
        det = detect(loaded, image)
        keep = det["scores"] >= score_thresh
        boxes, labels, scores = det["boxes"][keep], det["labels"][keep], det["scores"][keep]
        names = list(loaded.classes or [])
        label_names = [names[int(lb) - 1] if 0 < int(lb) <= len(names) else str(int(lb)) for lb in labels]
        result = {"image": str(image_path), "task": "detection", "score_thresh": score_thresh,
                  "detections": [{"label": n, "label_index": int(lb), "score": round(float(s), 5),
                                  "box": [round(float(v), 2) for v in b]}
                                 for n, lb, s, b in zip(label_names, labels, scores, boxes)]}
        if output is not None:
            probs = det["mask_probs"][keep] if det["mask_probs"] is not None else None
            masks = full_masks(probs, (h0, w0), (h0, w0))  # pasted at the original size by the detector
            draw_detections(image, boxes, labels, scores, masks, names).save(output)
    else:
        import torch

        pred = segment(loaded, image)
        names = seg_display_names(loaded)
        counts = torch.bincount(pred.flatten(), minlength=len(names)).double() / pred.numel()
        present = pred.unique().tolist()
        result = {"image": str(image_path), "task": "segmentation",
                  "classes": {names[c]: round(float(counts[c]), 4) for c in present}}
        if output is not None:
            draw_segmentation(image, pred, names).save(output)
        if label_map is not None:
            write_label_map(pred, label_map)
            result["label_map"] = str(label_map)
    if output is not None:
        result["output"] = str(output)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result
