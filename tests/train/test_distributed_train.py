"""The same entry point under torchrun: 2 CPU processes (gloo) equal 1 process with the same global batch."""
import json
import os
import subprocess
import sys

import pytest
import torch

from convnext.train import load_config, run

# Deterministic pipeline: no RandAugment / erasing / Mixup / CutMix / flips / drop path, and a
# RandomResizedCrop that always keeps the whole image, so both runs see identical pixels.
COMMON = dict(model_overrides={"stem_patch_size": 1, "depths": [1, 1], "dims": [8, 16]}, train_subset=64, epochs=1,
              randaug=None, reprob=0.0, mixup=0.0, cutmix=0.0, drop_path=0.0, hflip=0.0, scale=(1.0, 1.0),
              num_workers=0, threads=1, progress=False, seed=0, adapt=False)


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, run(load_config("digits", batch_size=16, output=str(out), **COMMON))


@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])  # DDP stays in the fast suite
def test_two_gloo_processes_match_one_process(tmp_path, single_process_run, mode):
    single_dir, single = single_process_run

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "convnext", "train",
           "--recipe", "digits", "--batch-size", "8", "--output", str(tmp_path / "ddp"),
           "--model-overrides", json.dumps(COMMON["model_overrides"]), "--train-subset", "64", "--epochs", "1",
           "--randaug", "none", "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--drop-path", "0", "--hflip", "0",
           "--scale", "1", "1", "--num-workers", "0", "--threads", "1", "--no-progress", "--seed", "0", "--no-adapt"]
    if mode == "fsdp":
        cmd.append("--fsdp")  # FSDP2 shards every Block; the checkpoint holds the gathered full weights
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    dist = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert dist["world_size"] == 2 and dist["effective_batch"] == 16 and single["effective_batch"] == 16
    a = torch.load(single_dir / "checkpoint-last.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "checkpoint-last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    # Metrics are reduced over both ranks' shards of the 360 test images.
    assert abs(dist["top1"] - single["top1"]) < 0.3


def test_gradient_accumulation_matches_the_large_batch(tmp_path, single_process_run):
    single_dir, single = single_process_run
    accum = run(load_config("digits", batch_size=8, accum_steps=2, output=str(tmp_path / "accum"), **COMMON))
    assert accum["effective_batch"] == single["effective_batch"] == 16
    a = torch.load(single_dir / "checkpoint-last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "accum" / "checkpoint-last.pt", weights_only=True)["model"]
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-6, msg=k)
