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


def train_checkpoint(path, *, ema: bool = True, labels=("cat", "dog", "eel"), img_size: int = 64,
                     crop_pct: float | None = 1.0, **extra):
    """A small `convnext train`-style checkpoint (convnext_atto, 3 classes) at `path`.

    The raw model prefers class 0 and the EMA model class 2, so which weights were used shows in the
    predictions. Returns (raw model, EMA model or None).
    """
    from convnext.models import config_to_dict, create_model

    raw = randomize_(create_model("convnext_atto", num_classes=len(labels)))
    with torch.no_grad():
        raw.head.bias.copy_(torch.tensor([30.0] + [0.0] * (len(labels) - 1)))
    avg = None
    ckpt = {"format": "convnext-train-v1", "model": raw.state_dict(), "labels": list(labels),
            "model_config": config_to_dict(raw.config), "model_name": "convnext_atto", "epoch": 1,
            "train_config": {"model": "convnext_atto", "img_size": img_size, "crop_pct": crop_pct}}
    if ema:
        avg = randomize_(create_model("convnext_atto", num_classes=len(labels)))
        with torch.no_grad():
            avg.head.bias.copy_(torch.tensor([0.0] * (len(labels) - 1) + [30.0]))
        ckpt["model_ema"] = avg.state_dict()
    ckpt.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return raw, avg
