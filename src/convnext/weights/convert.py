"""State-dict layouts of the ConvNeXt implementations in the wild, and conversion between them.

The canonical layout is the official FAIR one (`downsample_layers.i`, `stages.i.j.*`, `norm`,
`head`), which our models use, so official checkpoints need no conversion. Each foreign layout is a
declarative table of `Rule(ours, theirs, fix)`: two key templates and, where the tensor is stored
with another shape, a shape fix. The same table converts in both directions (the engine, shared with
every other key map of the project, is `convnext/keymap.py`).

Template placeholders: any single letter is an index (`{s}` stage, `{b}` block, `{i}` ...), `{p}`
weight|bias, `{q}` a norm layer's tensors (weight|bias|running_mean|running_var|num_batches_tracked),
and affine index expressions such as `{s*2+1}` (torchvision interleaves downsampling layers and stages in one
`features` Sequential). Rules are tried in order and the first match wins, so the stem rules (stage
0, where the official layout puts the stem in `downsample_layers.0`) come before the generic ones.

Block j of stage i (dwconv, norm, pwconv1, pwconv2, gamma, GRN) in each layout:
    official/v2  stages.i.j.{dwconv, norm, pwconv1, pwconv2, gamma, grn.gamma/beta}
    timm         stages.i.blocks.j.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma, mlp.grn.weight/bias}
    torchvision  features.{2i+1}.j.{block.0, block.2, block.3, block.5, layer_scale}
    hf           [convnext.]encoder.stages.i.layers.j.{dwconv, layernorm, pwconv1, pwconv2,
                 layer_scale_parameter, grn.weight/bias}
Stem / final norm / classifier: official `downsample_layers.0`, `norm`, `head`; timm `stem`,
`head.norm`, `head.fc`; torchvision `features.0`, `classifier.0`, `classifier.2`; hf
`embeddings`, `layernorm`, `classifier`.

Shape differences fixed here: torchvision layer scale (C, 1, 1) vs (C,); timm's small models
(atto/femto/pico/nano, `conv_mlp=True`) store the MLP as 1x1 convs (out, in, 1, 1) vs Linear
(out, in); timm's GRN (C,) vs the official V2 (1, 1, 1, C). The isotropic ConvNeXt exists only in
the official layout.

Read-only layout "dense": detection / segmentation checkpoints (mmdet, mmseg UperNet) hold the
backbone under `backbone.` with one LayerNorm per stage output (`backbone.norm{i}`, our
`stage_norms.{i}`) and no final `norm` / `head`; the task heads (`decode_head.`, `neck.`,
`roi_head.`, ...) are dropped when converting to a classification layout. Their backbone comes in
two namings (`DENSE_NAMINGS`, told apart by `dense_naming`):
    fair       FAIR's object_detection/ and semantic_segmentation/ code: the official block names
               stages.i.j.{dwconv, norm, pwconv1, pwconv2, gamma}
    openmmlab  mmcls / mmpretrain `ConvNeXt` (what mmdet 2.x/3.x and mmseg 0.x/1.x zoo files and
               every model they train hold): stages.i.j.{depthwise_conv, norm, pointwise_conv1,
               pointwise_conv2, gamma}; V2 GRN `grn.gamma` / `grn.beta` of shape (C,)
`downsample_layers.i.{0,1}` and `norm{i}` are named alike in both. The whole-model maps (backbone +
neck + heads) of mmdet and mmseg are rule tables on the same engine in `weights/dense_files.py`.

Read-only layout "fcmae": ConvNeXt-V2 FCMAE pre-training checkpoints. Their encoder is a sparse
(MinkowskiEngine) ConvNeXt-V2 under `encoder.`: conv kernels stored as `*.kernel` of shape
(k*k, C) (depthwise) or (k*k, C_in, C_out), LayerNorms / Linears wrapped as `*.ln.*` /
`*.linear.*`, biases and GRN parameters as (1, C). They are mapped to the dense V2 layout as the
official fine-tuning code does; decoder, mask token and projection are pre-training only and
dropped, and there is no head LayerNorm or classifier.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from ..keymap import Fix, KeyMap, Rule, summarize_keys, translate_state_dict
from .io import CheckpointError


__all__ = ["LAYOUTS", "DENSE_NAMINGS", "Rule", "KeyMap", "detect_layout", "dense_naming", "convert_state_dict",
           "translate_state_dict", "summarize_keys", "hf_config"]

from .layouts import LAYOUTS  # noqa: E402  (torch-free, for the convert parser)
_SOURCE_LAYOUTS = LAYOUTS + ("dense", "fcmae")  # read, never written


def _translate(sd: Mapping[str, torch.Tensor], layout: KeyMap, *, to_ours: bool, opts: dict,
               what: str) -> dict[str, torch.Tensor]:
    return translate_state_dict(sd, layout, to_ours=to_ours, opts=opts, what=what)



def _fix_layer_scale_chw(t: torch.Tensor, to_ours: bool, opts: dict) -> torch.Tensor:
    return t.reshape(-1) if to_ours else t.reshape(-1, 1, 1)  # torchvision: (C, 1, 1)


def _fix_conv_mlp(t: torch.Tensor, to_ours: bool, opts: dict) -> torch.Tensor:
    if to_ours:
        return t.flatten(1) if t.ndim == 4 else t  # (out, in, 1, 1) -> (out, in)
    return t[:, :, None, None] if opts["conv_mlp"] and t.ndim == 2 else t


def _fix_grn_vector(t: torch.Tensor, to_ours: bool, opts: dict) -> torch.Tensor:
    return t.reshape(1, 1, 1, -1) if to_ours else t.reshape(-1)  # timm: (C,)


_TIMM = KeyMap(
    "timm",
    (
        Rule("downsample_layers.0.0.{p}", "stem.0.{p}"),  # 4x4/4 patchify conv
        Rule("downsample_layers.0.1.{p}", "stem.1.{p}"),  # its LayerNorm
        Rule("downsample_layers.{s}.0.{p}", "stages.{s}.downsample.0.{p}"),
        Rule("downsample_layers.{s}.1.{p}", "stages.{s}.downsample.1.{p}"),
        Rule("stages.{s}.{b}.gamma", "stages.{s}.blocks.{b}.gamma"),
        Rule("stages.{s}.{b}.dwconv.{p}", "stages.{s}.blocks.{b}.conv_dw.{p}"),
        Rule("stages.{s}.{b}.norm.{p}", "stages.{s}.blocks.{b}.norm.{p}"),
        Rule("stages.{s}.{b}.pwconv1.{p}", "stages.{s}.blocks.{b}.mlp.fc1.{p}", _fix_conv_mlp),
        Rule("stages.{s}.{b}.grn.gamma", "stages.{s}.blocks.{b}.mlp.grn.weight", _fix_grn_vector),
        Rule("stages.{s}.{b}.grn.beta", "stages.{s}.blocks.{b}.mlp.grn.bias", _fix_grn_vector),
        Rule("stages.{s}.{b}.pwconv2.{p}", "stages.{s}.blocks.{b}.mlp.fc2.{p}", _fix_conv_mlp),
        Rule("norm.{p}", "head.norm.{p}"),
        Rule("head.{p}", "head.fc.{p}"),
    ),
)

_TORCHVISION = KeyMap(
    "torchvision",
    (
        Rule("downsample_layers.0.0.{p}", "features.0.0.{p}"),
        Rule("downsample_layers.0.1.{p}", "features.0.1.{p}"),
        Rule("downsample_layers.{s}.0.{p}", "features.{s*2}.0.{p}"),
        Rule("downsample_layers.{s}.1.{p}", "features.{s*2}.1.{p}"),
        # CNBlock.block = [dwconv, Permute, LayerNorm, Linear, GELU, Linear, Permute]
        Rule("stages.{s}.{b}.gamma", "features.{s*2+1}.{b}.layer_scale", _fix_layer_scale_chw),
        Rule("stages.{s}.{b}.dwconv.{p}", "features.{s*2+1}.{b}.block.0.{p}"),
        Rule("stages.{s}.{b}.norm.{p}", "features.{s*2+1}.{b}.block.2.{p}"),
        Rule("stages.{s}.{b}.pwconv1.{p}", "features.{s*2+1}.{b}.block.3.{p}"),
        Rule("stages.{s}.{b}.pwconv2.{p}", "features.{s*2+1}.{b}.block.5.{p}"),
        Rule("norm.{p}", "classifier.0.{p}"),  # classifier = [LayerNorm2d, Flatten, Linear]
        Rule("head.{p}", "classifier.2.{p}"),
    ),
)

# HF transformers, without the `convnext.` / `convnextv2.` model prefix (added/stripped separately).
_HF = KeyMap(
    "hf",
    (
        Rule("downsample_layers.0.0.{p}", "embeddings.patch_embeddings.{p}"),
        Rule("downsample_layers.0.1.{p}", "embeddings.layernorm.{p}"),
        Rule("downsample_layers.{s}.0.{p}", "encoder.stages.{s}.downsampling_layer.0.{p}"),
        Rule("downsample_layers.{s}.1.{p}", "encoder.stages.{s}.downsampling_layer.1.{p}"),
        Rule("stages.{s}.{b}.gamma", "encoder.stages.{s}.layers.{b}.layer_scale_parameter"),
        Rule("stages.{s}.{b}.dwconv.{p}", "encoder.stages.{s}.layers.{b}.dwconv.{p}"),
        Rule("stages.{s}.{b}.norm.{p}", "encoder.stages.{s}.layers.{b}.layernorm.{p}"),
        Rule("stages.{s}.{b}.pwconv1.{p}", "encoder.stages.{s}.layers.{b}.pwconv1.{p}"),
        Rule("stages.{s}.{b}.grn.gamma", "encoder.stages.{s}.layers.{b}.grn.weight"),  # both (1, 1, 1, C)
        Rule("stages.{s}.{b}.grn.beta", "encoder.stages.{s}.layers.{b}.grn.bias"),
        Rule("stages.{s}.{b}.pwconv2.{p}", "encoder.stages.{s}.layers.{b}.pwconv2.{p}"),
        Rule("norm.{p}", "layernorm.{p}"),
        Rule("head.{p}", "classifier.{p}"),
    ),
)
_HF_PREFIXES = ("convnext.", "convnextv2.")

DENSE_NAMINGS = ("openmmlab", "fair")


def _fix_grn_official(t: torch.Tensor, to_ours: bool, opts: dict) -> torch.Tensor:
    return t.reshape(1, 1, 1, -1) if to_ours else t  # official (1, 1, 1, C); (C,) copies accepted


def _fix_pointwise(t: torch.Tensor, to_ours: bool, opts: dict) -> torch.Tensor:
    return t.flatten(1) if to_ours and t.ndim == 4 else t  # mmpretrain linear_pw_conv=False: 1x1 conv


def _dense_backbone_rules(block: Mapping[str, str], grn_fix: Fix) -> tuple[Rule, ...]:
    """Backbone of a dense checkpoint (without `backbone.`): ours <-> theirs, block layers renamed by `block`."""
    rules = [
        Rule("stage_norms.{i}.{p}", "norm{i}.{p}"),  # LayerNorm of stage i's output
        Rule("downsample_layers.{s}.{k}.{p}", "downsample_layers.{s}.{k}.{p}"),  # stem / [LN, 2x2 conv]
        Rule("stages.{s}.{b}.gamma", "stages.{s}.{b}.gamma"),  # layer scale (C,)
        Rule("stages.{s}.{b}.grn.gamma", "stages.{s}.{b}.grn.gamma", grn_fix),
        Rule("stages.{s}.{b}.grn.beta", "stages.{s}.{b}.grn.beta", grn_fix),
    ]
    for ours, theirs in block.items():
        rules.append(Rule(f"stages.{{s}}.{{b}}.{ours}.{{p}}", f"stages.{{s}}.{{b}}.{theirs}.{{p}}",
                          _fix_pointwise if ours.startswith("pwconv") else None))
    return tuple(rules)


DENSE_BACKBONE: dict[str, KeyMap] = {
    "fair": KeyMap("fair", _dense_backbone_rules(
        {"dwconv": "dwconv", "norm": "norm", "pwconv1": "pwconv1", "pwconv2": "pwconv2"}, _fix_grn_official)),
    "openmmlab": KeyMap("openmmlab", _dense_backbone_rules(
        {"dwconv": "depthwise_conv", "norm": "norm", "pwconv1": "pointwise_conv1", "pwconv2": "pointwise_conv2"},
        _fix_grn_vector)),
}

_FOREIGN = {layout.name: layout for layout in (_TIMM, _TORCHVISION, _HF)}


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """Which implementation a state dict comes from, recognised by sentinel keys.

    Returns one of "official", "v2" (official layout with GRN), "timm", "torchvision", "hf", or
    "dense" (an official detection / segmentation checkpoint: backbone under `backbone.`) or
    "fcmae" (a ConvNeXt-V2 FCMAE pre-training checkpoint: sparse encoder under `encoder.`).
    """
    keys = set(sd)
    if "backbone.downsample_layers.0.0.weight" in keys:
        return "dense"
    if any(k.startswith("encoder.stages.") and k.endswith(".dwconv.kernel") for k in keys):
        return "fcmae"
    if "downsample_layers.0.0.weight" in keys or ("stem.weight" in keys and "blocks.0.dwconv.weight" in keys):
        return "v2" if any(k.endswith(".grn.gamma") for k in keys) else "official"
    if "stem.0.weight" in keys and any(k.startswith("stages.0.blocks.") for k in keys):
        return "timm"
    if "features.0.0.weight" in keys and any(k.startswith("features.1.0.block.") for k in keys):
        return "torchvision"
    if any(k.endswith("embeddings.patch_embeddings.weight") for k in keys):
        return "hf"
    sample = ", ".join(sorted(keys)[:6])
    raise CheckpointError(
        f"unrecognised ConvNeXt state-dict layout (keys start with: {sample}); supported layouts: "
        f"official FAIR / V2, timm, torchvision, HF transformers"
    )


def dense_naming(sd: Mapping[str, object], prefix: str = "backbone.") -> str:
    """"openmmlab" (mmcls / mmpretrain block names) or "fair" for the backbone of a dense checkpoint."""
    mm = re.compile(re.escape(prefix) + r"stages\.\d+\.\d+\.(?:depthwise_conv|pointwise_conv[12])\.")
    return "openmmlab" if any(mm.match(k) for k in sd) else "fair"


def _is_isotropic(sd: Mapping[str, torch.Tensor]) -> bool:
    return "stem.weight" in sd and any(k.startswith("blocks.") for k in sd)


def _fcmae_encoder(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sparse FCMAE encoder as a dense ConvNeXt-V2 state dict (official V2 layout, no head)."""
    out = {}
    for key, value in sd.items():
        if not key.startswith("encoder."):  # decoder, mask_token, proj, pred: pre-training only
            continue
        key = key[len("encoder."):]
        if key.endswith(".kernel"):  # MinkowskiEngine kernel: one row per tap, taps in (w, h) order
            key = key[: -len("kernel")] + "weight"
            side = math.isqrt(value.shape[0])
            if value.dim() == 3:  # (k*k, C_in, C_out) -> (C_out, C_in, k, k)
                value = value.permute(2, 1, 0).reshape(value.shape[2], value.shape[1], side, side)
            else:  # depthwise (k*k, C) -> (C, 1, k, k)
                value = value.t().reshape(value.shape[1], 1, side, side)
            value = value.transpose(2, 3)
        else:
            key = re.sub(r"\.(?:ln|linear)\.(weight|bias)$", r".\1", key)
            if ".grn." in key:
                value = value.reshape(1, 1, 1, -1)
            elif key.endswith(".bias"):
                value = value.reshape(-1)  # sparse conv biases are (1, C)
        out[key] = value.contiguous()
    return out


