import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.data import (
    DataError,
    DigitsDataset,
    build_dataset,
    collate_skip_bad,
    eval_transform,
    mixup_and_criterion,
    subset,
    train_transform,
)


@pytest.fixture
def folder(tmp_path):
    """train/{cat: RGB + grayscale + corrupt, dog: palette + RGBA, empty: nothing}, test/{cat, dog} (no val/)."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8), mode="L").save(root / "train/cat/gray.png")
    (root / "train/cat/broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    Image.new("P", (8, 8), color=3).save(root / "train/dog/palette.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(root / "train/dog/alpha.png")
    (root / "train/dog/notes.txt").write_text("not an image, ignored by extension")
    (root / "train/empty").mkdir()
    return root


def test_image_folder_modes_corrupt_and_empty(folder):
    tf = eval_transform(8, crop_pct=1.0)
    train = build_dataset(str(folder), "train", tf)
    assert train.classes == ["cat", "dog", "empty"] and train.empty_classes == ["empty"]
    assert len(train) == 8  # 4 files per class; the .txt is not an image
    samples = [train[i] for i in range(len(train))]
    bad = [i for i, s in enumerate(samples) if s is None]
    assert [train.samples[i][0].endswith("broken.jpg") for i in bad] == [True]
    for s in samples:
        if s is not None:
            assert s[0].shape == (3, 8, 8)  # grayscale / palette / RGBA all became RGB

    images, targets, dropped = collate_skip_bad(samples)
    assert dropped == 1 and images.shape == (7, 3, 8, 8) and targets.tolist() == [0, 0, 0, 1, 1, 1, 1]
    images, _, dropped = collate_skip_bad(samples, even=True)  # odd after a drop -> trimmed for Mixup
    assert dropped == 1 and images.shape[0] == 6
    images, _, _ = collate_skip_bad(samples[:4], even=True)
    assert images.shape[0] == 2

    strict = build_dataset(str(folder), "train", tf, strict=True)
    with pytest.raises(DataError, match="broken.jpg.*--strict-images"):
        strict[bad[0]]


def test_test_split_is_the_validation_split_and_uses_training_classes(folder):
    val = build_dataset(str(folder), "val", None, classes=["cat", "dog", "empty"])
    assert val.root.name == "test" and len(val) == 2 and val.classes == ["cat", "dog", "empty"]
    img, target = val[1]
    assert img.mode == "RGB" and target == 1


def test_missing_splits_and_folders_are_clear_errors(folder, tmp_path):
    with pytest.raises(DataError, match="missing val split.*val/<class>"):
        build_dataset(str(folder / "train"), "val", None)
    with pytest.raises(DataError, match="no such folder"):
        build_dataset(str(tmp_path / "nowhere"), "train", None)
    (tmp_path / "flat" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class sub-folders"):
        build_dataset(str(tmp_path / "flat"), "train", None)
    (folder / "test" / "bird").mkdir()
    with pytest.raises(DataError, match="bird"):
        build_dataset(str(folder), "val", None, classes=["cat", "dog"])


def test_digits_builtin_split():
    train, test = DigitsDataset(train=True), DigitsDataset(train=False)
    assert (len(train), len(test)) == (1437, 360)
    img, target = test[0]
    assert img.mode == "RGB" and img.size == (8, 8) and 0 <= target <= 9
    assert np.bincount(test.targets).min() >= 35  # stratified: every digit present in the test split
    assert len(subset(train, 100)) == 100 and subset(train, 100).classes == train.classes


def test_cifar_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNEXT_NO_DOWNLOAD", "1")
    with pytest.raises(DataError, match="could not be downloaded.*--data DIR"):
        build_dataset("cifar10", "train", None, data_dir=str(tmp_path))


def test_train_transform_and_mixup():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    tf = train_transform(32)  # the paper's recipe: RRC bicubic, flip, RandAugment, erasing
    names = " ".join(type(t).__name__ for t in tf.transforms)
    assert "RandomResizedCrop" in names and "RandAugment" in names and "RandomErasing" in names
    assert tf(img).shape == (3, 32, 32)
    mix, criterion = mixup_and_criterion(10)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    xm, soft = mix(x, y)
    assert soft.shape == (4, 10) and torch.allclose(soft.sum(1), torch.ones(4))
    assert soft.min() >= 0.1 / 10 - 1e-6  # label smoothing folded into the soft targets
    assert type(criterion).__name__ == "SoftTargetCrossEntropy"
    none, ce = mixup_and_criterion(10, mixup=0, cutmix=0, smoothing=0.1)
    assert none is None and ce.label_smoothing == 0.1


def test_shared_cifar10_jpeg_folder(shared_data, tmp_path):
    with tarfile.open(shared_data / "cifar10-test-jpeg.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isdir() or m.name.split("/")[-1] in ("0000.jpg", "0001.jpg")]
        tar.extractall(tmp_path, members=members, filter="data")
    ds = build_dataset(str(tmp_path), "val", eval_transform(32, crop_pct=1.0))
    assert len(ds.classes) == 10 and "airplane" in ds.classes and len(ds) == 20
    assert ds[0][0].shape == (3, 32, 32)


def test_randaugment_posterize_survives_zero_bits():
    # mstd0.5 can push PosterizeIncreasing to 0 kept bits; current Pillow raises there, the paper's Pillow gave black.
    from convnext.data.pipeline import _posterize

    img = Image.fromarray(np.full((6, 6, 3), 200, dtype=np.uint8))
    assert np.asarray(_posterize(img, 0)).max() == 0
    assert np.asarray(_posterize(img, 1)).max() == 128 and _posterize(img, 8) is img
    ops = [op for t in train_transform(32).transforms for op in getattr(t, "ops", [])]
    assert any(op.aug_fn is _posterize for op in ops)
    for op in ops:
        if op.aug_fn is _posterize:
            op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0  # the level that used to raise
            assert np.asarray(op(img)).max() == 0


def test_link_from_a_class_folder_to_the_root_counts_each_image_once(tmp_path):
    """A robustness benchmark root/<wnid>/ with a link wnid/up -> root: 399 scored for 200 images before."""
    import os

    from convnext.data.robustness import imagenet_wnids, wnid_dataset

    wnids = imagenet_wnids()[:2]
    root = tmp_path / "imagenet-r"
    for w in wnids:
        (root / w).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / w / f"{i}.jpg")
    os.symlink(root, root / wnids[0] / "up")  # class folder -> the benchmark root
    os.symlink(root / wnids[1] / "0.jpg", root / wnids[1] / "again.jpg")  # a second name of one file
    ds, missing = wnid_dataset(root, None, imagenet_wnids(), "ImageNet-1K")
    assert len(ds) == 6 and ds.duplicate_files == [str(root / wnids[1] / "again.jpg")]
    labels = {os.path.relpath(p, root): t for p, t in ds.samples}  # each image once, by its own folder
    assert labels == {f"{w}/{i}.jpg": k for k, w in enumerate(wnids) for i in range(3)}
    # folders outside the benchmark reached through links are still followed (sets assembled from links)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "x.jpg")
    os.symlink(outside, root / wnids[0] / "more")
    ds, _ = wnid_dataset(root, None, imagenet_wnids(), "ImageNet-1K")
    assert len(ds) == 7


def test_same_stem_of_two_formats_are_two_images(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "x.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "x.png")
    assert len(build_dataset(str(tmp_path), "train", None)) == 2
