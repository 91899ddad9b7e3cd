"""Loading weights into models: strict, layout-aware, with an explicit head re-initialisation.

`load_checkpoint(model, ...)` converts any supported layout to the official one and loads it
strictly: every tensor must find its parameter with the same shape. The only tolerated difference
is the classifier, and only when asked (`reinit_head=True`, e.g. ImageNet-22K 21841 classes ->
CIFAR-10): the checkpoint head is dropped and a fresh one initialised, and the report says so.

`from_checkpoint(path)` rebuilds the model a checkpoint was made from: from the stored
`model_config` of our own checkpoints, otherwise from the tensor shapes.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ..models.convnext import ConvNeXtConfig
from ..models.isotropic import IsotropicConfig
from ..models.registry import build_model, config_from_dict, get_spec, list_models
from .convert import convert_state_dict, detect_layout, summarize_keys
from .io import CheckpointError, read_checkpoint, select_weights, unwrap_state_dict

__all__ = [
    "LoadReport", "BackboneLoadReport", "load_backbone", "load_checkpoint", "from_checkpoint", "checkpoint_config",
    "infer_config", "match_model_name",
    "to_official", "check_fit",
]

_HEAD_KEYS = ("head.weight", "head.bias")
# The paper's head is GAP -> LayerNorm -> Linear: a backbone-only checkpoint (e.g. a detection or
# segmentation one) has neither the Linear nor this LayerNorm, which then counts as part of the head.
_HEAD_NORM_KEYS = ("norm.weight", "norm.bias")


def _headless(sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> bool:
    """The checkpoint has no head LayerNorm where the model has one (a backbone-only checkpoint)."""
    return not any(k in sd for k in _HEAD_NORM_KEYS) and all(k in own for k in _HEAD_NORM_KEYS)


@dataclass
class LoadReport:
    """What `load_checkpoint` did; `str(report)` is the one-line summary callers print."""

    source: str  # file path, or "<state dict>"
    layout: str  # layout the weights were stored in (converted to official before loading)
    num_tensors: int  # tensors copied into the model
    head_reinitialized: bool = False  # checkpoint head dropped and a fresh head initialised
    dropped: list[str] = field(default_factory=list)  # checkpoint keys not loaded (only the head)
    weights: str | None = None  # "ema" | "model" when read from a file that may hold both
    description: str | None = None  # dense models: what was loaded (whole model / backbone), in words

    def __str__(self) -> str:
        if self.description:
            return self.description
        which = f", {self.weights} weights" if self.weights else ""
        s = f"loaded {self.num_tensors} tensors from {self.source} ({self.layout} layout{which})"
        if self.head_reinitialized:
            s += f"; checkpoint head ({', '.join(self.dropped) or 'none'}) dropped and re-initialised"
        return s


def to_official(sd: Mapping[str, torch.Tensor], source: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(detected layout, state dict converted to the official layout); errors name `source`."""
    try:
        layout = detect_layout(sd)
        return layout, convert_state_dict(sd, src=layout, dst="official")
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _head_mismatch(sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], headless: bool) -> str | None:
    """Description of how the checkpoint head differs from the model's, or None if it fits."""
    theirs = {k: tuple(sd[k].shape) for k in _HEAD_KEYS if k in sd}
    mine = {k: tuple(own[k].shape) for k in _HEAD_KEYS if k in own}
    if headless:
        return "the checkpoint is a backbone without the head's LayerNorm and classifier" + (
            "" if not mine else f"; the model has {mine['head.weight'][0]} classes")
    if theirs == mine:
        return None

    def classes(shapes: dict) -> int | None:
        return shapes["head.weight"][0] if "head.weight" in shapes else None

    if classes(theirs) is not None and classes(theirs) == classes(mine):
        # Same number of classes: the difference is elsewhere (the input width of the classifier, a
        # missing bias); "10 classes vs 10 classes" would explain nothing.
        diff = [f"{k}: checkpoint {theirs.get(k, 'absent')} vs model {mine.get(k, 'absent')}"
                for k in _HEAD_KEYS if theirs.get(k) != mine.get(k)]
        return "; ".join(diff)
    n_theirs, n_mine = classes(theirs), classes(mine)
    return (f"checkpoint has {f'{n_theirs} classes' if n_theirs is not None else 'no head'}, "
            f"model has {f'{n_mine} classes' if n_mine is not None else 'no head'}")


