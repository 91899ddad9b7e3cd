"""`convnext bench` end to end on a tiny model and batch (no timing is asserted, only the plumbing)."""
import json

import pytest
import torch

from convnext.bench import BenchConfig, OutputMismatch, run_benchmark
from convnext.bench.peers import build_implementations
from convnext.cli import main

# CPU inference times ours' eager path only (compiling each candidate would take tens of seconds per test;
# test_cli_writes_json_and_prints_ratio times two).
TINY = dict(model="convnext_atto", batch_size=2, img_size=32, warmup=1, repeats=2, cpu_paths=("eager",))


def test_run_benchmark_report_fields():
    report = run_benchmark(BenchConfig(**TINY, compare=("timm", "torchvision")), progress=False)
    assert set(report["results"]) == {"ours", "timm"}
    assert report["skipped"] == {"torchvision": "torchvision has no implementation of convnext_atto"}
    for r in report["results"].values():
        assert r["img_per_s"] > 0 and len(r["samples_ms"]) == 2
        assert r["latency_ms_min"] <= r["latency_ms"] <= r["latency_ms_max"]
        assert "peak_memory_mib" in r and r["first_call_s"] > 0
    agree = report["agreement"]["timm"]
    assert agree["ok"] and agree["max_abs_diff"] <= 1e-4 and agree["max_abs_logit"] > 0
    ratio = report["ratios"]["timm"]
    assert ratio["speedup_per_round_min"] <= ratio["speedup_per_round_median"] <= ratio["speedup_per_round_max"]
    assert report["machine"]["torch"] == torch.__version__ and report["config"]["model"] == "convnext_atto"
    json.dumps(report)  # serialisable


def test_identical_weights_across_three_implementations():
    impls, skipped = build_implementations("convnext_tiny", ["timm", "torchvision"], num_classes=10)
    assert [i.name for i in impls] == ["ours", "timm", "torchvision"] and not skipped
    gamma = impls[0].model.stages[0][0].gamma
    assert gamma.min() >= 0.1  # layer scale spread away from 1e-6 so that blocks matter
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outs = [i.model(x) for i in impls]
    assert torch.allclose(outs[0], outs[1], atol=1e-4) and torch.allclose(outs[0], outs[2], atol=1e-4)


def test_perturbed_model_fails_the_agreement_check():
    impls, _ = build_implementations("convnext_atto", ["timm"], num_classes=10)
    with torch.no_grad():
        impls[0].model.stages[2][1].pwconv2.weight.mul_(1.01)  # a 1% error in one block
    with pytest.raises(OutputMismatch, match=r"timm: max\|diff\| = \S+, tolerance 0.0001"):  # its own bound named
        run_benchmark(BenchConfig(**TINY, num_classes=10), implementations=impls, progress=False)


def test_train_mode_and_ours_alone(tmp_path):
    report = run_benchmark(BenchConfig(**TINY, mode="train", compare=()), progress=False)
    assert list(report["results"]) == ["ours"] and report["ratios"] == {}


