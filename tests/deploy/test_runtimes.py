"""ONNX Runtime / OpenVINO as deployment targets: IR export with metadata, parity, and bench --compare."""
import pytest
import torch

from convnext.bench.peers import _spread_scales
from convnext.models import create_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def atto():
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=3).eval()
    _spread_scales(model, torch.Generator().manual_seed(0))
    return model


def test_openvino_ir_carries_classes_and_preprocessing_and_matches(atto, tmp_path):
    pytest.importorskip("openvino")
    from convnext.deploy.runtimes import (
        OnnxRuntimeModule,
        OpenVINOModule,
        export_onnx,
        export_openvino,
        preprocessing_meta,
        read_openvino_meta,
    )

    x = torch.randn(2, 3, 32, 32)
    export_onnx(atto, tmp_path / "m.onnx", x)
    classes = ["tabby cat", "dog", "ship"]
    export_openvino(atto, tmp_path / "m.xml", x, classes, preprocessing_meta(32), onnx_path=tmp_path / "m.onnx")
    assert (tmp_path / "m.bin").stat().st_size > 4 * 3_000_000  # fp32 weights (not compressed to fp16)
    meta = read_openvino_meta(tmp_path / "m.xml")
    assert meta["classes"] == classes and meta["preprocessing"]["img_size"] == 32
    assert meta["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    import openvino as ov

    info = ov.Core().read_model(str(tmp_path / "m.xml")).get_rt_info(["model_info", "labels"]).astype(str)
    assert info == "tabby_cat dog ship"
    y = torch.randn(5, 3, 32, 32)  # dynamic batch
    with torch.no_grad():
        ref = atto(y)
    for module in (OpenVINOModule(tmp_path / "m.xml", precision="f32"), OnnxRuntimeModule(tmp_path / "m.onnx")):
        assert (module(y) - ref).abs().max().item() < 1e-4


def test_bench_compare_runtimes_smoke():
    from convnext.bench import BenchConfig, format_report, run_benchmark

    compare = ("onnxruntime", "openvino") if _has("openvino") else ("onnxruntime",)
    cfg = BenchConfig(model="convnext_atto", batch_size=1, img_size=32, warmup=1, repeats=1, compare=compare,
                      dtype="auto", cpu_paths=("eager",))
    report = run_benchmark(cfg, progress=False)
    assert set(report["results"]) == {"ours", *compare}
    assert report["ours_path"].startswith("CPU inference: ") and report["config"]["resolved_dtype"] in ("fp32", "bf16")
    assert all(a["ok"] for a in report["agreement"].values())
    text = format_report(report)
    assert "ours: CPU inference" in text and "speed-up ours / onnxruntime" in text
    assert "| ours: fastest CPU path, peers eager |" in text.splitlines()[0]  # not "| eager": ours may be compiled
    with pytest.raises(ValueError, match="CPU inference only"):
        run_benchmark(BenchConfig(model="convnext_atto", batch_size=1, img_size=32, mode="train",
                                  compare=("onnxruntime",)), progress=False)


def _has(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_bench_compare_int8(monkeypatch):
    """`--compare int8`: ours as a PT2E int8 program beside ours, its logits within a quarter of the largest
    logit seen in calibration."""
    pytest.importorskip("torchao")
    import functools

    import convnext.deploy.int8 as int8
    from convnext.bench import BenchConfig, format_report, run_benchmark

    monkeypatch.setattr(int8, "Int8Model", functools.partial(int8.Int8Model, compile=False))  # a fast test
    cfg = BenchConfig(model="convnext_atto", batch_size=2, img_size=32, warmup=1, repeats=1, compare=("int8",),
                      dtype="fp32")
    report = run_benchmark(cfg, progress=False)
    assert set(report["results"]) == {"ours", "int8"}
    assert "int8 program (PT2E)" in report["results"]["int8"]["source"]
    assert "calibrated on 16 random images" in report["results"]["int8"]["source"]
    agreement = report["agreement"]["int8"]
    assert agreement["ok"] and 0 < agreement["max_abs_diff"] <= agreement["tolerance"]  # int8 rounds: not exact
    assert "speed-up ours / int8" in format_report(report)
