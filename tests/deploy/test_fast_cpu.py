"""`fast_cpu_model`: bf16 end to end (no fp32 between ops), numerics vs fp32, path selection."""
import pytest
import torch

from convnext.bench.peers import _spread_scales
from convnext.deploy.cpu import fast_cpu_model
from convnext.deploy.features import CpuFeatures
from convnext.models import create_model

AMX = CpuFeatures(amx_bf16=True, amx_int8=True, avx512_bf16=True, avx512_vnni=True, source="given")
NO_BF16 = CpuFeatures(avx512_vnni=True, source="given")


@pytest.fixture(scope="module")
def atto():
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=10).eval()
    _spread_scales(model, torch.Generator().manual_seed(0))  # layer scale ~U(0.1, 1): every block matters
    return model


def test_fp32_path_equals_the_model(atto):
    x = torch.randn(3, 3, 64, 64)
    fast = fast_cpu_model(atto, "fp32", batch=3, img_size=64, candidates=("eager",))
    with torch.no_grad():
        ref = atto(x)
    assert fast.dtype == "fp32" and fast.timings == {}  # one candidate: nothing timed
    assert torch.allclose(fast(x), ref, atol=1e-4)
    assert atto.stages[0][0].gamma is not None  # the caller's model is untouched (a copy was folded)


def test_auto_follows_the_features(atto):
    assert fast_cpu_model(atto, "auto", 1, 32, candidates=("eager",), features=NO_BF16).dtype == "fp32"
    fast = fast_cpu_model(atto, "auto", 1, 32, candidates=("eager",), features=AMX)
    assert fast.dtype == "bf16" and "AMX-BF16" in fast.describe()


def test_bf16_runs_bf16_end_to_end(atto):
    fast = fast_cpu_model(atto, "bf16", batch=2, img_size=64, candidates=("eager",))
    seen = {}

    def record(module, inputs, output):
        seen[type(module).__name__] = seen.get(type(module).__name__, set()) | {inputs[0].dtype, output.dtype}

    hooks = [m.register_forward_hook(record) for m in fast.module.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.Linear))]
    out = fast(torch.randn(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert out.dtype == torch.float32  # only the logits are cast back
    assert {"Conv2d", "LayerNorm", "Linear", "LayerNorm2d"} <= set(seen)
    assert all(d == {torch.bfloat16} for d in seen.values()), seen  # dwconv, LN, both GEMMs: no fp32 round trip
    assert all(p.dtype == torch.bfloat16 for p in fast.module.parameters())


def test_bf16_numerics_close_to_fp32(atto):
    torch.manual_seed(1)
    x = torch.randn(32, 3, 64, 64)
    with torch.no_grad():
        ref = atto(x)
    for candidates in (("eager",), ("jit",)):
        out = fast_cpu_model(atto, "bf16", batch=32, img_size=64, candidates=candidates)(x)
        rel = ((out - ref).norm() / ref.norm()).item()
        agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
        assert rel < 0.03 and agree >= 0.9, (candidates, rel, agree)


def test_non_square_inputs(atto):
    """img_size as (H, W): timed on that shape; logits still those of the model."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = atto(x)
    fast = fast_cpu_model(atto, "fp32", batch=2, img_size=(64, 96), candidates=("eager", "jit"), repeats=1)
    assert "64x96px" in fast.path
    assert torch.allclose(fast(x), ref, atol=1e-4)


def test_candidates_are_timed_and_the_fastest_kept(atto):
    fast = fast_cpu_model(atto, "bf16", batch=1, img_size=32, candidates=("eager", "jit"), repeats=1)
    assert set(fast.timings) == {"eager", "jit"}
    best = min(fast.timings, key=fast.timings.get)
    assert ("jit" in fast.path) == (best == "jit") and "measured s/batch" in fast.describe()
    with pytest.raises(ValueError, match="candidates"):
        fast_cpu_model(atto, "fp32", 1, 32, candidates=("tensorrt",))


def test_fp32_default_times_every_path_and_each_equals_fp32(atto):
    """In fp32 too, the default measures eager, inductor and TorchScript and keeps the fastest; all are fp32-exact."""
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = atto(x)
    fast = fast_cpu_model(atto, "fp32", batch=2, img_size=32, repeats=1)
    assert set(fast.timings) == {"eager", "compile", "jit"} and "fastest of 3 measured" in fast.path
    assert torch.allclose(fast(x), ref, atol=1e-4)
    for name in ("compile", "jit"):  # whichever won, the others compute the same logits (eager: the test above)
        if name != min(fast.timings, key=fast.timings.get):
            one = fast_cpu_model(atto, "fp32", batch=2, img_size=32, candidates=(name,))
            assert torch.allclose(one(x), ref, atol=1e-4), name


def test_compiled_path_compiles_a_new_batch_size_on_its_third_call(atto):
    """A last partial batch runs eager (no compile); a batch size the caller keeps using gets compiled."""
    fast = fast_cpu_model(atto, "fp32", batch=2, img_size=32, candidates=("compile",))
    runner = fast._runner
    assert runner.compiled_shapes == {(2, 3, 32, 32)}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = atto(x)
    for call in range(1, 4):
        out = fast(x)
        assert torch.allclose(out, ref, atol=1e-4)
        assert ((3, 3, 32, 32) in runner.compiled_shapes) == (call == 3), call


def test_without_our_kernels_the_library_paths_run(atto, monkeypatch):
    """A CPU or compiler where our AMX / AVX512 kernels do not build: bf16, fp32 and int8 run on oneDNN / inductor
    alone, and their descriptions do not claim our kernels."""
    from convnext.deploy import amx_gelu
    from convnext.deploy.int8 import Int8Model, quantize_int8

    monkeypatch.setattr(amx_gelu, "available", lambda: False)
    torch.manual_seed(4)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = atto(x)
    fast = fast_cpu_model(atto, "bf16", batch=4, img_size=64, candidates=("eager",))
    out = fast(x)
    assert "of ours" not in fast.path and fast.dtype == "bf16"
    assert ((out - ref).norm() / ref.norm()).item() < 0.03
    exact = fast_cpu_model(atto, "fp32", batch=4, img_size=64, candidates=("eager",))  # oneDNN's fused Linears
    assert "of ours" not in exact.path and "oneDNN kernels" in exact.path
    assert torch.allclose(exact(x), ref, atol=1e-4)
    pytest.importorskip("torchao")
    int8 = Int8Model(quantize_int8(atto, [x], 64), mixed_bf16=True, compile=False)
    got = int8(x)
    assert "our AMX" not in int8.describe() and int8.fused_gelu == 0 and int8.fused_norms == 0
    assert ((got - ref).norm() / ref.norm()).item() < 0.1
