"""The modernization roadmap, ResNet-50/200 -> ConvNeXt-T/B (paper §2, Fig. 2, Tables 10/11; PAPER.md §2).

Every intermediate network of the paper is one `RoadmapConfig`, and each step's config is the
config of the last *adopted* step plus a small declared change (`dataclasses.replace`), listed
with a one-line description in `_ladder`. One configurable network, `RoadmapNet`, builds all of
them; the last step (`sep_downsample`) builds the `ConvNeXt` class itself, so
`roadmap_r50_sep_downsample` *is* ConvNeXt-T and `roadmap_r200_sep_downsample` is ConvNeXt-B,
with the official state-dict keys.

The residual block is a three-conv block whose conv order is the step's layout (`ResidualBlock`):

    bottleneck  (steps baseline..widen):  1x1 Cin->w,  kxk w->w (strided),      1x1 w->4w    (residual 4w)
    inverted    (step inverted):          1x1 Cin->4C, dw kxk 4C->4C (strided), 1x1 4C->C    (residual C)
    dw_first    (move_up_dw..layernorm):  dw kxk Cin (strided), 1x1 Cin->4C,    1x1 4C->C    (residual C)

each conv followed by a norm, the first two by an activation, and one more activation after the
add, exactly the torchvision ResNet bottleneck. The later steps remove activations and norms from
this template; once a block is the ConvNeXt block (stride 1, LN, one GELU) it is `layers.Block`.

Choices where the paper is silent (PAPER.md §2.2 notes and §6.3), also in docs/roadmap.md:
- Patchify stem (steps patchify..layernorm): the whole ResNet stem cell (7x7/2 conv, BN, ReLU,
  3x3/2 max-pool) becomes a single 4x4/4 conv with bias and no norm or activation after it. The
  paper "replaces the stem cell with a patchify layer" and only at the separate-downsampling step
  "adds one LN after the stem", which implies there was none before.
- Stride: on the spatial (kxk) conv of the first block of stages 2-4 (torchvision "ResNet v1.5"),
  also after the conv is made depthwise or moved up; the projection shortcut (1x1 conv with the
  same stride, then a norm) exists wherever the block changes shape.
- Shortcut norm: the fewer-norms step removes norms from the residual branch only; the projection
  shortcut keeps its BN, which becomes LN at the BN->LN step ("substitute BN with LN" everywhere).
- Layer scale: introduced at the fewer-norms step with init 1e-6 (the ConvNeXt value). That step
  removes the BN that ended the residual branch, whose affine weight was the branch's per-channel
  scale; layer scale is the ConvNeXt replacement for it. Earlier steps have none.
- Conv biases: a conv has a bias unless a BatchNorm follows it (BN makes it redundant; channel LN
  does not), matching both torchvision ResNet and ConvNeXt.
- Init: one initialisation for every step, the ConvNeXt one (`layers.init_weights`: conv/linear
  weights N(0, 0.02) truncated, bias 0; norms weight 1, bias 0).
- Stochastic depth: `drop_path_rate` is 0 by default for every step (not stated in the paper).

Small inputs (`small_input=True`) change only the stem, the same way at every step: its total
stride goes from 4 to 1. The ResNet stem becomes one 3x3/1 conv + norm + act without max-pool
(the CIFAR-ResNet convention), the patchify stem becomes a 1x1/1 "patch" conv, and ConvNeXt gets
`stem_patch_size=1`. The network stride is then 8, so 8x8 digits reach stage 4 at 1x1 and
32x32 CIFAR images at 4x4.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from ..keymap import KeyMap, Rule, translate_state_dict
from .convnext import ClassifierMixin, ConvNeXt, ConvNeXtConfig, _channel_norm
from .layers import Block, LayerNorm2d, drop_path_rates, init_weights
from .registry import ModelSpec, register_arch, register_model

__all__ = [
    "RoadmapConfig",
    "RoadmapNet",
    "ResidualBlock",
    "RoadmapStep",
    "STEP_NAMES",
    "REGIMES",
    "roadmap_steps",
    "build_roadmap",
    "from_torchvision_resnet",
]

_BLOCKS = ("bottleneck", "inverted", "dw_first")
_ACTS: dict[str, Callable[[], nn.Module]] = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}
_NORMS: dict[str, Callable[[int], nn.Module]] = {"batch": nn.BatchNorm2d, "layer": LayerNorm2d}
_EXPANSION = 4  # bottleneck: residual = 4 * w; inverted blocks: hidden = 4 * C


@dataclass(frozen=True)
class RoadmapConfig:
    depths: tuple[int, ...] = (3, 4, 6, 3)  # blocks per stage (ResNet-50)
    # Narrow width per stage: w of a bottleneck, C of an inverted block. The stem has widths[0].
    widths: tuple[int, ...] = (64, 128, 256, 512)
    block: str = "bottleneck"  # conv order: "bottleneck" | "inverted" | "dw_first" (see module docstring)
    patchify_stem: bool = False  # False: 7x7/2 conv + norm + act + 3x3/2 max-pool; True: one 4x4/4 conv
    depthwise: bool = False  # the spatial kxk conv has groups = channels
    kernel_size: int = 3  # spatial conv kernel (odd)
    act: str = "relu"  # "relu" | "gelu"
    fewer_acts: bool = False  # only the activation after the 2nd conv (between the 1x1s of dw_first) remains
    fewer_norms: bool = False  # only the norm after the 1st conv (the dw conv of dw_first) remains
    norm: str = "batch"  # "batch" | "layer" (LN over channels, eps 1e-6): blocks, shortcuts and ResNet stem
    sep_downsample: bool = False  # ConvNeXt: LN + 2x2/2 conv between stages, LN after stem and pooling
    layer_scale_init_value: float = 0.0  # per-channel scale of the residual branch; 0 disables it
    small_input: bool = False  # stem stride 4 -> 1 at every step, for 8x8 / 32x32 images
    in_chans: int = 3
    num_classes: int = 1000
    drop_path_rate: float = 0.0
    head_init_scale: float = 1.0

    arch = "roadmap"

    def __post_init__(self):
        for name in ("depths", "widths"):  # lists from YAML / model_overrides -> tuples, so configs compare and hash
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.depths) != len(self.widths) or not self.depths:
            raise ValueError(f"depths {self.depths} and widths {self.widths} must be non-empty and of equal length")
        if self.block not in _BLOCKS:
            raise ValueError(f"block must be one of {_BLOCKS}, got {self.block!r}")
        if self.act not in _ACTS or self.norm not in _NORMS:
            raise ValueError(f"act must be in {tuple(_ACTS)} and norm in {tuple(_NORMS)}; "
                             f"got {self.act!r}, {self.norm!r}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.sep_downsample and not self.is_convnext_block:
            raise ValueError("sep_downsample yields ConvNeXt: it needs the patchify stem and the ConvNeXt block "
                             "(block='dw_first', depthwise, act='gelu', fewer_acts, fewer_norms, norm='layer')")

    @property
    def is_convnext_block(self) -> bool:
        """Whether a stride-1 block of this config computes exactly the ConvNeXt block (`layers.Block`)."""
        return (self.block == "dw_first" and self.depthwise and self.patchify_stem and self.act == "gelu"
                and self.fewer_acts and self.fewer_norms and self.norm == "layer")

    def to_convnext(self) -> ConvNeXtConfig:
        """The ConvNeXt config this roadmap config equals (valid when `sep_downsample`)."""
        return ConvNeXtConfig(
            depths=self.depths, dims=self.widths, in_chans=self.in_chans, num_classes=self.num_classes,
            drop_path_rate=self.drop_path_rate, layer_scale_init_value=self.layer_scale_init_value,
            head_init_scale=self.head_init_scale, kernel_size=self.kernel_size, mlp_ratio=_EXPANSION,
            stem_patch_size=1 if self.small_input else 4,
        )


def _conv_norm(cfg: RoadmapConfig, c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1,
               norm: bool = True) -> tuple[nn.Conv2d, nn.Module]:
    """A conv and the norm after it (Identity if none); the conv has a bias unless a BatchNorm follows."""
    norm_layer = _NORMS[cfg.norm](c_out) if norm else nn.Identity()
    bias = not isinstance(norm_layer, nn.BatchNorm2d)
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=bias), norm_layer


class ResidualBlock(nn.Module):
    """conv1 -> norm1 -> act1 -> conv2 -> norm2 -> act2 -> conv3 -> norm3 -> [gamma] -> (+ shortcut) -> act.

    The convs follow `cfg.block` (module docstring); `fewer_norms` keeps only norm1, `fewer_acts`
    keeps only act2; the missing ones are `nn.Identity`. Names follow torchvision's Bottleneck
    (bn -> norm, downsample -> shortcut), so ResNet weights map one to one.

    Args:
        cfg: the roadmap config (block layout, kernel, norm, activation, layer scale).
        c_in: input channels.
        width: the stage's narrow width (w of a bottleneck, C of an inverted block).
        stride: 2 in the first block of stages 2-4, else 1; sits on the spatial conv.
        drop_path: stochastic-depth probability of the residual branch.
    """

    def __init__(self, cfg: RoadmapConfig, c_in: int, width: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        k, wide = cfg.kernel_size, _EXPANSION * width

        def spatial(c: int) -> tuple[int, int, int, int, int]:  # the kxk conv on c channels, strided
            return (c, c, k, stride, c if cfg.depthwise else 1)

        # (in, out, kernel, stride, groups) of conv1, conv2, conv3
        if cfg.block == "bottleneck":  # 1x1 Cin->w, kxk w->w, 1x1 w->4w
            specs, c_out = [(c_in, width, 1, 1, 1), spatial(width), (width, wide, 1, 1, 1)], wide
        elif cfg.block == "inverted":  # 1x1 Cin->4C, dw kxk 4C->4C, 1x1 4C->C
            specs, c_out = [(c_in, wide, 1, 1, 1), spatial(wide), (wide, width, 1, 1, 1)], width
        else:  # dw_first: dw kxk Cin->Cin, 1x1 Cin->4C, 1x1 4C->C
            specs, c_out = [spatial(c_in), (c_in, wide, 1, 1, 1), (wide, width, 1, 1, 1)], width
        for i, (ci, co, kk, s, g) in enumerate(specs, start=1):
            conv, norm = _conv_norm(cfg, ci, co, kk, s, g, norm=not cfg.fewer_norms or i == 1)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"norm{i}", norm)
            if i < 3:
                self.add_module(f"act{i}", _ACTS[cfg.act]() if not cfg.fewer_acts or i == 2 else nn.Identity())
        if cfg.layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((c_out,), float(cfg.layer_scale_init_value)))
        else:
            self.gamma = None
        if stride != 1 or c_in != c_out:  # projection shortcut: 1x1 conv with the block's stride, then a norm
            self.shortcut = nn.Sequential(OrderedDict(zip(("conv", "norm"), _conv_norm(cfg, c_in, c_out, 1, stride))))
        else:
            self.shortcut = nn.Identity()
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()
        self.act = nn.Identity() if cfg.fewer_acts else _ACTS[cfg.act]()
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        shortcut = self.shortcut(x)
        x = self.act1(self.norm1(self.conv1(x)))
        x = self.act2(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        if self.gamma is not None:
            x = self.gamma.view(-1, 1, 1) * x
        return self.act(shortcut + self.drop_path(x))


def _stem(cfg: RoadmapConfig) -> nn.Sequential:
    c = cfg.widths[0]
    if cfg.patchify_stem:  # non-overlapping patches: 4x4/4, or 1x1/1 for small inputs; no norm, no act
        p = 1 if cfg.small_input else 4
        return nn.Sequential(OrderedDict(conv=nn.Conv2d(cfg.in_chans, c, p, stride=p)))
    if cfg.small_input:  # CIFAR-ResNet stem: 3x3/1 conv, no max-pool
        conv, norm = _conv_norm(cfg, cfg.in_chans, c, 3)
        return nn.Sequential(OrderedDict(conv=conv, norm=norm, act=_ACTS[cfg.act]()))
    conv, norm = _conv_norm(cfg, cfg.in_chans, c, 7, stride=2)
    return nn.Sequential(
        OrderedDict(conv=conv, norm=norm, act=_ACTS[cfg.act](), pool=nn.MaxPool2d(3, stride=2, padding=1))
    )


class RoadmapNet(ClassifierMixin, nn.Module):
    """The roadmap's networks before separate downsampling: stem -> 4 stages of residual blocks -> GAP -> FC.

    Layout: `stem.{conv,norm,act,pool}`, `stages.i.j.*` (`ResidualBlock`, or `layers.Block` once the
    block is the ConvNeXt block), `head`. There is no norm after pooling (`norm` is an Identity so
    the ConvNeXt head contract applies); `build_roadmap` returns `ConvNeXt` for `sep_downsample`.

    Args:
        config: the step's `RoadmapConfig`.
    """

    def __init__(self, config: RoadmapConfig = RoadmapConfig()):
        super().__init__()
        if config.sep_downsample:
            raise ValueError("a sep_downsample config is ConvNeXt: build it with build_roadmap(config)")
        self.config = config
        self.in_chans = config.in_chans
        self.num_classes = config.num_classes
        self.grad_checkpointing = False

        self.stem = _stem(config)
        dp_rates = drop_path_rates(config.drop_path_rate, sum(config.depths))
        self.stages = nn.ModuleList()
        c_in, idx = config.widths[0], 0
        for i, (width, depth) in enumerate(zip(config.widths, config.depths)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                if config.is_convnext_block and stride == 1 and c_in == width:
                    block = Block(width, drop_path=dp_rates[idx], layer_scale_init_value=config.layer_scale_init_value,
                                  kernel_size=config.kernel_size, mlp_ratio=_EXPANSION)
                    block.out_channels = width
                else:
                    block = ResidualBlock(config, c_in, width, stride, dp_rates[idx])
                blocks.append(block)
                c_in, idx = block.out_channels, idx + 1
            self.stages.append(nn.Sequential(*blocks))
        self.num_features = c_in
        self.norm = nn.Identity()
        self.apply(init_weights)
        self.head = self._make_head(c_in, config.num_classes, config.head_init_scale)

        stem_stride = 1 if config.small_input else 4
        self.stride = stem_stride * 2 ** (len(config.depths) - 1)
        self.feature_info = [
            dict(num_chs=stage[-1].out_channels, reduction=stem_stride * 2**i, module=f"stages.{i}")
            for i, stage in enumerate(self.stages)
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, H/32, W/32)
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = self._run_blocks(stage, x)
        return x

    def forward_intermediates(self, x: torch.Tensor, norm: bool = True) -> list[torch.Tensor]:
        """Outputs of every stage, (B, C_i, H/s_i, W/s_i), channel-LayerNormed (weight 1, bias 0) if `norm`,
        as `ConvNeXt.forward_intermediates` without learnable stage norms."""
        self._check_input(x)
        x, outs = self.stem(x), []
        for stage in self.stages:
            x = self._run_blocks(stage, x)
            outs.append(_channel_norm(x, None) if norm else x)
        return outs


def build_roadmap(config: RoadmapConfig) -> nn.Module:
    """`RoadmapNet(config)`, or for the last step the `ConvNeXt` it has become."""
    return ConvNeXt(config.to_convnext()) if config.sep_downsample else RoadmapNet(config)


# torchvision ResNet (bottleneck) <-> RoadmapNet baseline keys, a rule table on `convnext.keymap`'s engine.
TORCHVISION_RESNET = KeyMap("torchvision-resnet", (
    Rule("stem.conv.weight", "conv1.weight"),
    Rule("stem.norm.{q}", "bn1.{q}"),
    Rule("stages.{s}.{b}.conv{k}.weight", "layer{s+1}.{b}.conv{k}.weight"),  # torchvision layers count from 1
    Rule("stages.{s}.{b}.norm{k}.{q}", "layer{s+1}.{b}.bn{k}.{q}"),
    Rule("stages.{s}.{b}.shortcut.conv.weight", "layer{s+1}.{b}.downsample.0.weight"),
    Rule("stages.{s}.{b}.shortcut.norm.{q}", "layer{s+1}.{b}.downsample.1.{q}"),
    Rule("head.{p}", "fc.{p}"),
))


def from_torchvision_resnet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet (bottleneck) state dict to the `RoadmapNet` baseline layout.

    E.g. `torchvision.models.resnet50(weights=...).state_dict()` loads strictly into
    `create_model("roadmap_r50_baseline")`. A key outside the table is a CheckpointError naming it.
    """
    return translate_state_dict(state_dict, TORCHVISION_RESNET, to_ours=True,
                                what="tensor(s) of the torchvision ResNet layout have no RoadmapNet equivalent")


