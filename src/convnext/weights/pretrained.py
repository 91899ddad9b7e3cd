"""Registry of the official pretrained ConvNeXt checkpoints (facebookresearch/ConvNeXt README).

Each entry carries what is needed to use the weights correctly: URL, evaluation resolution, crop
fraction and interpolation (the paper's test-time preprocessing), classifier width, label set and
the top-1 accuracy the official README reports for that file. The FAIR site publishes no checksums,
so `sha256` is None for every entry: the download is then not hash-checked (only `torch.hub`'s
cache is used), and this is said in the log line. Entries are data; add a sha256 once known.

Dense models (detection / segmentation) have entries too: FAIR's own fine-tuned files
(object_detection/ and semantic_segmentation/ READMEs, FAIR naming) and the OpenMMLab zoo's
(mmdet / mmseg `configs/convnext/README.md`, OpenMMLab naming), each with the paper's box AP /
mask AP (Table 3) or single- / multi-scale mIoU (Table 4) of that model and, for the zoo files, the
numbers the zoo reports for its own file. `load_pretrained` loads a dense model's whole file when
one is registered for its name (or for the tag asked), else the backbone's ImageNet weights, and
its report says which.

`load_pretrained` never falls back to random weights: offline, or with `CONVNEXT_NO_DOWNLOAD=1`,
it raises an error that says how to pass a local file instead.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .io import CheckpointError
from .loading import LoadReport, load_checkpoint

__all__ = ["PretrainedWeights", "list_pretrained", "get_pretrained", "load_pretrained", "download_pretrained",
           "pretrained_for_file", "eval_resolution"]

_BASE_URL = "https://dl.fbaipublicfiles.com/convnext/"


@dataclass(frozen=True)
class PretrainedWeights:
    model: str  # registered model name
    tag: str  # in1k | in1k_384 | in22k | in22k_ft_in1k | in22k_ft_in1k_384
    filename: str  # file under https://dl.fbaipublicfiles.com/convnext/
    resolution: int  # evaluation (and fine-tuning) resolution
    num_classes: int  # 1000 (ImageNet-1K) or 21841 (ImageNet-22K)
    label_set: str  # "imagenet-1k" | "imagenet-22k"
    top1: float | None  # ImageNet-1K top-1 from the official README (None for 22K-only heads)
    crop_pct: float = 0.875  # 1.0 (square warp, no crop) at 384
    interpolation: str = "bicubic"
    sha256: str | None = None  # FAIR publishes none; None = download not hash-checked
    # Dense models (detection / segmentation) only:
    task: str = "classification"  # | "detection" | "segmentation"
    source_url: str | None = None  # full URL when the file is not under the FAIR base URL
    box_ap: float | None = None  # paper Table 3 (COCO val2017)
    mask_ap: float | None = None
    miou: float | None = None  # paper Table 4 (ADE20K val), single-scale
    miou_ms: float | None = None  # multi-scale + flip
    zoo_reported: str | None = None  # what the zoo itself reports for this file, when it is not the paper's
    naming: str | None = None  # dense files: backbone naming "fair" | "openmmlab"

    @property
    def url(self) -> str:
        return self.source_url or _BASE_URL + self.filename


def _entries() -> list[PretrainedWeights]:
    out = []
    # ImageNet-1K trained (the 224 files are the EMA weights, saved under the "model" key).
    for size, top1, top1_384 in [("tiny", 82.1, None), ("small", 83.1, None), ("base", 83.8, 85.1),
                                 ("large", 84.3, 85.5)]:
        out.append(PretrainedWeights(f"convnext_{size}", "in1k", f"convnext_{size}_1k_224_ema.pth", 224, 1000,
                                     "imagenet-1k", top1))
        if top1_384 is not None:
            out.append(PretrainedWeights(f"convnext_{size}", "in1k_384", f"convnext_{size}_1k_384.pth", 384, 1000,
                                         "imagenet-1k", top1_384, crop_pct=1.0))
    # ImageNet-22K pre-trained (21841-way head), and fine-tuned on ImageNet-1K at 224 and 384.
    for size, top1, top1_384 in [("tiny", 82.9, 84.1), ("small", 84.6, 85.8), ("base", 85.8, 86.8),
                                 ("large", 86.6, 87.5), ("xlarge", 87.0, 87.8)]:
        ema = "_ema" if size == "xlarge" else ""  # only XL's fine-tuned files carry the suffix
        out += [
            PretrainedWeights(f"convnext_{size}", "in22k", f"convnext_{size}_22k_224.pth", 224, 21841,
                              "imagenet-22k", None),
            PretrainedWeights(f"convnext_{size}", "in22k_ft_in1k", f"convnext_{size}_22k_1k_224{ema}.pth", 224, 1000,
                              "imagenet-1k", top1),
            PretrainedWeights(f"convnext_{size}", "in22k_ft_in1k_384", f"convnext_{size}_22k_1k_384{ema}.pth", 384,
                              1000, "imagenet-1k", top1_384, crop_pct=1.0),
        ]
    # Isotropic, ImageNet-1K. The README lists 78.7 for iso-S (the paper's Table 2 says 79.7).
    for size, top1 in [("small", 78.7), ("base", 82.0), ("large", 82.6)]:
        out.append(PretrainedWeights(f"convnext_isotropic_{size}", "in1k", f"convnext_iso_{size}_1k_224_ema.pth", 224,
                                     1000, "imagenet-1k", top1))
    return out


_MMDET = "https://download.openmmlab.com/mmdetection/v2.0/convnext/"
_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/convnext/"


def _dense_entries() -> list[PretrainedWeights]:
    """The official fine-tuned detection / segmentation files, with the paper's results of each model."""
    out = []
    # FAIR object_detection/README.md: COCO 3x schedule; box AP / mask AP as in PAPER.md Table 3.
    for det, size, pre, box, mask in [("mask_rcnn", "tiny", "1k", 46.2, 41.7),
                                      ("cascade_mask_rcnn", "tiny", "1k", 50.4, 43.7),
                                      ("cascade_mask_rcnn", "small", "1k", 51.9, 45.0),
                                      ("cascade_mask_rcnn", "base", "1k", 52.7, 45.6),
                                      ("cascade_mask_rcnn", "base", "22k", 54.0, 46.9),
                                      ("cascade_mask_rcnn", "large", "22k", 54.8, 47.6),
                                      ("cascade_mask_rcnn", "xlarge", "22k", 55.2, 47.7)]:
        out.append(PretrainedWeights(
            f"{det}_convnext_{size}", f"coco_in{pre}_3x", f"{det}_convnext_{size}_{pre}_3x.pth", 800, 80, "coco",
            None, task="detection", source_url=f"{_BASE_URL}coco/{det}_convnext_{size}_{pre}_3x.pth",
            box_ap=box, mask_ap=mask, naming="fair"))
    # mmdet configs/convnext/README.md (mmcls backbone names); the zoo's own AP beside the paper's.
    for det, size, stem, box, mask, zoo in [
        ("mask_rcnn", "tiny", "mask_rcnn_convnext-t_p4_w7_fpn_fp16_ms-crop_3x_coco/"
         "mask_rcnn_convnext-t_p4_w7_fpn_fp16_ms-crop_3x_coco_20220426_154953-050731f4.pth", 46.2, 41.7, "46.2 / 41.7"),
        ("cascade_mask_rcnn", "tiny", "cascade_mask_rcnn_convnext-t_p4_w7_fpn_giou_4conv1f_fp16_ms-crop_3x_coco/"
         "cascade_mask_rcnn_convnext-t_p4_w7_fpn_giou_4conv1f_fp16_ms-crop_3x_coco_20220509_204200-8f07c40b.pth",
         50.4, 43.7, "50.3 / 43.6"),
        ("cascade_mask_rcnn", "small", "cascade_mask_rcnn_convnext-s_p4_w7_fpn_giou_4conv1f_fp16_ms-crop_3x_coco/"
         "cascade_mask_rcnn_convnext-s_p4_w7_fpn_giou_4conv1f_fp16_ms-crop_3x_coco_20220510_201004-3d24f5a4.pth",
         51.9, 45.0, "51.8 / 44.8")]:
        out.append(PretrainedWeights(
            f"{det}_convnext_{size}", "coco_in1k_3x_mmdet", stem.split("/")[-1], 800, 80, "coco", None,
            task="detection", source_url=_MMDET + stem, box_ap=box, mask_ap=mask,
            zoo_reported=f"box AP / mask AP {zoo} (mmdet zoo)", naming="openmmlab"))
    # FAIR semantic_segmentation/README.md: ADE20K 160K iterations; mIoU ss / ms as in PAPER.md Table 4.
    for size, pre, crop, ss, ms in [("tiny", "1k", 512, 46.0, 46.7), ("small", "1k", 512, 48.7, 49.6),
                                    ("base", "1k", 512, 49.1, 49.9), ("base", "22k", 640, 52.6, 53.1),
                                    ("large", "22k", 640, 53.2, 53.7), ("xlarge", "22k", 640, 53.6, 54.0)]:
        fname = f"upernet_convnext_{size}_{pre}_{crop}x{crop}.pth"
        out.append(PretrainedWeights(
            f"upernet_convnext_{size}", f"ade20k_in{pre}_{crop}", fname, crop, 150, "ade20k", None,
            task="segmentation", source_url=f"{_BASE_URL}ade20k/{fname}", miou=ss, miou_ms=ms, naming="fair"))
    # mmseg configs/convnext/README.md (converted from FAIR's files, mmcls backbone names).
    for size, pre, crop, ss, ms, run, stamp, zoo in [
        ("tiny", "1k", 512, 46.0, 46.7, "tiny_fp16_512x512_160k_ade20k", "20220227_124553-cad485de", "46.11 / 46.62"),
        ("small", "1k", 512, 48.7, 49.6, "small_fp16_512x512_160k_ade20k", "20220227_131208-1b1e394f", "48.56 / 49.02"),
        ("base", "1k", 512, 49.1, 49.9, "base_fp16_512x512_160k_ade20k", "20220227_181227-02a24fc6", "48.71 / 49.54"),
        ("base", "22k", 640, 52.6, 53.1, "base_fp16_640x640_160k_ade20k", "20220227_182859-9280e39b", "52.13 / 52.66"),
        ("large", "22k", 640, 53.2, 53.7, "large_fp16_640x640_160k_ade20k", "20220226_040532-e57aa54d", "53.16 / 53.38"),
        ("xlarge", "22k", 640, 53.6, 54.0, "xlarge_fp16_640x640_160k_ade20k", "20220226_080344-95fc38c2", "53.58 / 54.11")]:
        folder = f"upernet_convnext_{run}"
        stem = f"{folder}_{stamp}"
        out.append(PretrainedWeights(
            f"upernet_convnext_{size}", f"ade20k_in{pre}_{crop}_mmseg", stem + ".pth", crop, 150, "ade20k", None,
            task="segmentation", source_url=f"{_MMSEG}{folder}/{stem}.pth", miou=ss, miou_ms=ms,
            zoo_reported=f"mIoU ss / ms {zoo} (mmseg zoo)", naming="openmmlab"))
    return out


