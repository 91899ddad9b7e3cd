"""One registry of named model configs ("variants are data", STYLE.md principle 2).

Each entry is a frozen config plus the reference metadata it must reproduce (params, MACs at
given resolutions, paper top-1 and training stochastic depth). `tests/models/test_registry.py`
rebuilds every entry and checks the metadata is true.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .._providers import take_model_providers
from ..errors import UnknownModelError
from .convnext import ConvNeXt, ConvNeXtConfig
from .isotropic import IsotropicConfig, IsotropicConvNeXt

__all__ = [
    "ModelSpec",
    "register_model",
    "register_arch",
    "list_models",
    "get_spec",
    "build_model",
    "config_from_dict",
    "config_to_dict",
]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: Any  # a frozen config dataclass with an `arch` class attribute
    params_m: float | None = None  # reference parameter count (millions, 1000-way head)
    gmacs: dict[int, float] = field(default_factory=dict)  # reference GFLOPs (MACs) per resolution
    top1: float | None = None  # paper ImageNet-1K top-1 (trained on IN-1K at 224), if reported
    top1_22k: float | None = None  # paper top-1 after IN-22K pre-training, 224
    train_drop_path: float = 0.0  # stochastic depth of the paper's IN-1K recipe for this model
    source: str = "paper"  # where the reference numbers come from
    description: str = ""
    task: str = "classification"  # classification | detection | segmentation
    flops_size: tuple[int, int] = (224, 224)  # (H, W) at which `convnext models` counts MACs (paper convention)
    ref_gmacs: float | None = None  # reference GFLOPs (MACs) at flops_size, for dense models


_ARCHS: dict[str, tuple[type, Callable[..., nn.Module]]] = {}
_REGISTRY: dict[str, ModelSpec] = {}


def register_arch(arch: str, config_cls: type, model_cls: Callable[..., nn.Module]) -> None:
    """Map an `arch` tag (stored in checkpoints) to its config dataclass and module class."""
    if arch in _ARCHS and _ARCHS[arch] != (config_cls, model_cls):
        raise ValueError(f"architecture {arch!r} is already registered")
    _ARCHS[arch] = (config_cls, model_cls)


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    if spec.config.arch not in _ARCHS:
        raise ValueError(f"model {spec.name!r} uses unregistered architecture {spec.config.arch!r}")
    _REGISTRY[spec.name] = spec
    return spec


def list_models(pattern: str | None = None, *, arch: str | None = None) -> list[str]:
    """Registered model names (in registration order), optionally filtered by a glob pattern
    and by architecture tag (`arch="convnext"` lists without importing the dense models)."""
    import fnmatch

    _load_plugins(arch=arch)
    names = [n for n, s in _REGISTRY.items() if arch is None or s.config.arch == arch]
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_spec(name: str) -> ModelSpec:
    """The registry entry of `name`; `UnknownModelError` (a KeyError) with close names otherwise."""
    if name not in _REGISTRY:
        _load_plugins(name=name)
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else " See `convnext models`."
        raise UnknownModelError(f"unknown model {name!r}.{hint}") from None


def build_model(config: Any) -> nn.Module:
    if config.arch not in _ARCHS:
        _load_plugins(arch=config.arch)
    return _ARCHS[config.arch][1](config)


def config_to_dict(config: Any) -> dict:
    """Plain-dict form of a config (tuples -> lists) with its `arch` tag, for YAML and checkpoints."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    return {"arch": config.arch, **d}