# --------------------------------------------------------------------------------------------
# The ladders of paper Tables 10 (R50 -> ConvNeXt-T) and 11 (R200 -> ConvNeXt-B).
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoadmapStep:
    name: str  # step name; the model is roadmap_<regime>_<name>
    config: RoadmapConfig
    builds_on: str | None  # the adopted step whose config this one changes
    change: str  # what changed, one line
    adopted: bool  # whether later steps build on it (kernels 5, 9, 11 are not)
    paper_gflops: float
    paper_top1: float
    paper_top1_std: float | None  # R50: std over 3 seeds; R200: single runs


STEP_NAMES = (
    "baseline", "stage_ratio", "patchify", "depthwise", "widen", "inverted", "move_up_dw", "kernel5", "kernel7",
    "kernel9", "kernel11", "gelu", "fewer_act", "fewer_norm", "layernorm", "sep_downsample",
)
REGIMES = ("r50", "r200")

# Paper GFLOPs / top-1 per step. R50 (Table 10): mean +- std over 3 seeds, the baseline with the
# modern recipe (78.82; 76.13 with PyTorch's weights), and 4.15 for BN->LN where the table's 4.46
# cannot be right (PAPER.md §6.2). R200 (Table 11): single runs.
_PAPER = {
    "r50": dict(
        baseline=(4.09, 78.82, 0.07), stage_ratio=(4.53, 79.36, 0.07), patchify=(4.42, 79.51, 0.18),
        depthwise=(2.35, 78.28, 0.08), widen=(5.27, 80.50, 0.02), inverted=(4.64, 80.64, 0.03),
        move_up_dw=(4.07, 79.92, 0.08), kernel5=(4.10, 80.35, 0.08), kernel7=(4.15, 80.57, 0.14),
        kernel9=(4.21, 80.57, 0.06), kernel11=(4.29, 80.47, 0.11), gelu=(4.15, 80.62, 0.14),
        fewer_act=(4.15, 81.27, 0.06), fewer_norm=(4.15, 81.41, 0.09), layernorm=(4.15, 81.47, 0.09),
        sep_downsample=(4.49, 81.97, 0.06),
    ),
    "r200": dict(
        baseline=(15.01, 81.14, None), stage_ratio=(14.52, 81.33, None), patchify=(14.38, 81.59, None),
        depthwise=(7.23, 80.54, None), widen=(16.76, 81.85, None), inverted=(15.68, 82.64, None),
        move_up_dw=(14.63, 82.04, None), kernel5=(14.70, 82.32, None), kernel7=(14.81, 82.30, None),
        kernel9=(14.95, 82.27, None), kernel11=(15.13, 82.18, None), gelu=(14.81, 82.19, None),
        fewer_act=(14.81, 82.71, None), fewer_norm=(14.81, 83.17, None), layernorm=(14.81, 83.35, None),
        sep_downsample=(15.35, 83.60, None),
    ),
}

