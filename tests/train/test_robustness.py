"""Robustness benchmarks (Table 8) on small synthetic trees in the real layouts, with models whose
predictions are known: a stub that decides by image brightness, and a ConvNeXt-atto whose head
(weight zero, bias one-hot) always predicts one class."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convnext.cli import main
from convnext.data.robustness import (
    ALEXNET_ERR, CORRUPTIONS, SEVERITIES, imagenet_wnids, subset_wnids,
)
from convnext.errors import DataError
from convnext.train.robustness import corruption_errors, paper_row, run_benchmark

WNIDS = imagenet_wnids()
W1, W2 = WNIDS[1], WNIDS[2]  # ImageNet-1K classes 1 and 2 (goldfish, great white shark)
FAST = dict(img_size=32, batch_size=8, num_workers=0, progress=False, device="cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    # Many tiny forwards: two intra-op threads on a shared 2-core machine are 10-50x slower than one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _image(path, bright: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 255 if bright else 0, np.uint8)).save(path)


class BrightStub(nn.Module):
    """1000-way logits: a bright image -> `bright`, a dark one -> `dark`; `decoy` (if any) outscores both."""

    num_classes = 1000

    def __init__(self, bright: int, dark: int, decoy: int | None = None):
        super().__init__()
        self.bright, self.dark, self.decoy = bright, dark, decoy

    def forward(self, x):  # (B, 3, H, W) normalised: white ~ +2, black ~ -2
        is_bright = x.mean(dim=(1, 2, 3)) > 0
        logits = torch.zeros(x.shape[0], 1000)
        logits[is_bright, self.bright] = 5.0
        logits[~is_bright, self.dark] = 5.0
        if self.decoy is not None:
            logits[:, self.decoy] = 10.0  # the unmasked argmax
        return logits


def _correct(ci: int, s: int) -> int:
    return (3 * ci + s) % 5  # images (of 4) scored right at corruption ci, severity s: 0..4


@pytest.fixture(scope="module")
def imagenet_c(tmp_path_factory):
    """<root>/<corruption>/<s>/<wnid>/*.JPEG: per (c, s) k bright images of class 1 and 4-k dark ones of class 2."""
    root = tmp_path_factory.mktemp("imagenet-c")
    for ci, c in enumerate(CORRUPTIONS):
        for s in SEVERITIES:
            k = _correct(ci, s)
            for i in range(4):
                wnid = W1 if i < k else W2
                _image(root / c / str(s) / wnid / f"ILSVRC2012_val_{i:08d}.JPEG", bright=i < k)
    return root


def _expected_errors():
    return {c: {s: 100.0 * (4 - _correct(ci, s)) / 4 for s in SEVERITIES} for ci, c in enumerate(CORRUPTIONS)}


def test_alexnet_constants_are_the_published_ones():
    assert len(ALEXNET_ERR) == 15 and list(ALEXNET_ERR) == list(CORRUPTIONS)
    assert ALEXNET_ERR["gaussian_noise"] == 0.886428 and ALEXNET_ERR["brightness"] == 0.564592
    assert ALEXNET_ERR["jpeg_compression"] == 0.606500


def test_mce_arithmetic_by_hand():
    # Every severity 50% error: CE_c = 50 / (100 * alex_c) * 100; gaussian_noise: 50 / 0.886428 = 56.406...
    res = corruption_errors({c: {s: 50.0 for s in SEVERITIES} for c in CORRUPTIONS})
    assert res["CE"]["gaussian_noise"] == pytest.approx(56.40615, abs=1e-4)
    assert res["mCE"] == pytest.approx(np.mean([50 / a for a in ALEXNET_ERR.values()]))
    assert res["mean_error"] == pytest.approx(50.0)
    # Severities enter through their mean: (10+20+30+40+50)/5 = 30 -> 30 / 0.564592 for brightness.
    res = corruption_errors({"brightness": dict(zip(SEVERITIES, (10.0, 20.0, 30.0, 40.0, 50.0)))})
    assert res["CE"] == {"brightness": pytest.approx(30 / 0.564592)} and res["complete"] == ["brightness"]
    # An incomplete corruption gets no CE at all (never a mean over the severities that exist).
    assert corruption_errors({"fog": {1: 10.0, 2: 20.0}})["mCE"] is None


def test_imagenet_c_errors_and_mce_from_a_stub_model(imagenet_c):
    res = run_benchmark("imagenet-c", BrightStub(bright=1, dark=3), imagenet_c, **FAST)
    expected = _expected_errors()
    assert res["errors"] == {c: {str(s): expected[c][s] for s in SEVERITIES} for c in CORRUPTIONS}
    ce = {c: np.mean(list(expected[c].values())) / ALEXNET_ERR[c] for c in CORRUPTIONS}
    assert res["CE"] == pytest.approx(ce)
    assert res["mCE"] == pytest.approx(np.mean(list(ce.values())))
    assert res["mean_error"] == pytest.approx(np.mean([np.mean(list(v.values())) for v in expected.values()]))
    assert res["images"] == 300 and not res["partial"] and res["missing"] == [] and res["corruptions_in_mCE"] == 15


def test_missing_severity_is_an_error_or_with_partial_a_marked_result(imagenet_c, tmp_path):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(imagenet_c, root)
    shutil.rmtree(root / "fog" / "3")
    shutil.rmtree(root / "snow")
    with pytest.raises(DataError, match=r"missing snow, fog/3.*--partial"):
        run_benchmark("imagenet-c", BrightStub(1, 3), root, **FAST)

    res = run_benchmark("imagenet-c", BrightStub(1, 3), root, partial=True, **FAST)
    assert res["partial"] and res["missing"] == ["snow", "fog/3"] and res["corruptions_in_mCE"] == 13
    assert "snow" not in res["errors"] and sorted(res["errors"]["fog"]) == ["1", "2", "4", "5"]
    assert "fog" not in res["CE"] and len(res["CE"]) == 13
    expected = _expected_errors()
    ce = [np.mean(list(expected[c].values())) / ALEXNET_ERR[c] for c in CORRUPTIONS if c not in ("fog", "snow")]
    assert res["mCE"] == pytest.approx(np.mean(ce))
    (tmp_path / "empty").mkdir()  # nothing at all: an error even with --partial
    with pytest.raises(DataError, match="none of the 15 corruption folders"):
        run_benchmark("imagenet-c", BrightStub(1, 3), tmp_path / "empty", partial=True, **FAST)


def test_unknown_wnid_folder_is_named(tmp_path):
    _image(tmp_path / "sketch" / "n99999999" / "a.JPEG", True)
    with pytest.raises(DataError, match="n99999999"):
        run_benchmark("imagenet-sketch", BrightStub(0, 0), tmp_path / "sketch", partial=True, **FAST)
    # A real ImageNet wnid outside ImageNet-A's 200 classes (tench, class 0) is refused for -A.
    _image(tmp_path / "a" / WNIDS[0] / "a.JPEG", True)
    with pytest.raises(DataError, match=f"{WNIDS[0]} are not ImageNet-A"):
        run_benchmark("imagenet-a", BrightStub(0, 0), tmp_path / "a", partial=True, **FAST)


@pytest.mark.parametrize("name", ["imagenet-a", "imagenet-r"])  # not `benchmark`: pytest-benchmark's fixture
def test_a_and_r_score_only_their_200_classes(name, tmp_path):
    sub = subset_wnids(name)
    assert len(sub) == 200 and WNIDS[0] not in sub
    first, second = WNIDS.index(sub[0]), WNIDS.index(sub[1])
    for i in range(4):  # 3 bright (-> first: right), 1 dark (-> second: wrong), all of class `first`
        _image(tmp_path / sub[0] / f"{i}.jpg", bright=i < 3)
    # The decoy (class 0, outside the subset) has the highest logit for every image: it must be ignored.
    stub = BrightStub(bright=first, dark=second, decoy=0)
    res = run_benchmark(name, stub, tmp_path, partial=True, **FAST)
    assert res["top1"] == 75.0 and res["error"] == 25.0 and res["classes"] == 200 and res["images"] == 4
    assert res["partial"] and len(res["missing"]) == 199 and sub[0] not in res["missing"]
    with pytest.raises(DataError, match="--partial"):  # 199 classes absent: not silently averaged
        run_benchmark(name, stub, tmp_path, **FAST)


def test_sketch_is_plain_1000_class_top1(tmp_path):
    for i in range(2):
        _image(tmp_path / WNIDS[0] / f"{i}.JPEG", True)
        _image(tmp_path / W1 / f"{i}.JPEG", True)
    res = run_benchmark("imagenet-sketch", BrightStub(bright=0, dark=0), tmp_path, partial=True, **FAST)
    assert res["top1"] == 50.0 and res["classes"] == 1000 and len(res["missing"]) == 998


def test_paper_row_matching():
    row, how = paper_row(None, "/x/convnext_base_22k_1k_384.pth", 384)  # official file: exact row
    assert row["row"] == "ConvNeXt-B 22K/384" and row["mCE"] == 43.1 and row["A"] == 62.3 and "official" in how
    row, _ = paper_row(None, "/x/convnext_base_1k_224_ema.pth", 224)
    assert row["mCE"] == 46.8 and row["Sketch"] == 38.2
    row, _ = paper_row("convnext_tiny", "run/checkpoint-best.pt", 224)
    assert row["R"] == 47.2
    row, how = paper_row("convnext_atto", "run/checkpoint-best.pt", 224)
    assert row is None and "no row for convnext_atto" in how
    assert paper_row(None, "/x/convnext_small_1k_224_ema.pth", 224)[0] is None  # S has no Table 8 row


def _constant_checkpoint(path, bias: dict[int, float]):
    """A 1000-class ConvNeXt-atto (official layout) whose logits are its head bias, whatever the image."""
    from convnext.models import create_model

    sd = create_model("convnext_atto", num_classes=1000).state_dict()
    sd["head.weight"].zero_()
    sd["head.bias"].zero_()
    for i, v in bias.items():
        sd["head.bias"][i] = v
    torch.save({"model": sd}, path)
    return path


@pytest.fixture(scope="module")
def class1_checkpoint(tmp_path_factory):
    return _constant_checkpoint(tmp_path_factory.mktemp("ckpt") / "atto_class1.pth", {1: 1.0})


def test_cli_imagenet_c_json_and_table(imagenet_c, class1_checkpoint, tmp_path, capsys):
    out = tmp_path / "res" / "c.json"
    args = ["eval", "--benchmark", "imagenet-c", "--data", str(imagenet_c), "--checkpoint", str(class1_checkpoint),
            "--img-size", "32", "--num-workers", "0", "--batch-size", "64", "--no-progress", "--json", str(out)]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert {"benchmark", "mCE", "CE", "errors"} <= set(res) and res["benchmark"] == "imagenet-c"
    expected = _expected_errors()  # class 1 always: the class-1 images are right, the class-2 ones wrong
    assert res["errors"] == {c: {str(s): expected[c][s] for s in SEVERITIES} for c in CORRUPTIONS}
    assert set(res["CE"]) == set(CORRUPTIONS)
    assert res["mCE"] == pytest.approx(np.mean([np.mean(list(expected[c].values())) / ALEXNET_ERR[c]
                                                for c in CORRUPTIONS]))
    assert res["model"] == "convnext_atto" and res["paper"] is None and res["partial"] is False
    text = capsys.readouterr().out
    assert "mCE (normalised by AlexNet, 15/15 corruptions)" in text and "no row for convnext_atto" in text
    assert f"{res['mCE']:.2f}" in text


def test_cli_errors_are_one_line(imagenet_c, class1_checkpoint, tmp_path, capsys):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(imagenet_c / "fog", root / "fog")  # 14 corruptions absent
    base = ["eval", "--checkpoint", str(class1_checkpoint), "--img-size", "32", "--num-workers", "0",
            "--no-progress"]
    assert main(base + ["--benchmark", "imagenet-c", "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convnext eval: error: --data") and "missing gaussian_noise" in err
    assert err.count("\n") == 1
    assert main(base + ["--benchmark", "imagenet-x", "--data", str(root)]) == 2
    assert "--benchmark 'imagenet-x'" in capsys.readouterr().err
    assert main(base + ["--data", "digits", "--partial"]) == 2  # --partial is for benchmarks only
    assert "applies to --benchmark runs" in capsys.readouterr().err

    # --partial: a result, marked, with the one complete corruption only.
    out = tmp_path / "p.json"
    assert main(base + ["--benchmark", "imagenet-c", "--data", str(root), "--partial", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["partial"] and len(res["missing"]) == 14 and list(res["CE"]) == ["fog"]
    assert "PARTIAL result: missing gaussian_noise" in capsys.readouterr().out


def test_cli_imagenet_a_json(tmp_path, capsys):
    from convnext.models import create_model

    sub = subset_wnids("imagenet-a")
    # Tench (class 0, not in ImageNet-A) scores highest; within the subset, sub[1] does.
    ckpt = _constant_checkpoint(tmp_path / "decoy.pth", {0: 2.0, WNIDS.index(sub[1]): 1.0})
    _image(tmp_path / "a" / sub[0] / "0.jpg", True)
    _image(tmp_path / "a" / sub[1] / "0.jpg", True)
    out = tmp_path / "a.json"
    assert main(["eval", "--benchmark", "imagenet-a", "--data", str(tmp_path / "a"), "--checkpoint", str(ckpt),
                 "--img-size", "32", "--num-workers", "0", "--no-progress", "--partial", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"benchmark", "top1", "error"} <= set(res) and res["benchmark"] == "imagenet-a"
    assert res["top1"] == 50.0 and res["error"] == 50.0 and res["images"] == 2
    assert "top-1 50.00%" in capsys.readouterr().out
    # A 10-class checkpoint is refused with one line.
    small = tmp_path / "small.pth"
    torch.save({"model": create_model("convnext_atto", num_classes=10).state_dict()}, small)
    assert main(["eval", "--benchmark", "imagenet-a", "--data", str(tmp_path / "a"), "--checkpoint", str(small),
                 "--no-progress", "--partial"]) == 2
    assert "10-class model" in capsys.readouterr().err
