"""Our detectors follow mmdet's formulas (mmdet 3.x, read from its source; no OpenMMLab package is
installed): the anchor generator, the mask paste of `FCNMaskHead` and the mask targets of
`mask_target`. Expected numbers are worked out by hand from the formulas, in the comments."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image

import convnext
from convnext.dense.cascade import mask_targets
from convnext.dense.detection import MMDetAnchorGenerator, paste_masks
from convnext.errors import ConfigError

R2 = math.sqrt(2.0)


def test_base_anchors_are_mmdets_float_corners():
    # mmdet: h_ratio = sqrt(r), w_ratio = 1 / h_ratio, w = stride * w_ratio * 8, corners -w/2 .. w/2
    gen = MMDetAnchorGenerator((4, 8, 16, 32, 64), (0.5, 1.0, 2.0), (8.0,))
    s4 = gen.cell_anchors[0]
    # ratio 0.5: w = 4 * sqrt(2) * 8 = 45.2548, h = 4 / sqrt(2) * 8 = 22.6274; ratio 1: 32 x 32; ratio 2: transposed
    want = torch.tensor([[-16 * R2, -8 * R2, 16 * R2, 8 * R2], [-16.0, -16.0, 16.0, 16.0],
                         [-8 * R2, -16 * R2, 8 * R2, 16 * R2]])
    assert torch.allclose(s4, want, atol=1e-5, rtol=0)
    assert s4[0, 0].item() == pytest.approx(-22.627417, abs=1e-5)  # not rounded to -23 (torchvision)
    # stride 64: 512 x 512 for ratio 1, 724.08 x 362.04 for ratio 0.5
    assert torch.allclose(gen.cell_anchors[4][1], torch.tensor([-256.0, -256.0, 256.0, 256.0]))
    assert torch.allclose(gen.cell_anchors[4][0], torch.tensor([-256 * R2, -128 * R2, 256 * R2, 128 * R2]), atol=1e-4)
    assert gen.num_anchors_per_location() == [3] * 5


def test_anchor_grid_order_and_fixed_strides():
    gen = MMDetAnchorGenerator((4, 8, 16, 32, 64), (0.5, 1.0, 2.0), (8.0,))
    # an 800 x 1216 padded batch: levels 200x304, 100x152, 50x76, 25x38 and P6 = 13x19 (ceil of 25/2)
    sizes = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    feats = [torch.zeros(1, 1, h, w) for h, w in sizes]
    (anchors,) = gen(ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)]), feats)
    assert anchors.shape == (3 * sum(h * w for h, w in sizes), 4)
    # level 0, location (y=1, x=2), ratio 1 (index 1): row-major locations, then ratios:
    # index (1 * 304 + 2) * 3 + 1; centre (2 * 4, 1 * 4) = (8, 4); corners (8 - 16, 4 - 16, 8 + 16, 4 + 16)
    assert anchors[(1 * 304 + 2) * 3 + 1].tolist() == [-8.0, -12.0, 24.0, 20.0]
    # last anchor of P6: location (12, 18) at mmdet's stride 64 -> centre (1152, 768); torchvision
    # would use 800 // 13 = 61 for the rows (centre y 732)
    last = anchors[-1]  # ratio 2: w = 64 / sqrt(2) * 8 = 362.04, h = 724.08
    assert ((last[0] + last[2]) / 2).item() == pytest.approx(1152.0)
    assert ((last[1] + last[3]) / 2).item() == pytest.approx(768.0)
    assert (last[2] - last[0]).item() == pytest.approx(256 * R2, abs=1e-3)


def test_detector_default_is_mmdet_and_torchvision_is_an_option():
    model = convnext.create_model("mask_rcnn_convnext_atto", num_classes=3, fpn_channels=32)
    assert model.config.anchors == "mmdet" and model.config.mask_paste == "mmdet"
    assert isinstance(model.rpn.anchor_generator, MMDetAnchorGenerator)
    tv = convnext.create_model("mask_rcnn_convnext_atto", num_classes=3, fpn_channels=32, anchors="torchvision")
    assert type(tv.rpn.anchor_generator).__name__ == "AnchorGenerator"
    assert tv.rpn.anchor_generator.cell_anchors[0][0].tolist() == [-23.0, -11.0, 23.0, 11.0]  # rounded
    with pytest.raises(ConfigError, match="anchors"):
        convnext.create_model("mask_rcnn_convnext_atto", anchors="rounded")
    with pytest.raises(ConfigError, match="mask_paste"):
        convnext.create_model("mask_rcnn_convnext_atto", mask_paste="nearest")


# A 2x2 mask in the float box (x0, y0, x1, y1) = (2, 1, 6, 3) of a 5 x 8 image. mmdet's
# `_do_paste_mask`: u = (x + 0.5 - x0) / (x1 - x0) * 2 - 1, then grid_sample (align_corners=False),
# whose pixel index is (u + 1) * 2 / 2 - 0.5 = (x - 2.5) / 2 for x = 0..7:
#   -1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 1.75, 2.25  -> weights on (col0, col1), zeros outside:
#   (0, 0), (.25, 0), (.75, 0), (.75, .25), (.25, .75), (0, .75), (0, .25), (0, 0)
# rows: index y - 1 for y = 0..4: only y = 1 (row 0) and y = 2 (row 1) are non-zero.
MASK = torch.tensor([[0.2, 0.4], [0.6, 1.0]])
BOX = torch.tensor([2.0, 1.0, 6.0, 3.0])
WANT = torch.tensor([
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0.05, 0.15, 0.25, 0.35, 0.30, 0.10, 0],
    [0, 0.15, 0.45, 0.70, 0.90, 0.75, 0.25, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
])


def test_mask_paste_is_mmdets_do_paste_mask():
    out = paste_masks(MASK[None, None], BOX[None], (5, 8))
    assert out.shape == (1, 1, 5, 8) and out.dtype == torch.float32
    assert torch.allclose(out[0, 0], WANT, atol=1e-6)
    binary = out[0, 0] >= 0.5  # mmdet's mask_thr_binary
    assert binary.nonzero().tolist() == [[2, 3], [2, 4], [2, 5]]
    # torchvision's legacy paste (integer box + 1 px, padded mask, bilinear resize) is another image
    assert not torch.allclose(paste_masks_in_image(MASK[None, None], BOX[None], (5, 8))[0, 0], WANT, atol=0.05)


def _full_image_paste(masks, boxes, h, w):
    """mmdet's paste on the whole image (its GPU path, skip_empty=False), straight from the formula."""
    x0, y0, x1, y1 = boxes.split(1, dim=1)  # (K, 1) each
    u = (torch.arange(w, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1  # (K, W)
    v = (torch.arange(h, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1  # (K, H)
    grid = torch.stack([u[:, None, :].expand(-1, h, -1), v[:, :, None].expand(-1, -1, w)], dim=3)
    return F.grid_sample(masks, grid, align_corners=False)


def test_mask_paste_window_equals_the_full_image_paste():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 1, 28, 28, generator=g)
    xy = torch.rand(20, 2, generator=g) * torch.tensor([90.0, 60.0]) - 10  # some boxes cross the border
    boxes = torch.cat([xy, xy + 1 + torch.rand(20, 2, generator=g) * 60], 1)
    ours = paste_masks(masks, boxes, (64, 96))
    assert torch.allclose(ours, _full_image_paste(masks, boxes, 64, 96), atol=1e-6)


def test_detector_output_uses_the_configured_paste():
    model = convnext.create_model("mask_rcnn_convnext_atto", num_classes=3, fpn_channels=32).eval()
    result = [{"boxes": BOX[None].clone(), "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.long),
               "masks": MASK[None, None]}]
    out = model.transform.postprocess([dict(r) for r in result], [(5, 8)], [(5, 8)])
    assert torch.allclose(out[0]["masks"][0, 0], WANT, atol=1e-6)
    # pasted at another output size: boxes scaled first (mmdet rescale=True), then pasted there
    out = model.transform.postprocess([dict(r) for r in result], [(5, 8)], [(10, 16)])
    assert out[0]["boxes"][0].tolist() == [4.0, 2.0, 12.0, 6.0] and out[0]["masks"].shape == (1, 1, 10, 16)
    tv = convnext.create_model("mask_rcnn_convnext_atto", num_classes=3, fpn_channels=32,
                               mask_paste="torchvision").eval()
    out = tv.transform.postprocess([dict(r) for r in result], [(5, 8)], [(5, 8)])
    assert torch.equal(out[0]["masks"], paste_masks_in_image(MASK[None, None], BOX[None], (5, 8)))


def test_mask_targets_are_binarised_aligned_roialign():
    # mmdet mask_target: roi_align(gt mask, roi, 2x2, scale 1, sampling 0, aligned=True) >= 0.5.
    # RoI (0, 0, 8, 8), aligned: starts at -0.5, bins of 4 px sampled at 4 points each (ceil(8 / 2)):
    # coordinates 0, 1, 2, 3 (bin 0) and 4, 5, 6, 7 (bin 1).
    gt = torch.zeros(2, 8, 8)
    gt[0, :, :6] = 1  # columns 0-5: bin 1 averages (1 + 1 + 0 + 0) / 4 = 0.5 -> kept by >= 0.5
    gt[1, :, :5] = 1  # columns 0-4: bin 1 averages 1 / 4 = 0.25 -> 0
    rois = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0]])
    t = mask_targets(gt, rois, torch.tensor([0, 1]), 2)
    assert t.tolist() == [[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]
    assert mask_targets(gt, rois[:0], torch.tensor([], dtype=torch.long), 2).shape == (0, 2, 2)


def test_max_iou_matcher_is_mmdets_assigner():
    from convnext.dense.cascade import MaxIoUMatcher

    # RPN assigner: IoU >= 0.7 positive, < 0.3 negative (-1), between ignored (-2); each ground truth's
    # best boxes positive when that IoU >= 0.3. Rows: ground truths, columns: boxes.
    iou = torch.tensor([[0.6, 0.2, 0.6, 0.1],
                        [0.1, 0.25, 0.2, 0.8],
                        [0.05, 0.2, 0.0, 0.0]])  # gt 2's best is 0.2 < 0.3: it claims nothing
    # box 0, 2: 0.6 (ignored by the thresholds) but gt 0's best -> gt 0; box 1: 0.25 -> negative;
    # box 3: 0.8 -> gt 1. torchvision's rule would also make box 1 positive (for gt 2's sake, as gt 1).
    assert MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3)(iou).tolist() == [0, -1, 0, 1]
    # a tie: both ground truths' best box is box 0 (IoU 0.5): the later one wins, as mmdet's loop
    tie = torch.tensor([[0.5, 0.1], [0.5, 0.4]])
    assert MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3)(tie).tolist() == [1, -2]
    assert MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3, allow_low_quality_matches=False)(tie).tolist() == [-2, -2]


