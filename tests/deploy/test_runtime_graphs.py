"""What `convnext export --format onnx | openvino` writes, `predict` and `eval` run (ONNX Runtime / OpenVINO on
the CPU), with the class names and preprocessing the file carries; other commands say what the file is."""
import json
import shutil

import pytest
import torch
from PIL import Image

from convnext.cli import main
from convnext.models import create_model

NAMES = ["ship", "cat", "dog"]  # the checkpoint's order, not the folders'


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    g = torch.Generator().manual_seed(0)
    for c in sorted(NAMES):
        (root / "data" / "val" / c).mkdir(parents=True)
        for i in range(4):
            pixels = (torch.rand(48, 56, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "data" / "val" / c / f"{i}.jpg")
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=3)
    from convnext.bench.peers import _spread_scales

    _spread_scales(model, torch.Generator().manual_seed(0))  # logits far apart: top-1 decided, not tied
    ckpt = root / "named.pth"
    torch.save({"model": model.state_dict(), "labels": NAMES}, ckpt)
    return root, ckpt


def _probs(path):
    return {r["class"]: r["probability"] for r in json.loads(path.read_text())["topk"]}


@pytest.mark.parametrize("fmt,suffix,runtime", [("onnx", ".onnx", "onnxruntime"), ("openvino", ".xml", "openvino")])
def test_exported_graph_runs_in_predict_and_eval(setup, tmp_path, capsys, fmt, suffix, runtime):
    pytest.importorskip(runtime)
    pytest.importorskip("onnx")  # the metadata (class names, preprocessing) is written through it
    root, ckpt = setup
    graph = tmp_path / f"m{suffix}"
    assert main(["export", "convnext_atto", str(graph), "--checkpoint", str(ckpt), "--format", fmt,
                 "--img-size", "64"]) == 0
    capsys.readouterr()
    img = str(root / "data" / "val" / "dog" / "1.jpg")  # 56x48: resized to 73 on the short side, cropped to 64
    rc = main(["predict", img, "--checkpoint", str(graph), "--dtype", "fp32", "--json", str(tmp_path / "g.json")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert ("ONNX Runtime" if fmt == "onnx" else "OpenVINO") in err and "64px" in err
    assert main(["predict", img, "--checkpoint", str(ckpt), "--model", "convnext_atto", "--img-size", "64",
                 "--dtype", "fp32", "--json", str(tmp_path / "f.json")]) == 0
    got, ref = _probs(tmp_path / "g.json"), _probs(tmp_path / "f.json")
    assert set(got) == set(NAMES)  # the checkpoint's names, from the file's metadata
    assert all(abs(got[c] - ref[c]) < 1e-4 for c in ref)  # same preprocessing, same fp32 graph

    results = {}
    for name, source in (("graph", ["--checkpoint", str(graph)]),
                         ("torch", ["--checkpoint", str(ckpt), "--model", "convnext_atto", "--img-size", "64"])):
        out = tmp_path / f"{name}.json"
        rc = main(["eval", *source, "--data", str(root / "data"), "--dtype", "fp32", "--batch-size", "5",
                   "--num-workers", "0", "--no-progress", "--json", str(out)])
        assert rc == 0, capsys.readouterr().err
        results[name] = json.loads(out.read_text())
    assert results["graph"]["images"] == 12
    assert results["graph"]["top1"] == results["torch"]["top1"]  # names mapped onto the folders alike
    assert results["graph"]["loss"] == pytest.approx(results["torch"]["loss"], abs=1e-4)

    errors = [(["predict", img, "--checkpoint", str(graph), "--img-size", "96"], "exported for 64px"),
              (["eval", "--checkpoint", str(graph), "--data", str(root / "data"), "--amp", "bf16"], "--amp bf16"),
              (["export", str(tmp_path / "x.onnx"), "--checkpoint", str(graph), "--format", "onnx"], "already an "),
              (["convert", str(graph), str(tmp_path / "x.safetensors")], "not a weight file")]
    if fmt == "onnx":
        errors.append((["predict", img, "--checkpoint", str(graph), "--dtype", "bf16"], "fp32 only"))
    else:
        errors.append((["convert", str(graph.with_suffix(".bin")), str(tmp_path / "y.pth")], "its graph is m.xml"))
    for argv, words in errors:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err


def test_foreign_onnx_without_metadata_and_a_fixed_batch(tmp_path, capsys):
    """An ONNX file another tool wrote (input not named "image", batch fixed at 1, no metadata): ImageNet names,
    the graph's resolution, batches split to its size."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model("convnext_atto").eval()
    path = tmp_path / "foreign.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), input_names=["pixel_values"],
                          opset_version=17, dynamo=False)
    from convnext.inference.loaded import ONNX_GRAPH, load

    loaded = load(path)
    assert loaded.layout == ONNX_GRAPH and loaded.img_size == 64 and len(loaded.classes) == 1000
    assert not loaded.labels_stored and loaded.classes[0] == "tench"
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-4)  # three calls of batch 1


def test_a_segmentation_graph_or_a_damaged_file_is_one_line(setup, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    root, ckpt = setup
    graph = tmp_path / "m.onnx"
    assert main(["export", "convnext_atto", str(graph), "--checkpoint", str(ckpt), "--format", "onnx",
                 "--img-size", "32"]) == 0
    proto = onnx.load(str(graph))
    for prop in proto.metadata_props:
        if prop.key == "task":
            prop.value = "segmentation"
    onnx.save(proto, str(tmp_path / "seg.onnx"))
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(graph.read_bytes()[: graph.stat().st_size // 3])
    img = str(root / "data" / "val" / "cat" / "0.jpg")
    capsys.readouterr()
    for path, words in ((tmp_path / "seg.onnx", "of a segmentation model"), (damaged, "not a readable ONNX graph")):
        assert main(["predict", img, "--checkpoint", str(path)]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_graph_kind_is_read_from_the_first_bytes(tmp_path):
    from convnext.weights.io import runtime_graph_kind

    (tmp_path / "a.xml").write_text('<?xml version="1.0"?>\n<net name="Model0" version="11">\n</net>\n')
    (tmp_path / "b.model").write_bytes(b"\x08\x08\x12\x07pytorch")  # ModelProto: ir_version 8, producer_name
    (tmp_path / "c.pth").write_bytes(b"\x80\x02}q\x00.")  # a pickle
    (tmp_path / "d.xml").write_text("<root/>")
    shutil.copy(tmp_path / "b.model", tmp_path / "e.onnx")
    kinds = {p.name: runtime_graph_kind(p) for p in sorted(tmp_path.iterdir())}
    assert kinds == {"a.xml": "openvino", "b.model": "onnx", "c.pth": None, "d.xml": None, "e.onnx": "onnx"}


def test_crop_fraction_read_back_from_export_metadata_gives_the_same_resize():
    from convnext.data.transforms import eval_transform
    from convnext.deploy.runtimes import crop_of_preprocessing

    for size in (32, 64, 224, 288, 384):
        for short in range(size, 2 * size):  # every resize an export can describe
            crop = crop_of_preprocessing({"resize_shorter_side": short, "center_crop": size})
            assert int(size / eval_transform(size, crop_pct=crop).crop_pct) == short
    assert crop_of_preprocessing({"resize_square": 384}) == 1.0 and crop_of_preprocessing({"crop_pct": 0.95}) == 0.95
    assert crop_of_preprocessing({}) is None


def test_a_torchscript_export_is_named_not_sent_to_torch_load(setup, tmp_path, capsys):
    root, ckpt = setup
    ts = tmp_path / "m.pt"
    assert main(["export", "convnext_atto", str(ts), "--checkpoint", str(ckpt), "--format", "torchscript",
                 "--img-size", "32"]) == 0
    capsys.readouterr()
    assert main(["predict", str(root / "data" / "val" / "cat" / "0.jpg"), "--checkpoint", str(ts)]) == 2
    err = capsys.readouterr().err
    assert "a TorchScript module" in err and "weights_only" not in err and len(err.strip().splitlines()) == 1
