"""Count inductor's transposing copies in the CPU code of a compiled model, ours vs timm.

    python benchmarks/inductor_transposes.py --model convnext_atto --img-size 64

bf16 autocast, batch 2, inference, both models and the input in channels_last. Prints JSON:
the number of `transpose_mxn` calls in the generated C++, split by element type (fp32 ones are
activations stored in a different order than they are read; bf16 ones here convert weights/input).
"""
from __future__ import annotations

import argparse
import json

import torch
from torch._inductor.utils import run_and_get_code


def count(model: torch.nn.Module, img_size: int) -> dict:
    torch._dynamo.reset()
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, codes = run_and_get_code(torch.compile(model), x)
    code = "\n".join(codes)
    return {"fp32": code.count("transpose_mxn<float"), "bf16": code.count("transpose_mxn<at::BFloat16"),
            "all": code.count("transpose_mxn<")}


def main() -> None:
    import timm

    from convnext.models import create_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convnext_atto")
    p.add_argument("--img-size", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    print(json.dumps({"model": args.model, "img_size": args.img_size, "torch": torch.__version__,
                      "ours": count(create_model(args.model, num_classes=10), args.img_size),
                      "timm": count(timm.create_model(args.model, num_classes=10), args.img_size)}))


if __name__ == "__main__":
    main()