def _to_official(sd: Mapping[str, torch.Tensor], src: str) -> dict[str, torch.Tensor]:
    if src == "fcmae":
        sd, src = _fcmae_encoder(sd), "v2"
    if src == "dense":  # the backbone only; its per-stage output norms become our stage_norms
        naming = dense_naming(sd)
        backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        sd = _translate(backbone, DENSE_BACKBONE[naming], to_ours=True, opts={},
                        what=f"backbone tensor(s) of the dense ({naming} naming) layout have no official equivalent")
        src = "official"  # (V2 backbones too: the official branch below treats both alike)
    if src in ("official", "v2"):
        # Official V2 GRN parameters are (1, 1, 1, C); accept (C,) copies too.
        return {k: (v.reshape(1, 1, 1, -1) if k.endswith((".grn.gamma", ".grn.beta")) else v) for k, v in sd.items()}
    layout = _FOREIGN[src]
    if src == "hf":
        sd = {next((k[len(p):] for p in _HF_PREFIXES if k.startswith(p)), k): v for k, v in sd.items()}
    return _translate(sd, layout, to_ours=True, opts={},
                      what=f"tensor(s) of the {src} layout have no official-layout equivalent")


def _from_official(sd: Mapping[str, torch.Tensor], dst: str, conv_mlp: bool | None) -> dict[str, torch.Tensor]:
    if _is_isotropic(sd):
        raise CheckpointError(f"the isotropic ConvNeXt exists only in the official layout; {dst} has no equivalent")
    has_grn = any(k.endswith(".grn.gamma") for k in sd)
    if dst == "torchvision" and (has_grn or not any(k.endswith(".gamma") for k in sd)):
        raise CheckpointError(
            "torchvision's ConvNeXt always has layer scale and no GRN; this model "
            f"({'has GRN (ConvNeXt V2)' if has_grn else 'has no layer scale'}) cannot be expressed in its layout"
        )
    if conv_mlp is None:
        # timm registers its smallest models (atto/femto/pico/nano, stem width < 96) with conv_mlp=True.
        conv_mlp = sd["downsample_layers.0.0.weight"].shape[0] < 96
    layout, opts = _FOREIGN[dst], {"conv_mlp": conv_mlp}
    out = _translate(sd, layout, to_ours=False, opts=opts, what=f"tensor(s) have no {dst} equivalent")
    if dst == "hf":
        prefix = "convnextv2." if has_grn else "convnext."
        out = {(k if k.startswith("classifier.") else prefix + k): v for k, v in out.items()}
    return out


