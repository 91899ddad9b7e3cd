"""Names the `convnext bench` parser offers, kept free of torch so that building the parser stays fast."""
from __future__ import annotations

__all__ = ["PEERS", "RUNTIMES", "COMPARE_NAMES", "DTYPE_NAMES", "MODES"]

PEERS = ("timm", "torchvision")  # libraries whose ConvNeXt ours is timed against
RUNTIMES = ("onnxruntime", "openvino", "openvino-f32")  # runtimes running our ONNX export of ours' weights
COMPARE_NAMES = PEERS + RUNTIMES
# auto: bf16 on CPUs with AMX-BF16 / AVX512-BF16 (ours on its bf16 fast path, peers under bf16
# autocast), else fp32; fp32; bf16 (ours bf16 end to end on CPU inference, else autocast); fp16 autocast
DTYPE_NAMES = ("fp32", "bf16", "fp16", "auto")
MODES = ("infer", "train")  # forward only; forward + backward + AdamW step
