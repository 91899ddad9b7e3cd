"""COCO fixtures for the dense tests: a small synthetic COCO folder and the real coco128 set."""
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COCO128_TAR = Path(__file__).parents[2] / ".." / "shared" / "data" / "coco128.tar.gz"


def rect_mask(h, w, x0, y0, x1, y1):
    """(h, w) uint8 with ones on rows y0..y1-1, columns x0..x1-1."""
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def compressed_rle(mask):
    from pycocotools import mask as mask_api

    rle = mask_api.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def write_synthetic_coco(root: Path) -> dict:
    """root/annotations/instances_train2017.json + root/train2017/*.png; returns the JSON dict.

    Categories 7 cat, 3 dog, 12 bird (labels by sorted id: dog 1, cat 2, bird 3). Image 11 (48x64):
    a cat polygon, a dog compressed RLE, a crowd bird, two degenerate boxes; image 22 (40x30): a
    bird uncompressed RLE; images 33 (32x32) and 44 (10x100) have no objects.
    """
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    images = [(11, 48, 64), (22, 40, 30), (33, 32, 32), (44, 10, 100)]
    for i, h, w in images:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "train2017" / f"{i}.png")
    anns = [
        dict(image_id=11, category_id=7, bbox=[10, 8, 20, 20], segmentation=[[10, 8, 30, 8, 30, 28, 10, 28]]),
        dict(image_id=11, category_id=3, bbox=[40, 20, 20, 24],
             segmentation=compressed_rle(rect_mask(48, 64, 40, 20, 60, 44))),
        dict(image_id=11, category_id=12, bbox=[0, 30, 30, 18], iscrowd=1,
             segmentation=uncompressed_rle(rect_mask(48, 64, 0, 30, 30, 48))),
        dict(image_id=11, category_id=3, bbox=[50, 5, 0.5, 10], segmentation=[[50, 5, 50.5, 5, 50.5, 15]]),
        dict(image_id=11, category_id=3, bbox=[63.5, 0, 5, 10], segmentation=[[63.5, 0, 64, 0, 64, 10]]),
        dict(image_id=22, category_id=12, bbox=[5, 10, 15, 20],
             segmentation=uncompressed_rle(rect_mask(40, 30, 5, 10, 20, 30))),
    ]
    for k, a in enumerate(anns):
        a.setdefault("iscrowd", 0)
        a.update(id=100 + k, area=float(a["bbox"][2] * a["bbox"][3]))
    data = {
        "images": [dict(id=i, file_name=f"{i}.png", height=h, width=w) for i, h, w in images],
        "annotations": anns,
        "categories": [dict(id=7, name="cat"), dict(id=3, name="dog"), dict(id=12, name="bird")],
    }
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return data


@pytest.fixture
def synthetic_coco(tmp_path) -> Path:
    root = tmp_path / "coco"
    write_synthetic_coco(root)
    return root


@pytest.fixture(scope="session")
def coco128(tmp_path_factory) -> Path:
    """coco128 extracted once per session (../shared/data/coco128.tar.gz); skips where absent."""
    if not COCO128_TAR.is_file():
        pytest.skip("../shared/data/coco128.tar.gz not available")
    dest = tmp_path_factory.mktemp("coco128")
    with tarfile.open(COCO128_TAR) as tar:
        # the "data" filter refuses links and paths leaving dest (Python >= 3.10.12 / 3.11.4)
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest / "coco128"