def convert_state_dict(
    sd: Mapping[str, torch.Tensor], *, src: str | None = None, dst: str = "official", conv_mlp: bool | None = None
) -> dict[str, torch.Tensor]:
    """Convert a ConvNeXt state dict between layouts (tensors are shared, not copied, where possible).

    Args:
        sd: the state dict.
        src: its layout (one of `LAYOUTS`, "dense" or "fcmae"); detected from sentinel keys when None.
        dst: the layout wanted; "official" (= our models) by default. "v2" is the official
            layout of ConvNeXt V2 (GRN), so it is the same as "official" for GRN models.
        conv_mlp: only for dst="timm": store the MLP as 1x1 convs as timm's atto/femto/pico/nano
            do. None infers it from the stem width (< 96 channels), which matches timm's registry.
    """
    for name, value in (("src", src), ("dst", dst)):
        allowed = _SOURCE_LAYOUTS if name == "src" else LAYOUTS
        if value is not None and value not in allowed:
            raise ValueError(f"{name}={value!r}: unknown layout; expected one of {', '.join(allowed)}")
    src = src or detect_layout(sd)
    official = _to_official(sd, src)
    if dst == "v2" and not any(k.endswith(".grn.gamma") for k in official):
        raise CheckpointError("dst='v2' needs a ConvNeXt V2 model (GRN parameters); this state dict has none")
    if dst in ("official", "v2"):
        return official
    return _from_official(official, dst, conv_mlp)


