"""SegEvaluator against hand-computed mIoU / aAcc / mAcc (ignore index, absent classes, DDP sum)."""
import math

import pytest
import torch

from convnext.dense.seg_eval import SegEvaluator

# 2x4 labels (255 ignored) and predictions. Valid pixels, (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0)
TARGET = torch.tensor([[[0, 0, 1, 255], [1, 2, 2, 0]]])
PRED = torch.tensor([[[0, 1, 1, 2], [1, 2, 0, 0]]])
# confusion rows gt / cols pred: [[2,1,0],[0,2,0],[1,0,1]]; TP 2,2,1; GT 3,2,2; predicted 3,3,1
# IoU = 2/4, 2/3, 1/2; Acc = 2/3, 2/2, 1/2; aAcc = 5/7 (the pixel predicted 2 under 255 is ignored)
IOU = [50.0, 200 / 3, 50.0]


def test_hand_computed_metrics():
    ev = SegEvaluator(3, class_names=["a", "b", "c"])
    ev.update(PRED, TARGET)
    assert ev.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    s = ev.summarize()
    assert s["IoU"] == pytest.approx(dict(zip("abc", IOU)))
    assert s["mIoU"] == pytest.approx(sum(IOU) / 3)
    assert s["aAcc"] == pytest.approx(500 / 7)
    assert s["mAcc"] == pytest.approx((200 / 3 + 100 + 50) / 3)


def test_absent_class_is_nan_and_excluded():
    ev = SegEvaluator(5)
    ev.update(PRED, TARGET)  # classes 3 and 4: no label, no prediction
    s = ev.summarize()
    assert math.isnan(s["IoU"]["3"]) and math.isnan(s["IoU"]["4"])
    assert s["mIoU"] == pytest.approx(sum(IOU) / 3)


def test_false_positive_class_counts_zero():
    ev = SegEvaluator(4)
    pred = PRED.clone()
    pred[0, 1, 3] = 3  # a class-0 pixel predicted as 3, which has no ground truth
    ev.update(pred, TARGET)
    s = ev.summarize()
    assert s["IoU"]["3"] == 0.0  # included in the mean (predicted, never labelled)
    iou0 = 100 * 1 / (3 + 2 - 1)  # TP 1, GT 3, predicted 2
    assert s["mIoU"] == pytest.approx((iou0 + IOU[1] + IOU[2] + 0.0) / 4)
    assert s["mAcc"] == pytest.approx((100 / 3 + 100 + 50) / 3)  # class 3 accuracy NaN, excluded


def test_dataset_level_accumulation_and_logits():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (3, 8, 8))
    target[0, :2] = 255
    logits = torch.randn(3, 4, 8, 8)
    one, two = SegEvaluator(4), SegEvaluator(4)
    one.update(logits, target)  # scores are argmax-ed
    for i in range(3):  # per-batch updates sum into one matrix (not a mean of per-image mIoU)
        two.update(logits[i:i + 1].argmax(1), target[i:i + 1])
    assert torch.equal(one.confusion, two.confusion)
    assert one.confusion.sum() == 3 * 64 - 16
    # low-resolution scores are resized to the label size
    ev = SegEvaluator(2)
    ev.update(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]]), torch.zeros(1, 4, 4, dtype=torch.long))
    assert ev.confusion.sum() == 16


def test_bad_labels_rejected():
    ev = SegEvaluator(2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        ev.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))


def _ddp_worker(rank, path, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    ev = SegEvaluator(3)
    ev.update(PRED[:, rank:rank + 1], TARGET[:, rank:rank + 1])  # each rank sees one row
    s = ev.summarize()
    ev.summarize()  # idempotent: the local matrix is not modified
    torch.save({"mIoU": s["mIoU"], "local": ev.confusion.sum().item()}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes (~15 s on the shared 2-core machine)
def test_ddp_all_reduce(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "res")
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), out), nprocs=2)
    for rank in range(2):
        r = torch.load(f"{out}.{rank}")
        assert r["mIoU"] == pytest.approx(sum(IOU) / 3)  # both ranks: the metric of the whole set
    assert torch.load(f"{out}.0")["local"] == 3  # row 0 has 3 labelled pixels