@pytest.mark.parametrize("head,loss", [("mask_rcnn", "l1"), ("cascade_mask_rcnn", "smooth_l1")])
def test_rpn_losses_as_the_configs(head, loss):
    model = convnext.create_model(f"{head}_convnext_atto", num_classes=3, fpn_channels=32)
    assert model.config.rpn_box_loss == loss
    # 4 anchors: 2 positive, 1 negative, 1 ignored -> all 3 labelled ones sampled (under 256 / 50%)
    labels = [torch.tensor([1.0, 0.0, -1.0, 1.0])]
    pred = torch.tensor([[0.1, 0.2, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0], [9.0, 9.0, 9.0, 9.0], [0.0, 0.0, 0.3, -0.05]])
    target = [torch.zeros(4, 4)]
    logits = torch.tensor([2.0, -1.0, 7.0, 0.5])
    obj, box = model.rpn.compute_loss(logits[:, None], pred, labels, target)
    # L1: (0.1 + 0.2 + 0.3 + 0.05) / 3 sampled; smooth L1 (beta 1/9): |d| - 1/18 where |d| >= 1/9, else 4.5 d^2
    want = 0.65 / 3 if loss == "l1" else (4.5 * 0.1 ** 2 + (0.2 - 1 / 18) + (0.3 - 1 / 18) + 4.5 * 0.05 ** 2) / 3
    assert box.item() == pytest.approx(want, rel=1e-5)
    want_obj = F.binary_cross_entropy_with_logits(logits[[0, 3, 1]], torch.tensor([1.0, 1.0, 0.0]))
    assert obj.item() == pytest.approx(want_obj.item(), rel=1e-6)