_R50_BASE = RoadmapConfig(depths=(3, 4, 6, 3), widths=(64, 128, 256, 512))
_R200_BASE = RoadmapConfig(depths=(3, 24, 36, 3), widths=(64, 128, 256, 512))


def _ladder(regime: str) -> list[RoadmapStep]:
    if regime == "r50":
        base, target = _R50_BASE, "ConvNeXt-T"
        ratio = (dict(depths=(3, 3, 9, 3)), "stage depths 3,4,6,3 -> 3,3,9,3 (Swin-T 1:1:3:1)")
        widen = (dict(widths=(96, 192, 384, 768)), "width 64 -> 96 (stem 96, w = 96..768)")
    else:
        base, target = _R200_BASE, "ConvNeXt-B"
        # The paper folds a 64 -> 84 widening into this step to hold FLOPs (PAPER.md §2.3).
        ratio = (dict(depths=(3, 3, 27, 3), widths=(84, 168, 336, 672)),
                 "stage depths 3,24,36,3 -> 3,3,27,3 and width 64 -> 84")
        widen = (dict(widths=(128, 256, 512, 1024)), "width 84 -> 128 (Swin-B)")
    # (step, builds on, change, what changed, adopted)
    rows = [
        ("baseline", None, {}, f"ResNet-{regime[1:]} (torchvision bottleneck layout)", True),
        ("stage_ratio", "baseline", *ratio, True),
        ("patchify", "stage_ratio", dict(patchify_stem=True),
         "stem 7x7/2 conv + BN + ReLU + max-pool -> 4x4/4 conv", True),
        ("depthwise", "patchify", dict(depthwise=True), "3x3 conv -> depthwise 3x3 (groups = width)", True),
        ("widen", "depthwise", *widen, True),
        ("inverted", "widen", dict(block="inverted"), "inverted bottleneck: 1x1 C->4C, dw 3x3 on 4C, 1x1 4C->C", True),
        ("move_up_dw", "inverted", dict(block="dw_first"), "dw conv moved up: dw 3x3 on C, 1x1 C->4C, 1x1 4C->C", True),
        ("kernel5", "move_up_dw", dict(kernel_size=5), "dw kernel 3 -> 5 (superseded by 7)", False),
        ("kernel7", "move_up_dw", dict(kernel_size=7), "dw kernel 3 -> 7", True),
        ("kernel9", "kernel7", dict(kernel_size=9), "dw kernel 7 -> 9 (not adopted)", False),
        ("kernel11", "kernel7", dict(kernel_size=11), "dw kernel 7 -> 11 (not adopted)", False),
        ("gelu", "kernel7", dict(act="gelu"), "ReLU -> GELU everywhere", True),
        ("fewer_act", "gelu", dict(fewer_acts=True), "one GELU per block (between the 1x1s), none after the add", True),
        ("fewer_norm", "fewer_act", dict(fewer_norms=True, layer_scale_init_value=1e-6),
         "one BN per block (after the dw conv); layer scale 1e-6 replaces the last BN's scale", True),
        ("layernorm", "fewer_norm", dict(norm="layer"), "BN -> LN everywhere", True),
        ("sep_downsample", "layernorm", dict(sep_downsample=True),
         f"separate LN + 2x2/2 conv downsampling, LN after stem and pooling (= {target})", True),
    ]
    steps: dict[str, RoadmapStep] = {}
    for name, parent, changes, text, adopted in rows:
        if parent is not None and not steps[parent].adopted:
            raise AssertionError(f"{name} builds on {parent}, which was not adopted")
        config = base if parent is None else dataclasses.replace(steps[parent].config, **changes)
        steps[name] = RoadmapStep(name, config, parent, text, adopted, *_PAPER[regime][name])
    assert tuple(steps) == STEP_NAMES
    return list(steps.values())


_STEPS = {regime: _ladder(regime) for regime in REGIMES}


def roadmap_steps(regime: str = "r50") -> list[RoadmapStep]:
    """The 16 steps of a regime ("r50" or "r200"), in the paper's order."""
    if regime not in _STEPS:
        raise ValueError(f"unknown roadmap regime {regime!r} (known: {', '.join(REGIMES)})")
    return list(_STEPS[regime])


register_arch("roadmap", RoadmapConfig, build_roadmap)
for _regime, _table in [("r50", 10), ("r200", 11)]:
    for _step in _STEPS[_regime]:
        _params = {("r50", "baseline"): 25.6, ("r50", "sep_downsample"): 28.6, ("r200", "sep_downsample"): 88.6}
        register_model(
            ModelSpec(
                f"roadmap_{_regime}_{_step.name}", _step.config, params_m=_params.get((_regime, _step.name)),
                gmacs={224: _step.paper_gflops}, top1=_step.paper_top1, source=f"paper Table {_table}",
                description=_step.change,
            )
        )
