"""Published ImageNet inference throughputs (img/s) of the paper, for the `--preset paper` printout.

Table 1 (V100, "following Swin"; A100 = TF32 + channels-last, PyTorch 1.10, App. E) and Table 2
(isotropic models, V100), as transcribed in PAPER.md §1.6 / §4.4. These are the authors'
measurements on *their* GPUs, printed only as a reference next to ours, never mixed into ratios.
"""
from __future__ import annotations

__all__ = ["PAPER_PROTOCOL", "paper_throughput"]

PAPER_PROTOCOL = dict(batch_size=64, img_size=224, dtype="fp32")

# (model, resolution) -> {"V100": img/s, "A100": img/s}
_PAPER_THROUGHPUT: dict[tuple[str, int], dict[str, float]] = {
    ("convnext_tiny", 224): {"V100": 774.7, "A100": 1943.5},
    ("convnext_tiny", 384): {"V100": 282.8},
    ("convnext_small", 224): {"V100": 447.1, "A100": 1275.3},
    ("convnext_small", 384): {"V100": 163.5},
    ("convnext_base", 224): {"V100": 292.1, "A100": 969.0},
    ("convnext_base", 384): {"V100": 95.7, "A100": 336.6},
    ("convnext_large", 224): {"V100": 146.8, "A100": 611.5},
    ("convnext_large", 384): {"V100": 50.4, "A100": 211.4},
    ("convnext_xlarge", 224): {"V100": 89.3, "A100": 424.4},
    ("convnext_xlarge", 384): {"V100": 30.2, "A100": 147.4},
    ("convnext_isotropic_small", 224): {"V100": 1038.7},
    ("convnext_isotropic_base", 224): {"V100": 320.1},
    ("convnext_isotropic_large", 224): {"V100": 94.4},
}


def paper_throughput(model: str, img_size: int) -> dict[str, float]:
    """The paper's img/s for `model` at `img_size` per GPU ({} when the paper does not report it)."""
    return dict(_PAPER_THROUGHPUT.get((model, img_size), {}))