def check_fit(
    own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], *, source: str, layout: str,
    model_kind: str = "model", reinit_head: bool = False,
) -> tuple[str | None, bool]:
    """Check an official-layout state dict against a model's state dict, by names and shapes only.

    `own` may hold meta tensors: `from_checkpoint` checks a model built on the meta device, so a
    checkpoint claiming a huge architecture fails here before any memory is allocated.
    Returns (head mismatch or None, headless). Raises a one-line CheckpointError otherwise.
    """
    # Body first: a head mismatch is only worth mentioning when everything else fits.
    headless = _headless(sd, own)
    body = {k for k in set(sd) | set(own) if k not in _HEAD_KEYS and not (headless and k in _HEAD_NORM_KEYS)}
    missing = sorted(k for k in body if k not in sd)
    unexpected = sorted(k for k in body if k not in own)
    shape = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(body & set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if missing or unexpected or shape:
        parts = [f"{source} ({layout} layout) does not fit this {model_kind}:"]
        if missing:
            parts.append(f"missing from the checkpoint ({len(missing)}): {summarize_keys(missing, sep='; ')}.")
        if unexpected:
            parts.append(f"unexpected in the checkpoint ({len(unexpected)}): {summarize_keys(unexpected, sep='; ')}.")
        if shape:
            parts.append(f"shape mismatch ({len(shape)}): " + "; ".join(shape[:4])
                         + (f"; ... and {len(shape) - 4} more." if len(shape) > 4 else "."))
        if any(k.startswith("stage_norms.") for k in unexpected):
            parts.append("The checkpoint has per-stage output LayerNorms (a detection / segmentation backbone): "
                         "build the model with stage_norms=True, e.g. create_model(NAME, checkpoint=..., "
                         "stage_norms=True, reinit_head=True).")
        parts.append(_describe(sd))
        raise CheckpointError(" ".join(parts))
    head_problem = _head_mismatch(sd, own, headless)
    if head_problem is not None and not reinit_head:
        raise CheckpointError(
            f"{source}: classifier head does not fit ({head_problem}). Pass reinit_head=True "
            f"(e.g. create_model(..., checkpoint=..., reinit_head=True)) to drop the checkpoint head "
            f"and initialise a new one, e.g. to fine-tune."
        )
    return head_problem, headless


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    reinit_head: bool = False,
    ema: bool = False,
    source: str | None = None,
) -> LoadReport:
    """Load a checkpoint of any supported layout into `model`, strictly.

    Args:
        model: a ConvNeXt / isotropic ConvNeXt (official parameter names).
        path_or_state_dict: a weight file (see `load_state_dict_file`) or an in-memory state dict
            (or checkpoint dict wrapping one).
        reinit_head: if the checkpoint's classifier does not fit the model (other number of
            classes, or none), drop it and initialise a fresh head with `model.reset_classifier`
            (scaled by the config's `head_init_scale`). Without it such a mismatch is an error.
        ema: load the EMA weights (`model_ema`) of a checkpoint that has them.
        source: name for messages when passing an in-memory state dict (default "<state dict>").

    Returns:
        a `LoadReport`; `str(report)` is a one-line summary (layout, tensors, head re-initialised).

    Raises:
        CheckpointError: one line naming the missing / unexpected / mis-shaped keys.
    """
    from .dense_files import is_dense_model, load_dense

    if is_dense_model(model):  # detectors / UperNet: a whole dense file, or backbone weights
        dense, what = load_dense(model, path_or_state_dict, source=source)
        if dense is None:
            return LoadReport(source or str(path_or_state_dict) if not isinstance(path_or_state_dict, Mapping)
                              else "<state dict>", "backbone", len(model.backbone.state_dict()), description=what)
        return LoadReport(dense.source, f"{dense.family} {dense.layout}", len(dense.state_dict), description=what)
    if isinstance(path_or_state_dict, Mapping):
        source = source or "<state dict>"
        sd = unwrap_state_dict(path_or_state_dict, ema=ema, source=source)
    else:
        source = str(path_or_state_dict)
        sd = unwrap_state_dict(read_checkpoint(path_or_state_dict), ema=ema, source=source)
    if _has_official_layout(getattr(getattr(model, "config", None), "arch", "convnext")):
        layout, sd = to_official(sd, source)
    else:  # e.g. roadmap networks: only our own layout exists, load it as stored
        layout = "native"
    return _load_fitted(model, sd, source=source, layout=layout, reinit_head=reinit_head)


