"""convnext: the ConvNeXt family of "A ConvNet for the 2020s" (Liu et al., CVPR 2022).

Public names are imported on first use (`convnext._lazy`): `import convnext` does not import
torch, so the `convnext` command starts fast.
"""
from __future__ import annotations

from . import _registry_plugins
from ._lazy import lazy_attributes

_registry_plugins.install()  # dense / roadmap models and tasks, registered lazily from the top (imports point down)

__version__ = "0.1.0"

# Public name -> the module that defines it (imported when the name is first used).
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(
        ("ConvNeXt", "ConvNeXtConfig", "IsotropicConfig", "IsotropicConvNeXt", "count_flops", "count_params",
         "get_spec", "list_models", "optimize_for_inference"),
        "convnext.models",
    ),
    # Build + load weights (convnext.api composes models/ and weights/); using a trained model
    # (convnext.inference): load any checkpoint of any task, predict.
    "create_model": "convnext.api",
    **dict.fromkeys(("Loaded", "load", "predict"), "convnext.api"),
}

__all__ = [*_PUBLIC, "__version__"]
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
