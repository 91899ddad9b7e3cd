"""Detection and segmentation checkpoint files: mmdet, mmseg and our own, read into our dense models.

Which files (PAPER.md §4.1-4.2 models), each told apart by sentinel keys:

    family  model                       heads in the file                           our model
    mmdet   Mask R-CNN ("standard")     roi_head.bbox_head.fc_cls, rpn_head.*       mask_rcnn_<backbone>
    mmdet   Cascade Mask R-CNN          roi_head.bbox_head.{0,1,2}.fc_cls           cascade_mask_rcnn_<backbone>
    mmseg   UperNet (+ FCN aux head)    decode_head.conv_seg, decode_head.psp_modules  upernet_<backbone>

and the backbone in either naming (`convert.DENSE_NAMINGS`): "fair" (FAIR's object_detection/ and
semantic_segmentation/ files, the official block names `dwconv/pwconv1/pwconv2`) or "openmmlab"
(mmcls / mmpretrain `ConvNeXt`: `depthwise_conv/pointwise_conv1/pointwise_conv2`; the mmdet 2.x/3.x
and mmseg 0.x/1.x model zoos and everything their Runners save). The head names are the same in
mmdet 2.x and 3.x and in mmseg 0.x and 1.x. Each is a rule table on the project's one key-map
engine (`convnext/keymap.py`; ours <-> theirs, read both ways, first match wins):

    ours                                             mmdet
    backbone.* (official layout + stage_norms.{i})   backbone.* (`convert.DENSE_BACKBONE`, norm{i})
    neck.inner_blocks.{i}.0.* / layer_blocks.{i}.0.*  neck.lateral_convs.{i}.conv.* / fpn_convs.{i}.conv.*
    rpn.head.conv.0.0.* / cls_logits.* / bbox_pred.*  rpn_head.rpn_conv.* / rpn_cls.* / rpn_reg.*
    roi_heads.box_heads.{s}.convs.{i}.{conv,bn}.*    roi_head.bbox_head.{s}.shared_convs.{i}.{conv,bn}.*
    roi_heads.box_heads.{s}.fcs.{i}.*                roi_head.bbox_head.{s}.shared_fcs.{i}.*
    roi_heads.box_heads.{s}.cls_score.*              roi_head.bbox_head.{s}.fc_cls.*  (background row 0 vs last)
    roi_heads.box_heads.{s}.bbox_pred.*              roi_head.bbox_head.{s}.fc_reg.*
    roi_heads.mask_heads.{s}.convs.{i}.*             roi_head.mask_head.{s}.convs.{i}.conv.*
    roi_heads.mask_heads.{s}.upsample.* / logits.*   roi_head.mask_head.{s}.upsample.* / conv_logits.*
    (Mask R-CNN: mmdet has no stage index `{s}.`; ours is stage 0)

    ours                                             mmseg (EncoderDecoder, UPerHead + FCNHead; ConvModule conv + bn)
    decode_head.ppm.{i}.*                            decode_head.psp_modules.{i}.1.*  ({i}.0 is the pool)
    decode_head.ppm_bottleneck.*                     decode_head.bottleneck.*
    decode_head.{lateral_convs,fpn_convs}.{i}.*      the same
    decode_head.fpn_bottleneck.*                     the same
    decode_head.classifier.conv.*                    decode_head.conv_seg.*
    aux_head.conv.* / aux_head.classifier.conv.*     auxiliary_head.convs.0.* / auxiliary_head.conv_seg.*

`read_dense_file(path)` reads any of these (and our own dense training checkpoints), infers the
registered model from the tensors (backbone depths and widths -> convnext_<size> /
convnextv2_<size>; heads -> mask_rcnn_ / cascade_mask_rcnn_ / upernet_), the number of classes and
the class names (`meta.dataset_meta.classes` of mmengine, `meta.CLASSES` of mmcv 1.x), and returns
the state dict in our layout.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .convert import DENSE_BACKBONE, DENSE_NAMINGS, KeyMap, Rule, dense_naming, translate_state_dict
from .io import CheckpointError, read_checkpoint, unwrap_state_dict

__all__ = ["DenseFile", "read_dense_file", "load_dense", "is_dense_model", "dense_kind", "mmdet_kind",
           "to_dense_layout", "from_dense_layout", "strict_load", "MMDET_HEAD_RULES", "MMSEG_HEAD_RULES", "FAMILIES",
           "DENSE_NAMINGS"]

FAMILIES = ("mmdet", "mmseg")
MMDET_KINDS = ("cascade", "standard")


def _background_first(t: torch.Tensor, to_ours: bool, opts: dict) -> torch.Tensor:
    """Classifier rows (C + 1, ...): mmdet [classes..., background] <-> ours [background, classes...]."""
    return torch.cat([t[-1:], t[:-1]]) if to_ours else torch.cat([t[1:], t[:1]])


# mmdet heads in the Cascade form ({s} = cascade stage); Mask R-CNN's is derived in `_mmdet_heads`.
MMDET_HEAD_RULES: tuple[Rule, ...] = (
    Rule("neck.inner_blocks.{i}.0.{p}", "neck.lateral_convs.{i}.conv.{p}"),  # FPN 1x1 laterals
    Rule("neck.layer_blocks.{i}.0.{p}", "neck.fpn_convs.{i}.conv.{p}"),  # FPN 3x3 outputs
    Rule("rpn.head.conv.0.0.{p}", "rpn_head.rpn_conv.{p}"),
    Rule("rpn.head.cls_logits.{p}", "rpn_head.rpn_cls.{p}"),  # one objectness logit per anchor
    Rule("rpn.head.bbox_pred.{p}", "rpn_head.rpn_reg.{p}"),
    Rule("roi_heads.box_heads.{s}.convs.{i}.conv.{p}", "roi_head.bbox_head.{s}.shared_convs.{i}.conv.{p}"),
    Rule("roi_heads.box_heads.{s}.convs.{i}.bn.{q}", "roi_head.bbox_head.{s}.shared_convs.{i}.bn.{q}"),
    Rule("roi_heads.box_heads.{s}.fcs.{i}.{p}", "roi_head.bbox_head.{s}.shared_fcs.{i}.{p}"),
    Rule("roi_heads.box_heads.{s}.cls_score.{p}", "roi_head.bbox_head.{s}.fc_cls.{p}", _background_first),
    Rule("roi_heads.box_heads.{s}.bbox_pred.{p}", "roi_head.bbox_head.{s}.fc_reg.{p}"),  # 4 per object class
    Rule("roi_heads.mask_heads.{s}.convs.{i}.{p}", "roi_head.mask_head.{s}.convs.{i}.conv.{p}"),
    Rule("roi_heads.mask_heads.{s}.upsample.{p}", "roi_head.mask_head.{s}.upsample.{p}"),  # 2x2/2 deconv
    Rule("roi_heads.mask_heads.{s}.logits.{p}", "roi_head.mask_head.{s}.conv_logits.{p}"),
)

MMSEG_HEAD_RULES: tuple[Rule, ...] = tuple(
    Rule(f"{ours}.{sub}", f"{theirs}.{sub}")
    for ours, theirs in (
        ("decode_head.ppm.{i}", "decode_head.psp_modules.{i}.1"),
        ("decode_head.ppm_bottleneck", "decode_head.bottleneck"),
        ("decode_head.lateral_convs.{i}", "decode_head.lateral_convs.{i}"),
        ("decode_head.fpn_convs.{i}", "decode_head.fpn_convs.{i}"),
        ("decode_head.fpn_bottleneck", "decode_head.fpn_bottleneck"),
        ("aux_head.conv", "auxiliary_head.convs.0"),
    )
    for sub in ("conv.{p}", "bn.{q}")  # ConvModule: conv (no bias with BN) + bn
) + (
    Rule("decode_head.classifier.conv.{p}", "decode_head.conv_seg.{p}"),
    Rule("aux_head.classifier.conv.{p}", "auxiliary_head.conv_seg.{p}"),
)


def _with_backbone(naming: str, heads: tuple[Rule, ...]) -> tuple[Rule, ...]:
    backbone = tuple(Rule(f"backbone.{r.ours}", f"backbone.{r.theirs}", r.fix) for r in DENSE_BACKBONE[naming].rules)
    return backbone + heads


def _mmdet_heads(kind: str) -> tuple[Rule, ...]:
    if kind == "cascade":
        return MMDET_HEAD_RULES
    # Mask R-CNN (StandardRoIHead): one head without mmdet's stage index, our stage 0.
    return tuple(Rule(r.ours.replace("{s}", "0"), r.theirs.replace("{s}.", ""), r.fix) for r in MMDET_HEAD_RULES)


_MAPS: dict[tuple[str, str], KeyMap] = {}
for _naming in DENSE_NAMINGS:
    for _kind in MMDET_KINDS:
        _MAPS[(_kind, _naming)] = KeyMap(f"mmdet-{_kind}-{_naming}", _with_backbone(_naming, _mmdet_heads(_kind)))
    _MAPS[("mmseg", _naming)] = KeyMap(f"mmseg-{_naming}", _with_backbone(_naming, MMSEG_HEAD_RULES))


def _key_map(kind: str, naming: str) -> KeyMap:
    if naming not in DENSE_NAMINGS:
        raise ValueError(f"naming must be one of {DENSE_NAMINGS}, got {naming!r}")
    if kind not in MMDET_KINDS + ("mmseg",):
        raise ValueError(f"dense kind must be one of {MMDET_KINDS + ('mmseg',)}, got {kind!r}")
    return _MAPS[(kind, naming)]


# ------------------------------------------------------------------------------------- detection
def mmdet_kind(sd: Mapping[str, Any]) -> str | None:
    """"cascade" / "standard" for an mmdet Mask R-CNN / Cascade Mask R-CNN ConvNeXt state dict, else None."""
    if "backbone.downsample_layers.0.0.weight" not in sd or "rpn_head.rpn_conv.weight" not in sd:
        return None
    if "roi_head.bbox_head.0.fc_cls.weight" in sd:
        return "cascade"
    return "standard" if "roi_head.bbox_head.fc_cls.weight" in sd else None


def _is_mmseg(sd: Mapping[str, Any]) -> bool:
    return "decode_head.conv_seg.weight" in sd and "backbone.downsample_layers.0.0.weight" in sd


def _ours_kind(sd: Mapping[str, Any]) -> str | None:
    """Our own dense state dicts: "cascade" / "standard" detector or "mmseg"-like UperNet (our names)."""
    if "backbone.stage_norms.0.weight" not in sd:
        return None
    if "decode_head.classifier.conv.weight" in sd:
        return "mmseg"
    if "roi_heads.box_heads.0.cls_score.weight" in sd:
        return "cascade" if "roi_heads.box_heads.1.cls_score.weight" in sd else "standard"
    return None


def dense_kind(sd: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, naming) of a dense state dict: kind "standard" | "cascade" (mmdet) | "mmseg", naming
    "openmmlab" | "fair" | "native" (already our layout); None when it is none of them."""
    kind = mmdet_kind(sd) or ("mmseg" if _is_mmseg(sd) else None)
    if kind is not None:
        return kind, dense_naming(sd)
    kind = _ours_kind(sd)
    return (kind, "native") if kind is not None else None