def test_cli_writes_json_and_prints_ratio(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["bench", "--model", "convnext_atto", "--batch-size", "2", "--img-size", "32", "--repeats", "2",
               "--warmup", "1", "--compare", "timm", "--json", str(out), "--no-progress", "--cpu-paths", "eager,jit"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "speed-up ours / timm" in text and "outputs agree" in text
    report = json.loads(out.read_text())
    assert report["results"]["ours"]["img_per_s"] > 0
    assert report["config"]["cpu_paths"] == ["eager", "jit"] and "fastest of 2 measured" in report["ours_path"]


def test_cli_draws_the_run(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.png"
    rc = main(["bench", "--model", "convnext_atto", "--batch-size", "2", "--img-size", "32", "--repeats", "2",
               "--warmup", "1", "--compare", "timm", "--dtype", "fp32", "--cpu-paths", "eager", "--plot", str(out),
               "--no-progress"])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_bars_follow_the_report(tmp_path):
    from convnext.bench.plot import _bars, panel_title, plot_reports

    def result(ms):  # batch 4: img/s = 4000 / ms
        return {"img_per_s": 4000 / ms[1], "latency_ms": ms[1], "latency_ms_min": ms[0], "latency_ms_max": ms[2]}

    report = {"config": {"model": "convnext_tiny", "mode": "infer", "batch_size": 4, "img_size": 224,
                         "dtype": "auto", "resolved_dtype": "bf16", "device": "cpu"},
              "results": {"timm": result((180, 200, 250)), "ours": result((90, 100, 125)),
                          "int8": result((50, 64, 80))},
              "ratios": {"timm": {"speedup_per_round_median": 2.0, "speedup_per_round_min": 1.5,
                                  "speedup_per_round_max": 2.5},
                         "int8": {"speedup_per_round_median": 0.64, "speedup_per_round_min": 0.5,
                                  "speedup_per_round_max": 0.8}},
              "machine": {"cpu": "Some CPU", "torch_threads": 2, "torch": "2.x"}}
    bars = _bars(report)
    assert [b[0] for b in bars] == ["ours", "timm", "int8"]  # ours first, then the report's order
    name, ips, slowest, fastest, label = bars[1]
    assert (ips, slowest, fastest) == pytest.approx((20.0, 16.0, 4000 / 180))
    assert "ours / timm 2.00x, 1.50..2.50" in label
    assert "int8 / ours 1.56x, 1.25..2.00" in bars[2][4]  # our own int8 program: its speed-up over ours
    assert panel_title(report) == "convnext_tiny infer, batch 4, 224px, auto -> bf16, cpu"
    out = plot_reports([report, report], tmp_path / "two.svg", titles=["batch 4", "again"])
    assert out.read_text().lstrip().startswith("<?xml") and "batch 4" in out.read_text()
    with pytest.raises(ValueError, match="no timed implementation"):
        plot_reports([{"results": {}}], tmp_path / "empty.png")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "cuda"], "CUDA is not available"),
        (["--compare", "keras"], "--compare: unknown implementation"),
        (["--cpu-paths", "eager,tensorrt"], "--cpu-paths: unknown path(s) ['tensorrt']"),
        (["--model", "convnext_tinyy"], "--model: unknown model"),
        (["--mode", "data"], "--mode data needs --data"),
        (["--mode", "data", "--data", "/nonexistent.tar.gz"], "no such file"),
        (["--plot", "chart.txt"], "--plot chart.txt: is a .txt file; expected .png or .svg or .pdf or .jpg"),
        (["--plot", "chart.png", "--mode", "data", "--data", "x.tar"], "--plot: charts are drawn for --mode infer"),
    ],
)
def test_cli_user_errors(argv, message, capsys):
    if argv[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = main(["bench", "--model", "convnext_atto", "--img-size", "32", "--no-progress", *argv] if "--model" not in argv
              else ["bench", "--no-progress", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_peer_library_is_skipped(monkeypatch):
    import importlib

    real_import_module = importlib.import_module

    def import_module(name, *args):
        if name == "torchvision":
            raise ImportError("No module named 'torchvision'")
        return real_import_module(name, *args)

    monkeypatch.setattr(importlib, "import_module", import_module)
    impls, skipped = build_implementations("convnext_tiny", ["torchvision"], num_classes=10)
    assert [i.name for i in impls] == ["ours"]
    assert "not installed" in skipped["torchvision"]


def test_data_mode_on_real_jpegs(shared_data, tmp_path, capsys):
    out = tmp_path / "data.json"
    rc = main(["bench", "--mode", "data", "--data", str(shared_data / "cifar10-test-jpeg.tar.gz"),
               "--images", "8", "--repeats", "1", "--json", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    stored, upscaled = report["results"].values()
    assert stored["source_size"] == [32, 32] and upscaled["source_size"] == [500, 375]
    assert stored["img_per_s_per_worker"] > 0 and "RandomResizedCrop" in report["transform"]


def test_optimized_ours_still_agrees():
    report = run_benchmark(BenchConfig(**TINY, compare=("timm",), optimize_ours=True), progress=False)
    assert "optimize_for_inference" in report["results"]["ours"]["source"]
    assert report["agreement"]["timm"]["max_abs_diff"] <= 1e-4
    with pytest.raises(ValueError, match="infer only"):
        BenchConfig(**TINY, mode="train", optimize_ours=True)


@pytest.mark.parametrize("layout", ["flat", "imagefolder"])
def test_data_mode_on_a_folder_of_images(layout, tmp_path, capsys):
    from PIL import Image

    for i in range(3):
        folder = tmp_path / "imgs" / (f"class{i % 2}" if layout == "imagefolder" else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (i * 40, 80, 120)).save(folder / f"{i}.jpg")
    out = tmp_path / "data.json"
    rc = main(["bench", "--mode", "data", "--data", str(tmp_path / "imgs"), "--images", "3", "--repeats", "1",
               "--img-size", "32", "--json", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    stored = json.loads(out.read_text())["results"]["as stored"]
    assert stored["images"] == 3 and stored["source_size"] == [40, 30]
    (tmp_path / "empty").mkdir()
    assert main(["bench", "--mode", "data", "--data", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "no image files" in capsys.readouterr().err


def test_paper_reference_only_for_inference():
    from convnext.bench.runner import paper_reference

    infer = paper_reference(BenchConfig(model="convnext_tiny", img_size=224))
    assert infer["V100"] == 774.7 and infer["A100"] == 1943.5
    assert paper_reference(BenchConfig(model="convnext_tiny", img_size=224, mode="train")) == {}


def test_compile_announced_and_header_formatted(monkeypatch, capsys):
    from convnext.bench import format_report

    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # the message, not inductor, is under test
    report = run_benchmark(BenchConfig(**TINY, compare=(), compile=True), progress=False)
    assert "compiling ours (first call can take minutes)..." in capsys.readouterr().err
    report["load_avg_before_after"] = [[4.111, 3.3, 2.0], None]
    header = format_report(report).splitlines()[1]
    assert header == "load average (1, 5, 15 min): before 4.11 3.30 2.00, after n/a"


def test_dense_models_are_timed_at_a_given_resolution():
    from convnext.bench.dense import format_dense_report, run_dense_benchmark

    for name in ("mask_rcnn_convnext_atto", "upernet_convnext_atto"):
        r = run_dense_benchmark(name, size=(64, 96), warmup=1, repeats=1, progress=False)
        assert r["input_hw"] == [64, 96] and r["img_per_s"] > 0 and r["gmacs"] > 0
        assert "ours only" in format_dense_report(r)


def test_auto_dtype_follows_the_cpu_features(monkeypatch):
    import convnext.deploy.features as features

    amx = features.CpuFeatures(amx_bf16=True, avx512_bf16=True, source="given")
    monkeypatch.setattr(features, "cpu_features", lambda: amx)
    cfg = BenchConfig(**TINY, dtype="auto")
    assert cfg.resolved_dtype == "bf16" and cfg.fast_cpu_path and cfg.default_tolerance == 0.1
    assert not BenchConfig(**TINY, dtype="auto", mode="train").fast_cpu_path  # training: bf16 autocast
    assert BenchConfig(**TINY, dtype="fp32").resolved_dtype == "fp32"
    assert BenchConfig(**TINY, dtype="fp32").fast_cpu_path  # exact fp32: fast_cpu_model in fp32
    assert not BenchConfig(**TINY, dtype="fp32", optimize_ours=True).fast_cpu_path  # as built + folded
    monkeypatch.setattr(features, "cpu_features", lambda: features.CpuFeatures(avx512_vnni=True, source="given"))
    cfg = BenchConfig(**TINY, dtype="auto")
    assert cfg.resolved_dtype == "fp32" and cfg.fast_cpu_path and cfg.default_tolerance == 1e-4


def test_plot_path_checked_before_the_run(tmp_path):
    from convnext.bench.plot import check_plot_path
    from convnext.errors import UserError

    (tmp_path / "d.png").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        check_plot_path(str(tmp_path / "d.png"))
    (tmp_path / "old.png").write_bytes(b"x")
    check_plot_path(str(tmp_path / "old.png"))  # replaced, as --json replaces its file
    check_plot_path(str(tmp_path / "new" / "sub" / "c.svg"))  # folders are made
