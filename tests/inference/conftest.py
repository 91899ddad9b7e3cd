"""Small checkpoints of every task written as `convnext train` writes them (random weights, atto)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

FAST_DET = {"fpn_channels": 32, "rois_per_image": 32}
FAST_SEG = {"channels": 32, "aux_channels": 16}


def dense_checkpoint(path, name, labels, img_size, overrides, seed=0):
    """A detection / segmentation checkpoint in the `convnext train` format (random weights)."""
    from convnext.models import config_to_dict, create_model

    torch.manual_seed(seed)
    model = create_model(name, num_classes=len(labels), **overrides)
    task = "detection" if "rcnn" in name else "segmentation"
    torch.save({"format": "convnext-train-v1", "task": task, "model": model.state_dict(),
                "model_config": config_to_dict(model.config), "model_name": name, "labels": list(labels),
                "train_config": {"img_size": img_size, "model": name, "task": task, "batch_size": 2}}, path)
    return path


def write_ade(root, n_val=3, size=(72, 88), classes=3, seed=0):
    """An ADE20K-layout folder (validation split only): random images, labels 0 (other) .. classes."""
    rng = np.random.default_rng(seed)
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
    for i in range(n_val):
        label = np.kron(rng.integers(0, classes + 1, (size[0] // 8, size[1] // 8)), np.ones((8, 8))).astype(np.uint8)
        image = (label[..., None] * 60 + rng.integers(0, 40, (*size, 3))).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / "validation" / f"v{i}.jpg")
        Image.fromarray(label).save(root / "annotations" / "validation" / f"v{i}.png")
    return root


def write_coco_val(root, seed=0):
    """A COCO-layout folder with a val2017 split of 3 images (categories 7 cat, 3 dog)."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images = [(1, 60, 80), (2, 64, 48), (3, 50, 50)]
    anns = []
    for i, h, w in images:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "val2017" / f"{i}.png")
        anns.append(dict(id=10 + i, image_id=i, category_id=7 if i % 2 else 3, bbox=[5, 5, 20, 20], area=400.0,
                         iscrowd=0, segmentation=[[5, 5, 25, 5, 25, 25, 5, 25]]))
    data = {"images": [dict(id=i, file_name=f"{i}.png", height=h, width=w) for i, h, w in images],
            "annotations": anns, "categories": [dict(id=7, name="cat"), dict(id=3, name="dog")]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def seg_setup(tmp_path):
    data = write_ade(tmp_path / "ade")
    ckpt = dense_checkpoint(tmp_path / "seg.pt", "upernet_convnext_atto", ["0", "1", "2"], 64, FAST_SEG)
    return data, ckpt


@pytest.fixture
def det_setup(tmp_path):
    data = write_coco_val(tmp_path / "coco")
    ckpt = dense_checkpoint(tmp_path / "det.pt", "mask_rcnn_convnext_atto", ["dog", "cat"], 64, FAST_DET)
    return data, ckpt
