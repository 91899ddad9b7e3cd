#!/usr/bin/env bash
# GPU protocol of issue 5 (H100, bf16 autocast, channels_last, batch 256, ConvNeXt-T).
# NOT MEASURED: the machine these docs were written on has no GPU (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv
for MODE in infer train; do
  convnext bench --device cuda --model convnext_tiny --batch-size 256 --dtype bf16 --channels-last \
      --mode $MODE --iters 10 --repeats 10 --compare timm,torchvision --json "$OUT/h100_${MODE}_eager.json"
  convnext bench --device cuda --model convnext_tiny --batch-size 256 --dtype bf16 --channels-last --compile \
      --mode $MODE --iters 10 --repeats 10 --compare timm,torchvision --json "$OUT/h100_${MODE}_compiled.json"
done
# The paper's protocol (batch 64, fp32 + TF32, channels_last), printed next to its V100/A100 figures.
convnext bench --device cuda --model convnext_tiny --preset paper --iters 10 --repeats 10 --json "$OUT/h100_paper_preset.json"
