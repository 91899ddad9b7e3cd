"""Names the `convnext bench` parser offers, kept free of torch so that building the parser stays fast."""
from __future__ import annotations

__all__ = ["PEERS", "DTYPE_NAMES", "MODES"]

PEERS = ("timm", "torchvision")  # libraries whose ConvNeXt ours is timed against
DTYPE_NAMES = ("fp32", "bf16", "fp16")  # fp32, or bf16 / fp16 autocast
MODES = ("infer", "train")  # forward only; forward + backward + AdamW step
