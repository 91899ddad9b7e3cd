#!/usr/bin/env bash
# Reproduces the CPU figures of docs/benchmarks.md (fp32, ConvNeXt-T, batch 16, 224px).
# Each command runs ours and the peers in one process with identical weights, checks the logits
# agree (max |diff| <= 1e-4) and times interleaved rounds. JSON reports land in benchmarks/results/.
# Takes ~30 min on a 2-core machine; run it on an otherwise idle machine and note `uptime`.
set -uo pipefail  # keep going when one benchmark fails; each prints its own error
cd "$(dirname "$0")/.."
OUT=benchmarks/results
mkdir -p "$OUT"
uptime

# Inference, eager: the default model, and with optimize_for_inference (layer scale folded once).
convnext bench --no-progress --model convnext_tiny --batch-size 16 --repeats 10 --compare timm,torchvision --json "$OUT/cpu_infer_eager.json"
convnext bench --no-progress --model convnext_tiny --batch-size 16 --repeats 8 --compare timm --optimize-ours --json "$OUT/cpu_infer_eager_optimized.json"
# Inference, torch.compile (default inductor backend) for every implementation.
convnext bench --no-progress --model convnext_tiny --batch-size 16 --repeats 8 --compare timm --compile --json "$OUT/cpu_infer_compiled.json"
# Training step: forward + backward + AdamW.
convnext bench --no-progress --model convnext_tiny --batch-size 16 --repeats 8 --compare timm --mode train --json "$OUT/cpu_train_eager.json"
# Single-threaded inference (less sensitive to other processes on a shared machine).
OMP_NUM_THREADS=1 convnext bench --no-progress --model convnext_tiny --batch-size 16 --repeats 6 --compare timm --json "$OUT/cpu_infer_eager_1thread.json"
# Input pipeline: the paper's train transform, images/s per CPU worker, on CIFAR-10 JPEGs.
convnext bench --no-progress --mode data --data ../shared/data/cifar10-train-jpeg.tar.gz --images 500 --repeats 3 --json "$OUT/cpu_data.json"
uptime
