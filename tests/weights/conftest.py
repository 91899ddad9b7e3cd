import pytest
import torch
from torch import nn


@torch.no_grad()
def randomize_(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Perturb every parameter (LN affine, biases, layer scale, GRN too) so a mis-mapped tensor shows in the logits."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * scale)
    return model.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64)
