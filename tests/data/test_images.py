"""Image decoding corner cases: 16-bit PNGs, symlink cycles, worker error lines."""
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.data import DataError, ImageFolderDataset, eval_transform, to_rgb
from convnext.data.datasets import error_line, list_images
from convnext.errors import ConfigError


def _png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (gray (H, W) or RGB (H, W, 3)) encoded by hand: Pillow cannot write 16-bit RGB."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))  # filter 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if arr.ndim == 3 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("shape", [(32, 32), (32, 32, 3)], ids=["gray16", "rgb16"])
def test_16bit_png_matches_its_8bit_version(tmp_path, shape):
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, shape, dtype=np.uint8)
    # The 16-bit value of an 8-bit v is v * 257 (v in both bytes); add sub-8-bit noise to the low byte.
    a16 = a8.astype(np.uint16) * 256 + rng.integers(0, 256, shape).astype(np.uint16)
    (tmp_path / "x16.png").write_bytes(_png16(a16))
    Image.fromarray(a8).save(tmp_path / "x8.png")
    with Image.open(tmp_path / "x16.png") as im16, Image.open(tmp_path / "x8.png") as im8:
        rgb16, rgb8 = np.asarray(to_rgb(im16), dtype=float), np.asarray(to_rgb(im8), dtype=float)
    assert rgb16.shape == rgb8.shape == (32, 32, 3)
    assert np.abs(rgb16 - rgb8).max() <= 1.0  # within 1/255
    assert abs(rgb16.mean() - rgb8.mean()) < 1.0  # was 254.6 vs 137.7 before 16-bit scaling
    # ... and through the evaluation transform, as eval / predict see it.
    tf = eval_transform(32, crop_pct=1.0)
    with Image.open(tmp_path / "x16.png") as im16, Image.open(tmp_path / "x8.png") as im8:
        assert (tf(im16) - tf(im8)).abs().max() <= 1.0 / 255 / 0.224 + 1e-5  # one level / smallest std (32x32: no resampling)


def test_32bit_int_image_holding_8bit_values_is_not_rescaled():
    a8 = np.arange(0, 240, dtype=np.int32).reshape(12, 20)
    img = Image.fromarray(a8, mode="I")
    assert np.array_equal(np.asarray(to_rgb(img))[..., 0], a8.astype(np.uint8))


def test_symlink_cycle_is_walked_once(tmp_path):
    cls = tmp_path / "train" / "cat"
    cls.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (8, 8)).save(cls / f"{i}.png")
    os.symlink(cls, cls / "loop")  # cat/loop -> cat
    assert len(list_images(cls)) == 5
    ds = ImageFolderDataset(tmp_path / "train")
    assert len(ds) == 5


def test_worker_error_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "v" / "a").mkdir(parents=True)
    (tmp_path / "v" / "a" / "bad.png").write_bytes(b"nope")
    ds = ImageFolderDataset(tmp_path / "v", transform=eval_transform(8), strict=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    line = error_line(e.value)
    assert "\n" not in line and line.startswith("unreadable image") and "bad.png" in line


class _Raises(torch.utils.data.Dataset):
    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise self.error


@pytest.mark.parametrize("error", [DataError("a.png: label value 9 beyond 3 classes (x: y)"),
                                   ConfigError("--num-classes 5: data has 3 categories")])
def test_typed_errors_keep_their_message_through_a_loader_worker(error):
    """torch rebuilds a worker's exception as type(msg) with its traceback text: the type and the
    one-line message both survive, so the CLI prints `convnext <cmd>: error: <message>`."""
    loader = torch.utils.data.DataLoader(_Raises(error), batch_size=1, num_workers=1)
    with pytest.raises(type(error)) as e:
        next(iter(loader))
    assert str(e.value) == str(error) and error_line(e.value) == str(error)
    assert str(DataError("Caught nothing")) == "Caught nothing"  # ordinary messages are left alone