def hf_config(config, labels: list[str] | None = None) -> dict:
    """`config.json` for HF transformers' ConvNext / ConvNextV2 matching a hierarchical ConvNeXtConfig.

    Written without importing transformers; `from_pretrained(dir)` then rebuilds the same network.
    The final LayerNorm eps is set to the official 1e-6 (HF's default there is 1e-12).
    """
    if getattr(config, "arch", None) != "convnext":
        raise CheckpointError("HF transformers has only the hierarchical ConvNeXt; this model has no HF equivalent")
    if config.kernel_size != 7 or config.mlp_ratio != 4 or config.stage_norms:
        raise CheckpointError("HF ConvNext fixes kernel_size=7 and mlp_ratio=4 and has no stage norms")
    v2 = config.use_grn
    head = "ForImageClassification" if config.num_classes > 0 else "Model"
    out = {
        "model_type": "convnextv2" if v2 else "convnext",
        "architectures": [f"ConvNext{'V2' if v2 else ''}{head}"],
        "num_channels": config.in_chans,
        "patch_size": config.stem_patch_size,
        "num_stages": len(config.depths),
        "depths": list(config.depths),
        "hidden_sizes": list(config.dims),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "drop_path_rate": 0.0,
        "image_size": 224,
    }
    if not v2:
        out["layer_scale_init_value"] = config.layer_scale_init_value
    if config.num_classes > 0:
        names = labels if labels is not None and len(labels) == config.num_classes else None
        out["id2label"] = {str(i): (names[i] if names else f"LABEL_{i}") for i in range(config.num_classes)}
        out["label2id"] = {v: int(k) for k, v in out["id2label"].items()}
    return out