_PRETRAINED: dict[tuple[str, str], PretrainedWeights] = {(w.model, w.tag): w for w in _entries() + _dense_entries()}


def list_pretrained(name: str | None = None) -> list[PretrainedWeights]:
    """Pretrained checkpoints of model `name` (all of them when None)."""
    return [w for w in _PRETRAINED.values() if name is None or w.model == name]


def pretrained_for_file(path: str | os.PathLike) -> PretrainedWeights | None:
    """The registry entry whose official file name `path` has (e.g. `convnext_base_22k_1k_384.pth`),
    so a downloaded official checkpoint is evaluated at its own resolution and crop; else None."""
    name = Path(path).name
    return next((w for w in _PRETRAINED.values() if w.filename == name), None)


def eval_resolution(
    path: str | os.PathLike, train_config: Mapping | None = None, resolution: Mapping | None = None
) -> tuple[int, float | None, str]:
    """(img_size, crop_pct, where it came from) to evaluate checkpoint `path` at when none is given.

    Our training checkpoints record the resolution they were trained at (`train_config`); files
    written by `convnext convert` carry `resolution` ({"img_size", "crop_pct"}) when their source
    had one; official files are recognised by name in the pretrained registry (e.g. the 384px
    fine-tuned ones); anything else is evaluated at 224. crop_pct None means the paper's rule
    (0.875 below 384, no crop from 384).
    """
    tc = train_config if isinstance(train_config, Mapping) else {}
    if tc.get("img_size"):
        return int(tc["img_size"]), tc.get("crop_pct"), "the checkpoint's training config"
    res = resolution if isinstance(resolution, Mapping) else {}
    if isinstance(res.get("img_size"), int) and res["img_size"] > 0:
        return res["img_size"], res.get("crop_pct"), "the checkpoint's metadata"
    entry = pretrained_for_file(path)
    if entry is not None:
        return entry.resolution, entry.crop_pct, f"the pretrained registry ({entry.model}, {entry.tag})"
    return 224, None, "the default"


