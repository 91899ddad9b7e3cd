"""ConvNeXt model definitions: layers, hierarchical and isotropic networks, registry, FLOPs."""
from .convnext import ConvNeXt, ConvNeXtConfig
from .factory import create_model
from .flops import count_flops, count_params
from .inference import optimize_for_inference
from .isotropic import IsotropicConfig, IsotropicConvNeXt
from .layers import GRN, Block, LayerNorm2d
from .registry import ModelSpec, build_model, config_from_dict, config_to_dict, get_spec, list_models, register_model

__all__ = [
    "Block", "ConvNeXt", "ConvNeXtConfig", "GRN", "IsotropicConfig", "IsotropicConvNeXt", "LayerNorm2d",
    "ModelSpec", "build_model", "config_from_dict", "config_to_dict", "count_flops", "count_params",
    "create_model", "get_spec", "list_models", "optimize_for_inference", "register_model",
]
