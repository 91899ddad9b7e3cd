#!/usr/bin/env bash
# The CPU deployment figures of docs/benchmarks.md ("CPU deployment"): our fastest PyTorch path vs
# timm, ONNX Runtime and OpenVINO on the same weights, int8, bf16 training. Run from the repo root:
#   bash benchmarks/cpu_deploy_suite.sh [OUT_DIR]   (default benchmarks/results/deploy)
set -euo pipefail
OUT=${1:-benchmarks/results/deploy}
mkdir -p "$OUT"
B="python -m convnext bench --model convnext_tiny --img-size 224 --no-progress"
# inference, batch 16 and 1: --dtype auto (the default) picks bf16 on AMX/AVX512-BF16 CPUs, fp32 elsewhere
$B --batch-size 16 --compare timm,onnxruntime,openvino,openvino-f32 --repeats 10 --json "$OUT/infer_b16_paths.json"
$B --batch-size 1 --compare timm,onnxruntime,openvino --repeats 20 --json "$OUT/infer_b1_paths.json"
# exact fp32, ours as built (the earlier "ours vs timm" setting), with both allocator settings
$B --batch-size 16 --dtype fp32 --compare timm,torchvision --repeats 10 --json "$OUT/infer_b16_fp32.json"
$B --batch-size 16 --dtype fp32 --compare timm,torchvision --repeats 10 --allocator default \
  --json "$OUT/infer_b16_fp32_default_allocator.json"
# int8 vs our fp32 and bf16 paths, interleaved (random-weight ConvNeXt-T)
python benchmarks/int8_speed.py --rounds 8 --convs --json "$OUT/int8_speed.json"
# where the time of both programs goes, and the int8 speed-up bound that follows from the raw GEMM ratio
python benchmarks/int8_bound.py --iters 4 --json "$OUT/int8_bound.json"
# how much of the gap is GELU: int8 with ReLU in place of GELU (a bound, not a model)
python benchmarks/int8_speed.py --relu-bound --rounds 6 --json "$OUT/int8_relu_bound.json"
# the GELU epilogue's cost, a polynomial GELU, and the uint8 table route's pass (accuracy: int8_gelu.py table)
python benchmarks/int8_gelu.py micro
python benchmarks/int8_gelu.py poly --max-autotune
# int8 export on real images: PT2E static quantization calibrated / compared on CIFAR-10 test JPEGs
DATA=${DATA:-/tmp/cifar10-jpeg}
[ -d "$DATA/test" ] || { mkdir -p "$DATA"; tar -xzf ../shared/data/cifar10-test-jpeg.tar.gz -C "$DATA"; }
TMP=$(mktemp -d)
python -c "import torch; from convnext.models import create_model; torch.manual_seed(0); \
torch.save(create_model('convnext_tiny').state_dict(), '$TMP/tiny_random.pth')"
python -m convnext export convnext_tiny "$TMP/tiny_int8.pt2" --checkpoint "$TMP/tiny_random.pth" --format int8 \
  --calib-data "$DATA/test" --calib-images 64 --eval-images 64 --batch-size 16 --force | tee "$OUT/export_int8.txt"
rm -rf "$TMP"
# training step (forward + backward + AdamW), fp32 vs bf16 autocast, ours vs timm
$B --mode train --batch-size 16 --dtype fp32 --compare timm --repeats 6 --warmup 1 --json "$OUT/train_b16_fp32.json"
$B --mode train --batch-size 16 --dtype bf16 --compare timm --repeats 6 --warmup 1 --json "$OUT/train_b16_bf16.json"