def get_pretrained(name: str, tag: str | None = None) -> PretrainedWeights:
    """The registry entry for `name` and `tag` (default: the first listed, IN-1K when there is one)."""
    options = list_pretrained(name)
    if not options:
        have = sorted({w.model for w in _PRETRAINED.values()})
        raise CheckpointError(f"no official pretrained weights for {name!r}; available for: {', '.join(have)}. "
                              f"Pass a local file with checkpoint=PATH (CLI: --checkpoint PATH; `convnext train`: --finetune PATH).")
    if tag is None:  # default: the first 1000-class (ImageNet-1K) checkpoint
        return next((w for w in options if w.num_classes == 1000), options[0])
    for w in options:
        if w.tag == tag:
            return w
    raise CheckpointError(f"{name} has no pretrained tag {tag!r}; available: {', '.join(w.tag for w in options)}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_pretrained(weights: PretrainedWeights) -> Path:
    """Path of the checkpoint in torch's hub cache (`torch.hub.get_dir()/checkpoints`), downloading it if needed."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / weights.filename
    how = (f"download {weights.url} yourself and pass it as checkpoint=PATH "
           f"(CLI: --checkpoint PATH; `convnext train`: --finetune PATH), or place it at {cached}")
    if not cached.exists():
        if os.environ.get("CONVNEXT_NO_DOWNLOAD", "") not in ("", "0"):
            raise CheckpointError(f"{weights.model} ({weights.tag}) is not in the cache and downloads are disabled "
                                  f"(CONVNEXT_NO_DOWNLOAD is set): {how}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        if weights.sha256 is None:
            print(f"downloading {weights.url} (no published sha256: not hash-checked)")
        try:  # progress bar from torch.hub; the hash prefix is verified when known
            torch.hub.download_url_to_file(weights.url, str(cached), hash_prefix=weights.sha256, progress=True)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; hash mismatch is a RuntimeError
            raise CheckpointError(
                f"could not download {weights.model} ({weights.tag}): {e}. Offline? Then {how}"
            ) from None
    elif weights.sha256 is not None and _sha256(cached) != weights.sha256:
        raise CheckpointError(f"{cached}: sha256 does not match the registry; delete the file and retry")
    return cached


def load_pretrained(model: nn.Module, name: str, tag: str | None = None, reinit_head: bool = False) -> LoadReport:
    """Load the official pretrained weights of `name` into `model` (see `load_checkpoint`).

    A dense model (detector / UperNet) gets its whole official file when one is registered for
    `name` (`tag` picks which; `list_pretrained(name)`), else, or when `tag` is a tag of its
    backbone (e.g. "in22k"), the backbone's ImageNet weights; `str(report)` says which.

    Args:
        model: the model, built with the same architecture as `name`.
        name: registered model name, e.g. "convnext_tiny" or "upernet_convnext_tiny".
        tag: which checkpoint (`list_pretrained(name)`); default IN-1K (XL: 22K fine-tuned on 1K).
        reinit_head: allow a different number of classes (e.g. 22K weights into a 10-class model).
    """
    from .dense_files import is_dense_model

    if is_dense_model(model):
        own = list_pretrained(name)
        if own and (tag is None or any(w.tag == tag for w in own)):
            weights = get_pretrained(name, tag)
            report = load_checkpoint(model, download_pretrained(weights))
            report.description = f"{report} (official {weights.tag} file of {name})"
            return report
        backbone = _dense_backbone_name(model, name)
        weights = get_pretrained(backbone, tag)
        report = load_checkpoint(model, download_pretrained(weights))  # a classification file: backbone only
        why = f"tag {tag}" if own else f"no official dense file is registered for {name}"
        report.description = f"{report} ({backbone} {weights.tag} ImageNet weights; {why})"
        return report
    weights = get_pretrained(name, tag)
    return load_checkpoint(model, download_pretrained(weights), reinit_head=reinit_head)


def _dense_backbone_name(model: nn.Module, name: str) -> str:
    """The classification model a dense model's backbone is (its config's `backbone`, else read from `name`)."""
    backbone = getattr(model.config, "backbone", None)
    if isinstance(backbone, str):
        return backbone
    return name[name.index("convnext"):] if "convnext" in name else name