def _load_fitted(model: nn.Module, sd: dict, *, source: str, layout: str, reinit_head: bool,
                 fit: tuple | None = None) -> LoadReport:
    """Copy an official-layout `sd` into `model`; `fit` is `check_fit`'s answer when the caller has it."""
    head_problem, headless = fit or check_fit(model.state_dict(), sd, source=source, layout=layout,
                                              model_kind=type(model).__name__, reinit_head=reinit_head)
    dropped: list[str] = []
    if head_problem is not None:
        dropped = [k for k in _HEAD_KEYS if k in sd]
        sd = {k: v for k, v in sd.items() if k not in _HEAD_KEYS}

    with torch.no_grad():  # copy_ casts to the model's dtype/device
        model.load_state_dict(sd, strict=not head_problem)
        if headless:  # the head LayerNorm starts as at construction (identity affine)
            model.norm.reset_parameters()
    if head_problem:
        model.reset_classifier(model.num_classes)
    return LoadReport(source, layout, len(sd), bool(head_problem), dropped)


@dataclass
class BackboneLoadReport:
    """What `load_backbone` did."""

    source: str
    layout: str  # layout the checkpoint was stored in
    num_tensors: int  # tensors copied into the backbone
    new: list[str] = field(default_factory=list)  # backbone tensors the checkpoint lacks (kept as initialised)
    dropped: list[str] = field(default_factory=list)  # checkpoint tensors with no place in a backbone (head, norm)

    def __str__(self) -> str:
        s = f"backbone: loaded {self.num_tensors} tensors from {self.source} ({self.layout} layout)"
        if self.new:
            s += f"; newly initialised: {', '.join(self.new)}"
        if self.dropped:
            s += f"; dropped from the checkpoint: {', '.join(self.dropped)}"
        return s


