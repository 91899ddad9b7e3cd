"""convnext: the ConvNeXt family of "A ConvNet for the 2020s" (Liu et al., CVPR 2022)."""
from .models import (
    ConvNeXt,
    ConvNeXtConfig,
    IsotropicConfig,
    IsotropicConvNeXt,
    count_flops,
    count_params,
    create_model,
    get_spec,
    list_models,
    optimize_for_inference,
)

__version__ = "0.1.0"

__all__ = [
    "ConvNeXt", "ConvNeXtConfig", "IsotropicConfig", "IsotropicConvNeXt", "count_flops", "count_params",
    "create_model", "get_spec", "list_models", "optimize_for_inference", "__version__",
]
