"""int8 PT2E: quantize -> save (.pt2) -> load -> run, on atto at a tiny size (eager, not compiled: fast)."""
import pytest
import torch

pytest.importorskip("torchao")

from convnext.bench.peers import _spread_scales  # noqa: E402
from convnext.deploy.int8 import load_int8, quantize_int8, save_int8  # noqa: E402
from convnext.models import create_model  # noqa: E402


def test_int8_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=10).eval()
    _spread_scales(model, torch.Generator().manual_seed(0))
    calib = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    program = quantize_int8(model, calib, img_size=32)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets)  # activations quantized
    assert any("dequantize_per_channel" in t for t in targets)  # per-channel int8 weights
    assert any("layer_norm" in t for t in targets) and any("gelu" in t for t in targets)  # stay float
    def int8_weight(node):
        return "dequantize" in str(getattr(node.args[1], "target", ""))

    convs = [n for n in program.graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]
    assert len(convs) == 16 and not any(int8_weight(n) for n in convs)  # stem, 12 depthwise, 3 downsampling: float
    linears = [n for n in program.graph.nodes if n.op == "call_function" and "linear" in str(n.target)]
    # pwconv1 and pwconv2 (after GELU) of each of the 12 blocks and the head: all int8
    assert len(linears) == 25 and all(map(int8_weight, linears))
    path = tmp_path / "atto.pt2"
    save_int8(program, path, {"classes": "a\nb"})
    loaded, meta = load_int8(path, mixed_bf16=False, compile=False)
    assert meta["classes"] == "a\nb"
    x = torch.randn(3, 3, 32, 32)  # another batch size than calibrated / exported with
    with torch.no_grad():
        ref = model(x)
    out = loaded(x)
    assert out.shape == (3, 10) and out.dtype == torch.float32
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 0.2, rel  # int8 noise, not a broken graph (a wrong model is O(1))
    with pytest.raises(ValueError, match="at least one image"):
        quantize_int8(model, [], img_size=32)


def test_int8_convs_quantizes_every_convolution_too():
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=10).eval()
    program = quantize_int8(model, [torch.randn(2, 3, 32, 32)], img_size=32, quantize_convs=True)
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    convs = [n for n in nodes if "conv2d" in str(n.target)]
    linears = [n for n in nodes if "linear" in str(n.target)]
    assert len(convs) == 16 and len(linears) == 25
    assert all("dequantize" in str(getattr(n.args[1], "target", "")) for n in convs + linears)


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_int8_mixed_bf16_runs_the_exported_program_under_bf16_autocast(tmp_path, compile):
    """What `load_int8` picks on AMX / AVX512-BF16 CPUs: the float ops in bf16. The program's export-time
    fp32 dtype checks must not stop it (they failed the first call on such CPUs)."""
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=10).eval()
    _spread_scales(model, torch.Generator().manual_seed(0))
    path = tmp_path / "atto.pt2"
    save_int8(quantize_int8(model, [torch.randn(4, 3, 32, 32)], img_size=32), path)
    loaded, _ = load_int8(path, mixed_bf16=True, compile=compile)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    out = loaded(x)
    assert out.dtype == torch.float32 and out.shape == (2, 10)
    assert ((out - ref).norm() / ref.norm()).item() < 0.2


def test_int8_model_falls_back_to_the_python_wrapper_when_the_cpp_one_fails_to_build(tmp_path):
    import torch._inductor.config as inductor_config

    from convnext.deploy.int8 import Int8Model

    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=10).eval()
    program = quantize_int8(model, [torch.randn(2, 3, 32, 32)], img_size=32)
    int8 = Int8Model(program, mixed_bf16=False, compile=False)
    seen = []

    def fn(x):  # stands in for the compiled program: the C++ wrapper build fails, the Python one runs
        seen.append(inductor_config.cpp_wrapper)
        if inductor_config.cpp_wrapper:
            raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ wrapper"), None)
        return int8.module(x)

    int8._fn, int8.cpp_wrapper = fn, True
    x = torch.randn(2, 3, 32, 32)
    assert int8(x).shape == (2, 10) and seen == [True, False] and not int8.cpp_wrapper
    int8(x)
    assert seen == [True, False, False]  # the Python wrapper from then on
    int8.cpp_wrapper = True
    int8._fn = lambda x: (_ for _ in ()).throw(ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):  # other errors are the caller's, not a reason to fall back
        int8(x)
    assert int8.cpp_wrapper
    assert all(k.startswith("module.") for k in int8.state_dict())  # the program's weights, once


def test_quiet_library_notes_silences_only_the_known_notes_and_restores_the_loggers():
    import logging
    import warnings

    from convnext.deploy.cpu import quiet_library_notes

    log = logging.getLogger("torch.utils.cpp_extension")
    before = log.level
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with quiet_library_notes():
                log.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
                warnings.warn("No complete tensor found in the group! Returning the first one.", UserWarning)
                warnings.warn("something the user should see", UserWarning)
                log.error("an error still shows")
            log.warning("after the block")
    finally:
        log.removeHandler(handler)
    assert [str(w.message) for w in seen] == ["something the user should see"]
    assert records == ["an error still shows", "after the block"]
    assert log.level == before


def test_int8_model_compiles_once_whatever_grad_mode_the_caller_uses(monkeypatch):
    """A caller under inference_mode, then under no_grad (bench's agreement check, then its timing): one
    graph, not a recompile for the other grad mode or for an input made under inference_mode."""
    import functools

    from torch._dynamo.utils import counters

    from convnext.deploy.int8 import Int8Model

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))  # guards only
    torch._dynamo.reset()
    model = create_model("convnext_atto", num_classes=3).eval()
    q = Int8Model(quantize_int8(model, [torch.randn(2, 3, 32, 32)], 32), mixed_bf16=False)
    counters.clear()
    outs = []
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode, torch.no_grad):
        with mode():
            x = torch.randn(2, 3, 32, 32)
            outs.append(q(x))
    assert counters["stats"]["unique_graphs"] == 1
    outs[0].mul_(2)  # an ordinary tensor, even from a call under inference_mode