def load_backbone(backbone: nn.Module, path_or_state_dict: str | os.PathLike | Mapping[str, Any], *,
                  ema: bool = False) -> BackboneLoadReport:
    """Load a classification (or backbone-only dense) checkpoint into a dense backbone (a ConvNeXt
    with `stage_norms=True` and no classifier, e.g. `convnext.dense.backbone.DenseConvNeXt`).

    The checkpoint is read in any supported layout and loaded strictly into a plain ConvNeXt of the
    same architecture (classifier dropped); its weights are then copied into `backbone`. The stage
    LayerNorms, which classification checkpoints do not have, stay as initialised and are reported.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, raw = "<state dict>", dict(path_or_state_dict)
    else:
        source, raw = str(path_or_state_dict), read_checkpoint(path_or_state_dict)
    layout, sd = to_official(unwrap_state_dict(raw, ema=ema, source=source), source)
    has_norms = "stage_norms.0.weight" in sd
    config = dataclasses.replace(backbone.config, num_classes=0, stage_norms=has_norms, drop_path_rate=0.0)
    plain = build_model(config)
    report = load_checkpoint(plain, sd, reinit_head=True, source=source)  # strict body; head (if any) dropped
    state = {k: v for k, v in plain.state_dict().items() if not k.startswith(("norm.", "head."))}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if unexpected:  # cannot happen for the same config; guards against a future layout change
        raise CheckpointError(f"{source}: tensors with no place in the backbone: {', '.join(unexpected)}")
    dropped = [k for k in sd if k.startswith(("norm.", "head."))]
    return BackboneLoadReport(source, layout, len(state), sorted(missing), dropped or report.dropped)


def _has_official_layout(arch: str) -> bool:
    """Architectures whose weights exist in foreign layouts (timm, torchvision, HF) to convert from."""
    return arch in ("convnext", "isotropic")


def _describe(sd: Mapping[str, torch.Tensor]) -> str:
    """One line saying which architecture an official-layout state dict holds, as a hint in errors."""
    try:
        config = infer_config(sd)
    except (KeyError, ValueError, IndexError):
        return "Check that the checkpoint is a ConvNeXt of the same architecture."
    name = match_model_name(config)
    classes = getattr(config, "num_classes", 0)
    what = name or f"an unregistered {config.arch} ({config})"
    return f"The checkpoint holds {what} with {classes} classes."


def infer_config(sd: Mapping[str, torch.Tensor]) -> ConvNeXtConfig | IsotropicConfig:
    """Architecture of an official-layout state dict, read from its tensor shapes."""
    keys = set(sd)
    num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    if "stem.weight" in keys:  # isotropic: stem (C, in, P, P), blocks.j.*
        stem = sd["stem.weight"]
        depth = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("blocks."))
        dim = stem.shape[0]
        return IsotropicConfig(
            depth=depth, dim=dim, in_chans=stem.shape[1], num_classes=num_classes,
            layer_scale_init_value=1e-6 if "blocks.0.gamma" in keys else 0.0,
            kernel_size=sd["blocks.0.dwconv.weight"].shape[-1],
            mlp_ratio=sd["blocks.0.pwconv1.weight"].shape[0] // dim, patch_size=stem.shape[-1],
        )
    stem = sd["downsample_layers.0.0.weight"]  # (C0, in, P, P)
    num_stages = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("downsample_layers."))
    dims = tuple(sd[f"stages.{i}.0.dwconv.weight"].shape[0] for i in range(num_stages))
    depths = tuple(1 + max(int(k.split(".")[2]) for k in keys if k.startswith(f"stages.{i}."))
                   for i in range(num_stages))
    return ConvNeXtConfig(
        depths=depths, dims=dims, in_chans=stem.shape[1], num_classes=num_classes,
        layer_scale_init_value=1e-6 if "stages.0.0.gamma" in keys else 0.0,
        kernel_size=sd["stages.0.0.dwconv.weight"].shape[-1],
        mlp_ratio=sd["stages.0.0.pwconv1.weight"].shape[0] // dims[0],
        stem_patch_size=stem.shape[-1], use_grn="stages.0.0.grn.gamma" in keys,
        stage_norms="stage_norms.0.weight" in keys,
    )


def match_model_name(config: Any) -> str | None:
    """The registered model whose architecture equals `config` (ignoring head width and training-only fields)."""
    def architecture(cfg: Any) -> Any:
        ignore = dict(num_classes=0, drop_path_rate=0.0, head_init_scale=1.0, stage_norms=False)  # not the body
        return dataclasses.replace(cfg, **{k: v for k, v in ignore.items() if hasattr(cfg, k)})

    want = architecture(config)
    for name in list_models(arch=config.arch):  # this family only: no other family's module imported
        spec = get_spec(name).config
        if type(spec) is type(config) and architecture(spec) == want:
            return name
    return None


def checkpoint_config(
    ckpt: Mapping[str, Any],
    official: Mapping[str, torch.Tensor],
    model_name: str | None = None,
    source: str = "checkpoint",
) -> tuple[Any, str | None]:
    """(model config, registered name or None) for a checkpoint, in this order of authority:
    `model_name` (a registered architecture, head width taken from the weights), the stored
    `model_config` of our checkpoints, the architecture read from the tensor shapes."""
    if model_name is not None:
        spec = get_spec(model_name)  # KeyError with close-match suggestions for unknown names
        num_classes = official["head.weight"].shape[0] if "head.weight" in official else 0
        return dataclasses.replace(spec.config, num_classes=num_classes), model_name
    if isinstance(ckpt.get("model_config"), Mapping):
        try:
            config = config_from_dict(ckpt["model_config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: invalid model_config ({e})") from None
    else:
        try:
            config = infer_config(official)
        except (KeyError, ValueError, IndexError) as e:
            raise CheckpointError(f"{source}: cannot infer the architecture from the tensor shapes ({e})") from None
    name = ckpt.get("model_name") if isinstance(ckpt.get("model_name"), str) else match_model_name(config)
    return config, name


def from_checkpoint(
    path: str | os.PathLike, *, weights: str = "auto", ema: bool | None = None, model_name: str | None = None,
    device: str | torch.device = "cpu", checkpoint: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Rebuild and load the model stored in a checkpoint.

    Our checkpoints carry `model_config` and are rebuilt exactly; foreign ones (official, timm,
    torchvision, HF) are rebuilt from their tensor shapes (depths, dims, classes, GRN, layer scale,
    isotropic). The model is first built on the meta device and every tensor's shape checked
    against it, so a small file whose metadata claims a huge architecture fails before any memory
    is allocated. The model gets `model.checkpoint_info = {"model_name", "labels", "layout",
    "train_config", "resolution", "weights", "report"}` (`model_name` is the matching registered
    name or None, `weights` "ema" | "model", `report` the `LoadReport`).

    Args:
        path: weight file or HF-style directory.
        weights: "auto" (the weights the checkpoint reports its accuracy for, see
            `reported_weights`), "ema" or "model".
        ema: older spelling, overrides `weights`: True = "ema", False = "model".
        model_name: build this registered model instead (head sized from the checkpoint); the
            weights must fit it strictly.
        device: where the weights are materialised.
        checkpoint: the file's content when the caller has already read it (`read_checkpoint(path)`),
            so that it is read once.
    """
    source = str(path)
    ckpt = read_checkpoint(path) if checkpoint is None else checkpoint
    sd, which = select_weights(ckpt, weights if ema is None else ("ema" if ema else "model"),
                                source=source)
    stored = ckpt.get("model_config")
    if model_name is None and isinstance(stored, Mapping) and not _has_official_layout(stored.get("arch", "convnext")):
        layout, official = "native", sd  # e.g. a roadmap network: our own layout only
    else:
        layout, official = to_official(sd, source)
    config, name = checkpoint_config(ckpt, official, model_name, source=source)
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated yet
            model = build_model(config)
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{source}: model_config does not describe a model that can be built ({reason})") from None
    # A backbone-only checkpoint (detection / segmentation) has no head LayerNorm to restore: the
    # rebuilt model (0 classes) keeps a freshly initialised one, i.e. pooled features come out.
    headless = _headless(official, model.state_dict())
    fit = check_fit(model.state_dict(), official, source=source, layout=layout, model_kind=type(model).__name__,
                    reinit_head=headless)  # on the meta model: shapes only
    model = model.to_empty(device=device)  # uninitialised storage, every tensor overwritten below
    report = _load_fitted(model, dict(official), source=source, layout=layout, reinit_head=headless, fit=fit)
    report.layout, report.weights = layout, which
    labels = ckpt.get("labels") if isinstance(ckpt.get("labels"), list) else None
    train_config = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), Mapping) else None
    resolution = ckpt.get("resolution") if isinstance(ckpt.get("resolution"), Mapping) else None
    model.checkpoint_info = {"model_name": name, "labels": labels, "layout": layout, "train_config": train_config,
                             "resolution": resolution, "weights": which, "report": report}
    return model