def test_rpn_assigns_only_mmdets_valid_or_inside_anchors():
    # One 70 x 100 image in a batch padded to 128 x 160: its own 32-padded area is 96 x 128.
    image = ImageList(torch.zeros(1, 3, 128, 160), [(70, 100)])
    gt = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}]
    for head, inside in (("mask_rcnn", False), ("cascade_mask_rcnn", True)):
        model = convnext.create_model(f"{head}_convnext_atto", num_classes=3, fpn_channels=32)
        rpn = model.rpn
        assert rpn.allowed_border == (0 if inside else -1)
        rpn._image_sizes = image.image_sizes
        feats = [torch.zeros(1, 1, 128 // s, 160 // s) for s in (4, 8, 16, 32)] + [torch.zeros(1, 1, 2, 3)]
        (anchors,) = rpn.anchor_generator(image, feats)
        (labels,), _ = rpn.assign_targets_to_anchors([anchors], gt)
        cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        in_pad = (cx < 128) & (cy < 96)  # Mask R-CNN (allowed_border=-1): valid flags of the 96 x 128 area
        if inside:  # Cascade (allowed_border=0): the anchor lies inside the 70 x 100 image
            in_pad &= (anchors[:, :2] >= 0).all(1) & (anchors[:, 2] < 100) & (anchors[:, 3] < 70)
        assert torch.equal(labels != -1, in_pad & (labels != -1)) and (labels[~in_pad] == -1).all()
        assert (labels[in_pad] != -1).any() and (labels == 1).any()


def test_fpn_starts_from_mmdets_xavier_init():
    torch.manual_seed(0)
    model = convnext.create_model("mask_rcnn_convnext_atto", num_classes=3)
    # lateral 1x1 conv 40 -> 256: xavier-uniform bound sqrt(6 / (40 + 256)) = 0.142; torchvision's
    # kaiming-uniform (a=1) would be sqrt(3 / 40) = 0.274
    conv = model.neck.inner_blocks[0][0]
    bound = math.sqrt(6 / (40 + 256))
    assert bound * 0.95 < conv.weight.abs().max() <= bound and not conv.bias.any()