def config_from_dict(d: dict) -> Any:
    d = dict(d)
    arch = d.pop("arch", "convnext")
    if arch not in _ARCHS:
        _load_plugins(arch=arch)
    if arch not in _ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(_ARCHS)})")
    config_cls = _ARCHS[arch][0]
    names = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown {arch} config fields: {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return config_cls(**kwargs)


def _load_plugins(name: str | None = None, arch: str | None = None) -> None:
    """Run the providers the top layer registered (`convnext._providers`) for `name` / `arch`, or all.

    The registry names no module above it: the dense and roadmap models register themselves when
    their module is imported, and `convnext/_registry_plugins.py` says which module provides what.
    """
    for load in take_model_providers(name=name, arch=arch):
        load()


# --------------------------------------------------------------------------------------------
# The ConvNeXt family. Reference numbers: paper Table 1/2/12 (PAPER.md §1.4-1.6) for T/S/B/L/XL
# and isotropic; timm's published stats for atto..nano; ConvNeXt-V2 paper (Table 4) for V2.
# --------------------------------------------------------------------------------------------
register_arch("convnext", ConvNeXtConfig, ConvNeXt)
register_arch("isotropic", IsotropicConfig, IsotropicConvNeXt)

_T = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
_S = dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
_B = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
_L = dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536))
_XL = dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048))
_SMALL = {
    "atto": (dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)), 3.70, 0.55),
    "femto": (dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384)), 5.22, 0.79),
    "pico": (dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512)), 9.05, 1.37),
    "nano": (dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640)), 15.59, 2.46),
}

for _n, (_a, _p, _g) in _SMALL.items():
    register_model(
        ModelSpec(
            f"convnext_{_n}", ConvNeXtConfig(**_a), params_m=_p, gmacs={224: _g}, source="timm",
            description=f"timm's ConvNeXt-{_n.capitalize()}",
        )
    )

for _n, _a, _p, _g, _t1, _t22, _dp in [
    ("tiny", _T, 28.6, {224: 4.5, 384: 13.1}, 82.1, 82.9, 0.1),
    ("small", _S, 50.2, {224: 8.7, 384: 25.5}, 83.1, 84.6, 0.4),
    ("base", _B, 88.6, {224: 15.4, 384: 45.1}, 83.8, 85.8, 0.5),
    ("large", _L, 197.8, {224: 34.4, 384: 101.0}, 84.3, 86.6, 0.5),
    ("xlarge", _XL, 350.2, {224: 60.9, 384: 179.0}, None, 87.0, 0.5),
]:
    register_model(
        ModelSpec(
            f"convnext_{_n}", ConvNeXtConfig(**_a), params_m=_p, gmacs=_g, top1=_t1, top1_22k=_t22,
            train_drop_path=_dp, description=f"ConvNeXt-{_n[0].upper() if _n != 'xlarge' else 'XL'}",
        )
    )

for _n, _dim, _depth, _ls, _p, _g, _t1, _dp in [
    ("small", 384, 18, 0.0, 22.3, 4.3, 79.7, 0.1),
    ("base", 768, 18, 0.0, 87.1, 16.9, 82.0, 0.2),
    ("large", 1024, 36, 1e-6, 305.9, 59.7, 82.6, 0.5),
]:
    register_model(
        ModelSpec(
            f"convnext_isotropic_{_n}", IsotropicConfig(depth=_depth, dim=_dim, layer_scale_init_value=_ls),
            params_m=_p, gmacs={224: _g}, top1=_t1, train_drop_path=_dp,
            description=f"isotropic ConvNeXt-{_n[0].upper()}",
        )
    )

# ConvNeXt V2 (Woo et al. 2023): GRN in the MLP, no layer scale. Reference: V2 paper / timm stats.
for _n, _a, _p, _g in [
    ("atto", _SMALL["atto"][0], 3.7, 0.55),
    ("femto", _SMALL["femto"][0], 5.2, 0.78),
    ("pico", _SMALL["pico"][0], 9.1, 1.37),
    ("nano", _SMALL["nano"][0], 15.6, 2.45),
    ("tiny", _T, 28.6, 4.47),
    ("base", _B, 89.0, 15.4),
    ("large", _L, 198.0, 34.4),
    ("huge", dict(depths=(3, 3, 27, 3), dims=(352, 704, 1408, 2816)), 660.0, 115.0),
]:
    register_model(
        ModelSpec(
            f"convnextv2_{_n}", ConvNeXtConfig(**_a, use_grn=True, layer_scale_init_value=0.0),
            params_m=_p, gmacs={224: _g}, source="convnext-v2",
            description=f"ConvNeXt-V2-{_n.capitalize()}",
        )
    )
