"""The dense evaluation resizes are mmcv's: `rescale_size`'s sizes and cv2.INTER_LINEAR's uint8 pixels
(mmdet 3 / mmseg 1 test pipelines: LoadImageFromFile (cv2) -> Resize(keep_ratio=True) -> imrescale)."""
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from convnext.data import preprocess as P
from convnext.dense.coco import InstanceMasks

COCO128_TAR = Path(__file__).parents[2] / ".." / "shared" / "data" / "coco128.tar.gz"

# By hand from mmcv's rule at scale (1333, 800): factor = min(1333 / long, 800 / short), each side
# int(side * factor + 0.5). torchvision's Resize(800, max_size=1333) floors the long side instead.
MMCV_SIZES = [
    ((480, 640), (800, 1067)),  # factor 800/480: 640 * 5/3 = 1066.67 -> 1067 (torchvision: 1066)
    ((375, 500), (800, 1067)),  # 800/375: 500 * 2.1333 = 1066.67 -> 1067
    ((427, 640), (800, 1199)),  # 800/427 = 1.87354: 640 * 1.87354 = 1199.06 -> 1199
    ((612, 612), (800, 800)),   # 800/612 on both sides
    ((300, 1000), (400, 1333)),  # the long side binds: 1333/1000, 300 * 1.333 = 399.9 -> 400
]


def _image(h, w, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


def _cv2_resize(image, size):
    cv2 = pytest.importorskip("cv2")
    arr = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    return torch.from_numpy(cv2.resize(arr, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1)


@pytest.mark.parametrize("hw,expected", MMCV_SIZES)
def test_detection_test_size_is_mmcvs_rescale_size(hw, expected):
    assert P.detection_scale(800) == (1333, 800)
    assert P.rescale_size(*hw, P.detection_scale(800)) == expected
    assert P.detection_eval_transform(800)(_image(*hw)).shape[-2:] == expected


def test_detection_scale_follows_img_size():
    assert P.detection_scale(32) == (53, 32)  # round(1333 * 32 / 800) = round(53.32)
    assert P.detection_eval_transform(32)(_image(48, 64)).shape[-2:] == (32, 43)  # 64 * 2/3 = 42.67 -> 43
    assert P.detection_eval_transform(32)(_image(10, 100)).shape[-2:] == (5, 53)  # 53/100: 10 * 0.53 -> 5


@pytest.mark.parametrize("hw,size", [((480, 640), (800, 1067)), ((48, 64), (32, 43)), ((333, 517), (512, 795))])
def test_imresize_is_cv2_inter_linear_of_the_uint8_image(hw, size):
    image = _image(*hw, seed=hw[0])
    out = P.imresize(image, size)
    assert out.dtype == torch.uint8 and torch.equal(out, _cv2_resize(image, size))


@pytest.mark.parametrize("hw,img_size,size", [((480, 640), 800, (800, 1067)), ((48, 64), 32, (32, 43))])
def test_detection_transform_feeds_cv2s_pixels(hw, img_size, size):
    image = _image(*hw, seed=1)
    out = P.detection_eval_transform(img_size)(image)
    assert out.dtype == torch.float32 and torch.equal((out * 255).round().to(torch.uint8), _cv2_resize(image, size))


def test_segmentation_eval_image_feeds_cv2s_pixels():
    image = _image(333, 517, seed=2)  # base scale (2048, 512): factor 512/333, 517 * 1.5375 = 794.9 -> 795
    expected = P.normalize_255(_cv2_resize(image, (512, 795)).float())
    assert torch.equal(P.segmentation_eval_image(image.float(), (2048, 512)), expected)  # as the dataset hands it
    assert torch.equal(P.segmentation_eval_image(image, (2048, 512)), expected)


def test_torch_fallback_is_within_one_level_of_cv2(monkeypatch):
    image = _image(375, 500, seed=3)
    for size in [(800, 1067), (64, 85), (375, 500)]:
        ref = _cv2_resize(image, size).int()
        monkeypatch.setattr(P, "_cv2", lambda: None)
        out = P.imresize(image, size)
        monkeypatch.undo()
        assert out.dtype == torch.uint8 and out.shape == ref.shape
        assert (out.int() - ref).abs().max() <= 1


def test_boxes_and_masks_move_with_the_image():
    image = tv_tensors.Image(_image(480, 640))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 8.0, 30.0, 28.0], [0.0, 0.0, 640.0, 480.0]]),
                                     format="XYXY", canvas_size=(480, 640))
    masks = torch.zeros(2, 480, 640, dtype=torch.uint8)
    masks[0, 8:28, 10:30] = 1
    masks[1] = 1
    labels = torch.tensor([3, 1])
    out, t = P.detection_eval_transform(800)(image, {"boxes": boxes, "masks": InstanceMasks(masks), "labels": labels})
    assert out.shape == (3, 800, 1067) and out.dtype == torch.float32
    factors = torch.tensor([1067 / 640, 800 / 480, 1067 / 640, 800 / 480])  # mmdet's scale_factor: new / old
    assert torch.allclose(t["boxes"], boxes.as_subclass(torch.Tensor) * factors)
    assert t["boxes"].canvas_size == (800, 1067)
    assert isinstance(t["masks"], InstanceMasks) and t["masks"].shape == (2, 800, 1067)
    assert bool(t["masks"][1].all())
    ys, xs = torch.nonzero(t["masks"][0], as_tuple=True)
    extent = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert torch.allclose(extent, t["boxes"][0], atol=1)  # the nearest-resized mask stays on its box
    assert torch.equal(t["labels"], labels)


def _coco128_jpegs(n):
    if not COCO128_TAR.is_file():
        pytest.skip("../shared/data/coco128.tar.gz not available")
    with tarfile.open(COCO128_TAR) as tar:
        out = []
        for m in tar:
            if m.name.endswith(".jpg"):
                out.append((m.name, tar.extractfile(m).read()))
                if len(out) == n:
                    return out
    return out


def test_our_jpeg_decoders_give_cv2s_pixels_on_coco_images():
    """CocoDataset (torchvision's decoder) and SegmentationFolder (Pillow + to_rgb) read the uint8 RGB
    array mmcv's cv2.imdecode(IMREAD_COLOR) gives (BGR flipped), grey JPEGs included (the 12th is one)."""
    cv2 = pytest.importorskip("cv2")
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image

    from convnext.data.transforms import to_rgb

    for name, data in _coco128_jpegs(12):
        ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        tv = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        with Image.open(io.BytesIO(data)) as img:
            pil = np.array(to_rgb(img), dtype=np.uint8)
        assert np.array_equal(tv.permute(1, 2, 0).numpy(), ref), name
        assert np.array_equal(pil, ref), name