def to_dense_layout(sd: Mapping[str, torch.Tensor], kind: str, naming: str, source: str = "<state dict>"
                    ) -> dict[str, torch.Tensor]:
    """An mmdet / mmseg state dict of `kind` ("standard" | "cascade" | "mmseg") and `naming` -> ours."""
    family = "mmseg" if kind == "mmseg" else f"mmdet ({kind})"
    return _translate(sd, _key_map(kind, naming), True, f"key(s) of the {family} layout ({naming} naming)", source)


def from_dense_layout(sd: Mapping[str, torch.Tensor], kind: str, naming: str = "openmmlab",
                      source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Our dense state dict -> mmdet ("standard" | "cascade") or mmseg ("mmseg") keys in `naming`."""
    model = "UperNet" if kind == "mmseg" else "detector"
    return _translate(sd, _key_map(kind, naming), False, f"key(s) of our {model}", source)


def _translate(sd, key_map: KeyMap, to_ours: bool, what: str, source: str) -> dict[str, torch.Tensor]:
    try:
        return translate_state_dict(sd, key_map, to_ours=to_ours, opts={"conv_mlp": False},
                                    what=f"{what} have no counterpart")
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _fit_problems(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys missing / without counterpart / of another shape between a model's state dict and `sd`."""
    problems = []
    missing = sorted(set(own) - set(sd))
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {', '.join(missing)}")
    unexpected = sorted(set(sd) - set(own))
    if unexpected:
        problems.append(f"not in the model ({len(unexpected)}): {', '.join(unexpected)}")
    shape = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if shape:
        problems.append(f"shape mismatch ({len(shape)}): " + "; ".join(shape))
    return problems


def strict_load(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a whole-model state dict strictly, or raise a CheckpointError naming every key that is
    missing, has no counterpart, or has another shape."""
    problems = _fit_problems(model.state_dict(), sd)
    if problems:
        raise CheckpointError(f"{source} does not fit this {type(model).__name__}: " + " | ".join(problems))
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


# ------------------------------------------------------------------------------------- the file
@dataclass
class DenseFile:
    """What `read_dense_file` found in a detection / segmentation checkpoint."""

    task: str  # "detection" | "segmentation"
    family: str  # "mmdet" | "mmseg" | "convnext" (our own dense checkpoints)
    layout: str  # "openmmlab" | "fair" | "native" (our own)
    model_name: str  # registered model, read from the tensors (or the one given)
    num_classes: int  # object / semantic classes (detection: without background)
    classes: list[str] | None  # class names stored in the file
    state_dict: dict[str, torch.Tensor]  # in OUR layout: strict-loads into create_model(model_name, ...)
    meta: dict  # the file's `meta` ({} when absent)
    source: str  # path
    overrides: dict = field(default_factory=dict)  # config values read from the tensors (head widths)

    def describe(self) -> str:
        """E.g. "read mmseg checkpoint (OpenMMLab naming): upernet_convnext_tiny, 150 classes"."""
        naming = {"openmmlab": "OpenMMLab naming", "fair": "FAIR naming", "native": "our layout"}[self.layout]
        return f"read {self.family} checkpoint ({naming}): {self.model_name}, {self.num_classes} classes"

    def loaded(self) -> str:
        """The line for a model this file was loaded into, whole."""
        found = self.describe().split(":")[0]  # "read mmseg checkpoint (OpenMMLab naming)"
        return f"{found}: loaded the whole model, {len(self.state_dict)} tensors from {self.source}"


_PREFIX = {"standard": "mask_rcnn_", "cascade": "cascade_mask_rcnn_", "mmseg": "upernet_"}
_WHAT = {"standard": "Mask R-CNN", "cascade": "Cascade Mask R-CNN", "mmseg": "UperNet"}


def _class_names(raw: Mapping[str, Any]) -> list[str] | None:
    meta = raw.get("meta") if isinstance(raw.get("meta"), Mapping) else {}
    ds = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    for names in (ds.get("classes"), meta.get("CLASSES"), raw.get("labels")):
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def _backbone_name(ours: Mapping[str, torch.Tensor]) -> str | None:
    from .loading import infer_config, match_model_name

    backbone = {k[len("backbone."):]: v for k, v in ours.items() if k.startswith("backbone.")}
    try:
        return match_model_name(infer_config(backbone))
    except (KeyError, ValueError, IndexError):
        return None


def _infer_name(kind: str, ours: Mapping[str, torch.Tensor], source: str) -> str:
    from ..models.registry import list_models

    backbone = _backbone_name(ours)
    what = _WHAT[kind]
    if backbone is None:
        raise CheckpointError(f"{source}: a {what} whose backbone (depths and widths) matches no registered "
                              f"ConvNeXt; pass --model NAME (Python: model_name=NAME)")
    name = _PREFIX[kind] + backbone
    known = list_models()
    if any(n.startswith(_PREFIX[kind]) for n in known) and name not in known:
        raise CheckpointError(f"{source}: a {what} on {backbone}, which is not a registered model ({name}); "
                              f"pass --model NAME (Python: model_name=NAME)")
    return name


def _num_classes(kind: str, ours: Mapping[str, torch.Tensor]) -> int:
    if kind == "mmseg":
        return ours["decode_head.classifier.conv.weight"].shape[0]
    return ours["roi_heads.box_heads.0.cls_score.weight"].shape[0] - 1  # + background


def _overrides(kind: str, ours: Mapping[str, torch.Tensor]) -> dict:
    """Head widths read from the tensors (the registered configs hold the official ones)."""
    if kind == "mmseg":
        out = {}
        if "decode_head.ppm_bottleneck.conv.weight" in ours:
            out["channels"] = ours["decode_head.ppm_bottleneck.conv.weight"].shape[0]
        aux = ours.get("aux_head.conv.conv.weight")
        out["aux_channels"] = 0 if aux is None else aux.shape[0]
        return out
    lateral = ours.get("neck.inner_blocks.0.0.weight")
    return {} if lateral is None else {"fpn_channels": lateral.shape[0]}


def read_dense_file(path: str | os.PathLike | Mapping[str, Any], model_name: str | None = None) -> DenseFile | None:
    """Read an mmdet / mmseg (either naming) or our own dense checkpoint; None for any other file.

    Args:
        path: a checkpoint file (or an already loaded checkpoint dict).
        model_name: the registered model to build; None reads it from the tensors.

    Raises:
        CheckpointError: unreadable file, keys outside the map, or an architecture that cannot be
            read from the tensors (the message says to pass --model).
    """
    return _read_dense(path, model_name, need_name=True)


def _read_dense(path, model_name: str | None, need_name: bool, source: str | None = None) -> DenseFile | None:
    if isinstance(path, Mapping):
        source, raw = source or "<state dict>", dict(path)
    else:
        source, raw = str(path), read_checkpoint(path)
    try:
        sd = unwrap_state_dict(raw, source=source)
    except CheckpointError:
        return None
    found = dense_kind(sd)
    if found is None:
        return None
    kind, naming = found
    ours = dict(sd) if naming == "native" else to_dense_layout(sd, kind, naming, source)
    if model_name is None and naming == "native" and isinstance(raw.get("model_name"), str):
        model_name = raw["model_name"]
    wrong = [pre for pre in _PREFIX.values() if model_name and model_name.startswith(pre) and pre != _PREFIX[kind]]
    if wrong and not model_name.startswith(_PREFIX[kind]):  # (cascade_mask_rcnn_ also ends in mask_rcnn_)
        raise CheckpointError(f"{source}: --model {model_name} is not a {_WHAT[kind]}, which this file holds")
    try:
        name = model_name or _infer_name(kind, ours, source)
    except CheckpointError:
        if need_name:
            raise
        name = ""  # loading into a model the caller built: the name is only informative
    meta = raw.get("meta")
    return DenseFile(
        task="segmentation" if kind == "mmseg" else "detection",
        family="convnext" if naming == "native" else ("mmseg" if kind == "mmseg" else "mmdet"),
        layout=naming, model_name=name, num_classes=_num_classes(kind, ours), classes=_class_names(raw),
        state_dict=ours, meta=dict(meta) if isinstance(meta, Mapping) else {}, source=source,
        overrides=_overrides(kind, ours),
    )


_DENSE_ARCHS = ("detection", "upernet")


def is_dense_model(model: torch.nn.Module) -> bool:
    """A detector or UperNet of ours (its config's `arch`)."""
    return getattr(getattr(model, "config", None), "arch", None) in _DENSE_ARCHS


def load_dense(model: torch.nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any], *,
               source: str | None = None) -> tuple[DenseFile | None, str]:
    """Load a checkpoint into one of our dense models: a whole mmdet / mmseg / our dense file
    strictly, or else a classification (backbone) checkpoint into `model.backbone`.

    Returns (the DenseFile or None, a one-line description of what was loaded); raises
    CheckpointError when the file is another dense model or does not fit.
    """
    from .loading import load_backbone

    dense = _read_dense(checkpoint, None, need_name=False)
    if dense is None:
        report = load_backbone(model.backbone, checkpoint)
        return None, str(report)
    src = source or dense.source
    own = model.state_dict()
    want, have = _ours_kind(own), dense_kind(dense.state_dict)
    if have is not None and want is not None and have[0] != want:
        try:
            hint = f"; it holds {_infer_name(have[0], dense.state_dict, src)}"
        except CheckpointError:
            hint = ""
        raise CheckpointError(f"{src} is a {_WHAT[have[0]]} checkpoint ({dense.family}), this model is a "
                              f"{_WHAT[want]}{hint}")
    strict_load(model, dense.state_dict, src)
    return dense, dense.loaded()


# ------------------------------------------------------------------------------------- convert
def convert_dense(raw: Mapping[str, Any], source: str, to: str, naming: str | None, model_name: str | None = None
                  ) -> tuple[DenseFile, dict[str, torch.Tensor], dict[str, Any]]:
    """`convnext convert` of a detection / segmentation checkpoint: (what was read, the tensors to
    write, the entries to write beside them). `to` is "mmdet" | "mmseg" (in `naming`, default
    "openmmlab") or "official" (our layout, self-describing). The written tensors are converted back
    and must equal the input bit for bit, else nothing is returned (CheckpointError)."""
    dense = _read_dense(raw, model_name, need_name=to == "official", source=source)
    if dense is None:
        raise CheckpointError(f"{source}: --to {to} needs a detection / segmentation checkpoint (mmdet Mask R-CNN / "
                              f"Cascade Mask R-CNN, mmseg UperNet, or ours); this file is not one")
    kind = _ours_kind(dense.state_dict)
    config = _checked_config(dense)
    if to == "official":
        if naming is not None:
            raise CheckpointError("--layout applies to --to mmdet / mmseg only")
        from ..models.registry import config_to_dict

        return dense, dense.state_dict, {"model_config": config_to_dict(config), "model_name": dense.model_name,
                                         "labels": dense.classes}
    if to not in FAMILIES:
        raise CheckpointError(f"{source}: a {dense.task} checkpoint converts only to official (our layout), mmdet or "
                              f"mmseg; not {to}")
    if (to == "mmseg") != (kind == "mmseg"):
        raise CheckpointError(f"{source}: a {dense.task} checkpoint cannot be written as {to}; use --to "
                              f"{'mmseg' if kind == 'mmseg' else 'mmdet'}")
    naming = naming or "openmmlab"
    out = from_dense_layout(dense.state_dict, kind, naming, source)
    back = to_dense_layout(out, kind, naming, source)
    if back.keys() != dense.state_dict.keys() or any(not torch.equal(back[k], v) for k, v in dense.state_dict.items()):
        raise CheckpointError(f"{source}: the {to} ({naming}) tensors do not convert back to the input; "
                              f"nothing written")
    meta: dict[str, Any] = {}
    if dense.classes:  # both conventions: mmengine (mmdet 3 / mmseg 1) and mmcv 1.x
        meta = {"dataset_meta": {"classes": list(dense.classes)}, "CLASSES": list(dense.classes)}
    return dense, out, {"meta": meta}


def _checked_config(dense: DenseFile) -> Any:
    """The config of the model the file holds (registered name, classes and head widths from the
    tensors); the tensors must fit it exactly (checked on the meta device, nothing allocated)."""
    import dataclasses

    from ..models.registry import build_model, get_spec

    try:
        config = get_spec(dense.model_name).config
    except KeyError as e:
        raise CheckpointError(f"{dense.source}: --model: {e.args[0]}") from None
    fields = {f.name for f in dataclasses.fields(config)}
    config = dataclasses.replace(config, num_classes=dense.num_classes,
                                 **{k: v for k, v in dense.overrides.items() if k in fields})
    with torch.device("meta"):
        own = build_model(config).state_dict()
    problems = _fit_problems(own, dense.state_dict)
    if problems:
        raise CheckpointError(f"{dense.source}: not a whole {dense.model_name} ({' | '.join(problems)}); "
                              f"nothing written")
    return config


def save_openmmlab(sd: Mapping[str, torch.Tensor], path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Write `{"state_dict": sd, "meta": meta}` as mmcv / mmengine `load_checkpoint` read it
    (weights-only loadable; atomically, through a temporary file in the same folder)."""
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"state_dict": tensors, "meta": dict(meta)}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
