"""Real COCO images (coco128): the detectors and UperNet take optimizer steps with a falling loss.

Skipped where ../shared/data/coco128.tar.gz is absent. The same batch is stepped on repeatedly, so
the loss must fall (the models fit it); the first and last two losses are compared.
"""
import pytest
import torch

import convnext
from convnext.dense.coco import build_coco_dataset, collate_detection


def _fit(model, images, targets, steps, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _coco_batch(coco128, n=2, size=192):
    ds = build_coco_dataset(coco128, "train", img_size=size, train=False)
    assert len(ds) == 128 and len(ds.classes) == 80
    picked = [i for i, img in enumerate(ds.images) if 1 <= len(ds.coco.getAnnIds(imgIds=img["id"], iscrowd=False)) <= 4]
    return collate_detection([ds[i] for i in picked[:n]])


@pytest.mark.slow  # 40-60 s each on 2 CPU cores; the loop's detection test (synthetic COCO) is in the default suite
@pytest.mark.parametrize("name", ["mask_rcnn_convnext_atto", "cascade_mask_rcnn_convnext_atto"])
def test_detector_loss_falls_on_coco128_images(coco128, name):
    torch.manual_seed(0)
    images, targets = _coco_batch(coco128)
    model = convnext.create_model(name, num_classes=80, fpn_channels=64, rois_per_image=64)
    losses = _fit(model, images, targets, steps=8, lr=3e-4)
    assert all(map(lambda v: v == v, losses))  # finite (no NaN)
    assert sum(losses[-2:]) < 0.85 * sum(losses[:2]), losses


def test_upernet_loss_falls_on_rasterised_coco128(coco128, tmp_path):
    from convnext.dense.segmentation_data import SegmentationFolder, coco_to_semantic, collate_segmentation

    info = coco_to_semantic(coco128 / "annotations" / "instances_train2017.json", coco128 / "train2017",
                            tmp_path / "ade")
    assert info["images"] == 128 and info["num_classes"] == 80
    ds = SegmentationFolder(tmp_path / "ade", "training", crop_size=96, num_classes=80)
    torch.manual_seed(0)
    images, labels = collate_segmentation([ds[i] for i in range(2)])
    model = convnext.create_model("upernet_convnext_atto", num_classes=80, channels=64, aux_channels=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss = sum(model(images, labels).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-2:]) < 0.85 * sum(losses[:2]), losses
