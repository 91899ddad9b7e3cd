"""Names the `convnext bench` parser offers, kept free of torch so that building the parser stays fast."""
from __future__ import annotations

__all__ = ["PEERS", "RUNTIMES", "COMPARE_NAMES", "DTYPE_NAMES", "MODES"]

PEERS = ("timm", "torchvision")  # libraries whose ConvNeXt ours is timed against
# CPU deployment targets built from ours' weights: runtimes running our ONNX export, and ours as an
# int8 PT2E program (calibrated on random images: its speed, not its accuracy)
RUNTIMES = ("onnxruntime", "openvino", "openvino-f32", "int8")
COMPARE_NAMES = PEERS + RUNTIMES
# auto: bf16 on CPUs with AMX-BF16 / AVX512-BF16 (ours on its bf16 fast path, peers under bf16
# autocast), else fp32; fp32; bf16 (ours bf16 end to end on CPU inference, else autocast); fp16 autocast
DTYPE_NAMES = ("fp32", "bf16", "fp16", "auto")
MODES = ("infer", "train")  # forward only; forward + backward + AdamW step
