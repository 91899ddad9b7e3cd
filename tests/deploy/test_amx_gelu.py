"""The fused int8 pwconv1 + GELU kernel (`convnext.deploy.amx_gelu`): the kernel against a reference, and
the program rewrite against the program as oneDNN runs it. Skipped where the CPU has no AMX-INT8 /
AVX512-VBMI or the compiler cannot build it."""
import json
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchao")

from convnext.bench.peers import _spread_scales  # noqa: E402
from convnext.deploy import amx_gelu  # noqa: E402
from convnext.deploy.int8 import Int8Model, load_int8, quantize_int8, save_int8  # noqa: E402
from convnext.models import create_model  # noqa: E402

needs_kernel = pytest.mark.skipif(not amx_gelu.available(), reason="no AMX-INT8 / AVX512-VBMI kernel on this machine")


def test_gelu_table_maps_the_pre_gelu_grid_onto_the_output_grid():
    table, inv, zp = amx_gelu.gelu_table((-2.0, 6.0), 0.03, 6)
    step = 1 / inv
    assert zp == round(2.0 / step) and table.dtype == torch.uint8
    i = torch.arange(256, dtype=torch.float64)
    expected = torch.clamp(torch.round(F.gelu((i - zp) * step) / 0.03) + 6, 0, 255)
    assert torch.equal(table.double(), expected)
    assert amx_gelu._step(96) == 48 and amx_gelu._step(40) == 40 and amx_gelu._step(768) == 64
    assert amx_gelu._step(2) is None


@needs_kernel
@pytest.mark.parametrize("m,k,n", [(64, 96, 384), (49, 768, 64), (77, 40, 160), (3, 80, 32)])
def test_kernel_matches_the_table_applied_to_the_exact_accumulators(m, k, n):
    """Row counts that are not multiples of 32 (the padded last block), K steps of 64 / 48 / 40."""
    g = torch.Generator().manual_seed(m + k + n)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    in_scale, in_zp, w_scale, bias = 0.05, 128, torch.rand(n, generator=g) * 1e-3, torch.randn(n, generator=g)
    acc = a.long() @ w.long().t()  # exact int32 accumulators
    v = in_scale * w_scale.double() * (acc - in_zp * w.long().sum(1)).double() + bias.double()  # dequantised
    table, inv, zp = amx_gelu.gelu_table((v.min().item() * 0.8, v.max().item() * 0.8), 0.02, 10)  # some clamp
    scale, shift = amx_gelu.grid_affine(in_scale, in_zp, w, w_scale, bias, inv, zp)
    ks = amx_gelu._step(k)
    got = amx_gelu.qlinear_gelu_table(a, amx_gelu.pack_weight(w, ks), scale, shift, table, ks)
    pos = v * inv + zp  # the position on the pre-GELU grid
    near_tie = (pos - pos.floor() - 0.5).abs() < 1e-3  # fp32 in the kernel, fp64 here
    expected = table[torch.clamp(torch.round(pos), 0, 255).long()]
    assert got.shape == (m, n) and got.dtype == torch.uint8 and near_tie.float().mean() < 0.05
    assert torch.equal(got[~near_tie], expected[~near_tie])
    batched = amx_gelu.qlinear_gelu_table(a.view(1, m, k), amx_gelu.pack_weight(w, ks), scale, shift, table, ks)
    assert torch.equal(batched, got.view(1, m, n))  # leading dimensions kept


@needs_kernel
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("m,k,n", [(64, 384, 96), (49, 256, 64), (5, 160, 32)])
def test_dequantising_kernel_matches_the_dequantised_accumulators(m, k, n, bf16):
    g = torch.Generator().manual_seed(m + k + n)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    in_scale, in_zp, w_scale, bias = 0.03, 100, torch.rand(n, generator=g) * 1e-3, torch.randn(n, generator=g)
    acc = a.long() @ w.long().t()
    v = in_scale * w_scale.double() * (acc - in_zp * w.long().sum(1)).double() + bias.double()
    scale, shift = amx_gelu.grid_affine(in_scale, in_zp, w, w_scale, bias, 1.0, 0)
    ks = amx_gelu._step(k)
    got = amx_gelu.qlinear_dequant(a.view(1, m, k), amx_gelu.pack_weight(w, ks), scale, shift, ks, bf16)
    assert got.shape == (1, m, n) and got.dtype == (torch.bfloat16 if bf16 else torch.float32)
    tol = 2 ** -8 if bf16 else 1e-5  # bf16: one rounding of the fp32 value
    assert torch.allclose(got[0].double(), v, rtol=tol, atol=1e-4)
    # with a block's residual added in the same store: the output dtype as torch promotes it, one rounding
    for res_dtype in (torch.float32, torch.bfloat16):
        res = torch.randn(1, m, n, generator=g).to(res_dtype)
        got = amx_gelu.qlinear_dequant_residual(a.view(1, m, k), amx_gelu.pack_weight(w, ks), scale, shift, res, ks,
                                                bf16)
        assert got.shape == (1, m, n) and got.dtype == torch.promote_types(
            torch.bfloat16 if bf16 else torch.float32, res_dtype)
        tol = 2 ** -8 if got.dtype == torch.bfloat16 else 1e-5
        assert torch.allclose(got[0].double(), v + res[0].double(), rtol=tol, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("m,c,res_dtype,bf16,threads", [(3136, 96, torch.bfloat16, True, 2),
                                                         (500, 64, torch.float32, True, 2),
                                                         (300, 32, torch.float32, False, 3),
                                                         (40, 128, torch.bfloat16, True, 2)])
def test_qmlp_equals_the_two_int8_gemms(m, c, res_dtype, bf16, threads):
    """`qmlp` (one pass, the uint8 hidden in the thread's cache; pwconv1's K step 64 or 32 bytes) against
    `qlinear_gelu_table` then `qlinear_dequant_residual`: equal outputs, dtype as torch promotes, any thread count;
    with few rows it runs those two itself."""
    g = torch.Generator().manual_seed(m + c)
    a = torch.randint(0, 256, (1, m, c), dtype=torch.uint8, generator=g)
    w1 = torch.randint(-127, 128, (4 * c, c), dtype=torch.int8, generator=g)
    w2 = torch.randint(-127, 128, (c, 4 * c), dtype=torch.int8, generator=g)
    table = torch.randint(0, 256, (256,), dtype=torch.uint8, generator=g)
    s1, h1 = torch.rand(4 * c, generator=g) * 0.02, torch.randn(4 * c, generator=g) * 20 + 128
    s2, h2 = torch.rand(c, generator=g) * 1e-3, torch.randn(c, generator=g)
    res = torch.randn(1, m, c, generator=g).to(res_dtype)
    ks1 = amx_gelu._step(c)
    p1, p2 = amx_gelu.pack_weight(w1, ks1), amx_gelu.pack_weight(w2, 64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = amx_gelu.qmlp(a, p1, s1, h1, table, ks1, p2, s2, h2, res, bf16)
        hidden = amx_gelu.qlinear_gelu_table(a, p1, s1, h1, table, ks1)
        two = amx_gelu.qlinear_dequant_residual(hidden, p2, s2, h2, res, 64, bf16)
    finally:
        torch.set_num_threads(before)
    assert got.shape == (1, m, c) and got.dtype == torch.promote_types(
        torch.bfloat16 if bf16 else torch.float32, res_dtype)
    assert len(hidden.unique()) > 100 and torch.equal(got, two)


@needs_kernel
@pytest.mark.parametrize("b, c, h, dtype", [(2, 96, 56, torch.float32), (1, 32, 23, torch.bfloat16),
                                           (3, 384, 14, torch.bfloat16), (2, 768, 7, torch.float32),
                                           (1, 16, 3, torch.float32)])
def test_depthwise_norm_kernel_matches_conv_layernorm_quantize(b, c, h, dtype):
    """One pass of depthwise 7 x 7 conv + LayerNorm + uint8 rounding against the three ops in fp32 (on the
    input as the kernel reads it): equal but for the odd value at a rounding boundary, one level off."""
    g = torch.Generator().manual_seed(c + h)
    x = torch.randn(b, c, h, h, generator=g).to(dtype).to(memory_format=torch.channels_last)
    w, bias = torch.randn(c, 1, 7, 7, generator=g) * 0.1, torch.randn(c, generator=g)
    gamma, beta = torch.randn(c, generator=g), torch.randn(c, generator=g)
    scale, zp = 0.04, 120
    y = F.layer_norm(F.conv2d(x.float(), w, bias, padding=3, groups=c).permute(0, 2, 3, 1), [c], gamma, beta, 1e-6)
    ref = torch.clamp(torch.round(y / scale) + zp, 0, 255).to(torch.uint8)
    got = amx_gelu.dwconv_ln_quant(x, amx_gelu.pack_depthwise(w), bias, gamma, beta, 1e-6, 1 / scale, zp)
    assert got.dtype == torch.uint8 and got.shape == (b, h, h, c)
    diff = (got.int() - ref.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    assert torch.equal(got, amx_gelu.dwconv_ln_quant(x.contiguous(), amx_gelu.pack_depthwise(w), bias, gamma, beta,
                                                     1e-6, 1 / scale, zp))  # any memory layout of x


def _program(name="convnext_atto", size=32):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    _spread_scales(model, torch.Generator().manual_seed(0))
    calibration = [torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    return model, quantize_int8(model, calibration, size)


def test_calibration_records_one_pre_gelu_range_per_block():
    model, program = _program()
    assert len(program.gelu_ranges) == sum(model.config.depths)
    assert all(lo < 0 < hi for lo, hi in program.gelu_ranges)


@needs_kernel
def test_fused_program_agrees_with_onednns_and_survives_save_and_load(tmp_path):
    model, program = _program()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    plain = Int8Model(program, mixed_bf16=False, compile=False, fused_gelu=False)
    fused = Int8Model(program, mixed_bf16=False, compile=False)
    assert plain.fused_gelu == 0 and fused.fused_gelu == sum(model.config.depths)
    assert plain.fused_norms == 0 and fused.fused_norms == sum(model.config.depths[1:])  # atto's 40 channels: no
    calls = [n for n in fused.module.graph.nodes if "qlinear_gelu_table" in str(n.target)]
    assert len(calls) == fused.fused_gelu and not any("gelu" in str(n.target) and "table" not in str(n.target)
                                                     for n in fused.module.graph.nodes)
    ref, got = plain(x), fused(x)
    # the pre-GELU value rounded onto a uint8 grid first: a small change, far below the logits' spread
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert "pwconv1 + GELU in our AMX kernel" in fused.describe()

    save_int8(program, tmp_path / "q.pt2")
    loaded, meta = load_int8(tmp_path / "q.pt2", mixed_bf16=False, compile=False)
    assert json.loads(meta["gelu_ranges"]) == [list(r) for r in program.gelu_ranges]
    assert loaded.fused_gelu == fused.fused_gelu and torch.equal(loaded(x), got)


def test_ranges_of_another_program_fuse_nothing():
    _, program = _program()
    gm = program.module()
    assert amx_gelu.fuse_gelu_tables(gm, program.gelu_ranges[:-1]) == 0  # one range short: not this program
    assert amx_gelu.fuse_gelu_tables(gm, []) == 0
    program.gelu_ranges = None  # an older file: oneDNN's post-op
    assert Int8Model(program, mixed_bf16=False, compile=False).fused_gelu == 0


@needs_kernel
@pytest.mark.parametrize("mixed", [False, True])
def test_pwconv2_is_fused_at_the_first_call_in_the_float_dtype_then_known(mixed):
    """convnext_pico (channels 64..512: every pwconv2's N a multiple of 32): pwconv1 + GELU and pwconv2
    of every block in our kernel, the head (10 classes) left to oneDNN."""
    model, program = _program("convnext_pico")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    plain = Int8Model(program, mixed_bf16=mixed, compile=False, fused_gelu=False)
    fused = Int8Model(program, mixed_bf16=mixed, compile=False)
    assert fused.fused_dequant == 0  # not before the first call: set_mixed_bf16 may still change the dtype
    ref, got = plain(x), fused(x)
    blocks = sum(model.config.depths)
    assert fused.fused_gelu == blocks and fused.fused_dequant == blocks and "pwconv2 too" in fused.describe()
    # and each block's depthwise conv + LayerNorm + quantize in one pass (channels a multiple of 16)
    assert fused.fused_norms == blocks and "depthwise conv + LayerNorm" in fused.describe()
    assert sum("dwconv_ln_quant" in str(n.target) for n in fused.module.graph.nodes) == blocks
    assert sum("layer_norm" in str(n.target) for n in fused.module.graph.nodes) == 1  # the head's only
    # the residual add of every block in pwconv2's store, and both pointwise convs of each block in one pass
    # (`convnext::qmlp`); in int8-mixed-bf16 the first stage's stream in bf16
    assert sum("convnext.qmlp" in str(n.target) for n in fused.module.graph.nodes) == blocks
    assert not any("qlinear" in str(n.target) for n in fused.module.graph.nodes)
    assert fused.fused_residuals == blocks and fused.fused_mlps == blocks and "in one pass" in fused.describe()
    assert fused.bf16_stream == mixed
    assert ("stage 1's residual stream in bf16" in fused.describe()) == mixed
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert (got.argmax(1) == ref.argmax(1)).all()
    with mock.patch.dict("os.environ", {"CONVNEXT_NO_FUSED_MLP": "1"}):  # the two GEMMs: equal outputs
        two = Int8Model(program, mixed_bf16=mixed, compile=False)
        assert torch.equal(two(x), got)
    assert two.fused_mlps == 0 and sum("qlinear_dequant_residual" in str(n.target)
                                       for n in two.module.graph.nodes) == blocks


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_depthwise_norm_float_kernel_matches_conv_then_layernorm(dtype):
    """`dwconv_ln` (the float path's kernel) against F.conv2d + F.layer_norm in fp32 on the same values: equal
    to fp32 rounding, or to one rounding of the output in bf16."""
    g = torch.Generator().manual_seed(5)
    c = 48
    x = torch.randn(2, c, 13, 13, generator=g).to(dtype).to(memory_format=torch.channels_last)
    w, bias = (torch.randn(c, 1, 7, 7, generator=g) * 0.1).to(dtype), torch.randn(c, generator=g).to(dtype)
    gamma, beta = torch.randn(c, generator=g).to(dtype), torch.randn(c, generator=g).to(dtype)
    ref = F.layer_norm(F.conv2d(x.float(), w.float(), bias.float(), padding=3, groups=c).permute(0, 2, 3, 1), [c],
                       gamma.float(), beta.float(), 1e-6)
    got = amx_gelu.dwconv_ln(x, amx_gelu.pack_depthwise(w), bias, gamma, beta, 1e-6)  # parameters in any float dtype
    assert got.dtype == dtype and got.shape == (2, 13, 13, c)
    tol = 2 ** -8 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(got.float(), ref, rtol=tol, atol=tol)


def _calls_to(name: str, run):
    """(what run() returns, how many times it called the op `torch.ops.convnext.<name>`)."""
    calls = []
    op = getattr(torch.ops.convnext, name)
    with mock.patch.object(torch.ops.convnext, name, side_effect=lambda *a: calls.append(1) or op(*a)):
        out = run()
    return out, len(calls)


def _fast_eager(variant: str, dtype: str, batch: int):
    """(model with spread layer scales, a 64 px batch, its fp32 logits, `fast_cpu_model` of it in `dtype` on the
    eager path, the prepared model's blocks)."""
    from convnext.deploy.cpu import fast_cpu_model
    from convnext.models.layers import Block

    torch.manual_seed(0)
    model = create_model(variant, num_classes=10).eval()
    _spread_scales(model, torch.Generator().manual_seed(0))
    x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    fast = fast_cpu_model(model, dtype, batch, 64, candidates=("eager",))
    return model, x, ref, fast, [m for m in fast.module.modules() if isinstance(m, Block)]


@needs_kernel
def test_fast_cpu_model_runs_dwconv_and_layernorm_in_one_pass_at_inference_only():
    from convnext.models.layers import Block

    model, x, ref, fast, blocks = _fast_eager("convnext_pico", "fp32", 2)  # channels 64..512
    assert all(b.fused_dw_norm for b in blocks) and not any(b.fused_dw_norm for b in model.modules()
                                                            if isinstance(b, Block))  # a copy was switched
    assert not any("_dw_norm" in k for k in fast.module.state_dict())  # the packed parameters are not saved
    assert f"depthwise conv + LayerNorm of {len(blocks)} blocks in one pass of ours" in fast.describe()
    with torch.no_grad():
        got, calls = _calls_to("dwconv_ln", lambda: fast(x))
    assert calls == len(blocks)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)  # fp32: equal up to summation order
    # training, or recording gradients: the textbook ops (our kernel has no backward)
    fused = fast.module
    xg = x.clone().to(memory_format=torch.channels_last).requires_grad_()
    _, calls = _calls_to("dwconv_ln", lambda: fused(xg).sum().backward())
    assert not calls and xg.grad is not None
    # torch.export (the int8 path's capture) sees the standard ops
    program = torch.export.export(fused, (x.to(memory_format=torch.channels_last),))
    assert not any("dwconv_ln" in str(n.target) for n in program.graph.nodes)


@needs_kernel
def test_fast_cpu_model_leaves_blocks_the_depthwise_kernel_does_not_take():
    """A 3 x 3 depthwise conv (a roadmap-style variant): no block switched, nothing packed, the model runs."""
    from convnext.deploy.cpu import fast_cpu_model
    from convnext.models.layers import Block

    model = create_model("convnext_pico", num_classes=10, kernel_size=3).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    fast = fast_cpu_model(model, "fp32", 2, 64, candidates=("eager",))
    blocks = [m for m in fast.module.modules() if isinstance(m, Block)]
    assert blocks and not any(b.fused_dw_norm or hasattr(b, "_dw_norm_w") for b in blocks)
    assert "one pass of ours" not in fast.describe()
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("m,k,n", [(64, 96, 384), (49, 768, 64), (77, 40, 160), (3, 80, 32)])
def test_bf16_gemms_match_fp32_arithmetic_rounded_once(m, k, n):
    """`linear_gelu_bf16` / `linear_residual_bf16` against the same bf16 values multiplied in float64: equal
    after one rounding to bf16 but for ties (fp32 accumulation order), and within one rounding everywhere. Row
    counts that are not multiples of 32 (the padded last block), K steps of 64 / 40 bytes."""
    g = torch.Generator().manual_seed(m + k + n)
    a = torch.randn(m, k, generator=g).bfloat16()
    w = (torch.randn(n, k, generator=g) * k ** -0.5).bfloat16()
    bias, res = torch.randn(n, generator=g), torch.randn(m, n, generator=g).bfloat16()
    ks = amx_gelu._step(2 * k)
    packed = amx_gelu.pack_weight(w, ks)
    pre = a.double() @ w.double().t() + bias.double()
    for got, exact in ((amx_gelu.linear_gelu_bf16(a, packed, bias, ks), F.gelu(pre)),
                       (amx_gelu.linear_residual_bf16(a, packed, bias, res, ks), pre + res.double())):
        assert got.dtype == torch.bfloat16 and got.shape == (m, n)
        assert (got != exact.float().bfloat16()).float().mean() < 0.01  # ties (and GELU < -4.5: 0)
        assert torch.allclose(got.double(), exact, rtol=2 ** -8, atol=2e-5)  # within one bf16 rounding
    batched = amx_gelu.linear_gelu_bf16(a.view(1, m, k), packed, bias, ks)
    assert torch.equal(batched, amx_gelu.linear_gelu_bf16(a, packed, bias, ks).view(1, m, n))


@needs_kernel
@pytest.mark.parametrize("m,c,ks1,threads", [(3136, 96, 64, 2), (1000, 64, 64, 2), (200, 64, 32, 1), (77, 96, 64, 2),
                                              (49, 128, 64, 2), (300, 32, 64, 3)])
def test_mlp_bf16_equals_the_two_gemms(m, c, ks1, threads):
    """`mlp_bf16` (one pass per row group, the hidden in the thread's cache; partial last blocks and groups; pwconv1
    with a K step of 32 bytes) against `linear_gelu_bf16` then `linear_residual_bf16`: the same roundings, so equal
    outputs, for any thread count. With fewer than two 32-row blocks per thread it runs those two GEMMs itself."""
    g = torch.Generator().manual_seed(m + c)
    x = torch.randn(2, m, c, generator=g).bfloat16()
    w1 = (torch.randn(4 * c, c, generator=g) * c ** -0.5).bfloat16()
    w2 = (torch.randn(c, 4 * c, generator=g) * (4 * c) ** -0.5).bfloat16()
    b1, b2 = torch.randn(4 * c, generator=g), torch.randn(c, generator=g)
    res = torch.randn(2, m, c, generator=g).bfloat16()
    p1, p2 = amx_gelu.pack_weight(w1, ks1), amx_gelu.pack_weight(w2, 64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = amx_gelu.mlp_bf16(x, p1, b1, p2, b2, res, ks1)
        two = amx_gelu.linear_residual_bf16(amx_gelu.linear_gelu_bf16(x, p1, b1, ks1), p2, b2, res, 64)
    finally:
        torch.set_num_threads(before)
    assert got.shape == res.shape and got.dtype == torch.bfloat16
    assert torch.equal(got, two)
    exact = F.gelu(x.double() @ w1.double().t() + b1.double()).bfloat16().double() @ w2.double().t() + b2 + res
    assert torch.allclose(got.double(), exact, rtol=2 ** -7, atol=1e-2)


@needs_kernel
def test_fast_cpu_model_keeps_grn_between_the_two_gemms():
    """ConvNeXt V2 (GRN between GELU and pwconv2, a statistic over the whole image): no block runs the one-pass MLP;
    pwconv1 and pwconv2 stay two GEMMs of ours with GRN between them, logits as close to fp32 as bf16 allows."""
    model, x, ref, fast, blocks = _fast_eager("convnextv2_pico", "bf16", 2)
    assert blocks and all(b.fused_linears and b._pw2_ks and not b.fused_mlp for b in blocks)
    assert "both in one pass" not in fast.describe()
    got = fast(x)
    assert (got - ref).abs().max() < 0.05 * ref.abs().max() and torch.equal(got.argmax(1), ref.argmax(1))


@needs_kernel
@pytest.mark.parametrize("res_dtype", [torch.bfloat16, torch.float32])
def test_one_pass_mlp_ops_fake_shapes_match_the_kernels(res_dtype):
    """`torch.library.opcheck` on `convnext::mlp_bf16` and `convnext::qmlp`: the schema, and the fake
    implementation torch.compile traces with (shape, dtype, strides) against the kernel's output."""
    c, m = 64, 300
    g = torch.Generator().manual_seed(0)
    res = torch.randn(2, m, c, generator=g)
    p1 = amx_gelu.pack_weight(torch.randn(4 * c, c, generator=g).bfloat16(), 64)
    p2 = amx_gelu.pack_weight(torch.randn(c, 4 * c, generator=g).bfloat16(), 64)
    checks = ("test_schema", "test_faketensor")
    if res_dtype == torch.bfloat16:
        torch.library.opcheck(torch.ops.convnext.mlp_bf16.default,
                              (torch.randn(2, m, c, generator=g).bfloat16(), p1, torch.randn(4 * c), p2, torch.randn(c),
                               res.bfloat16(), 64), test_utils=checks)
    q1 = amx_gelu.pack_weight(torch.randint(-127, 128, (4 * c, c), dtype=torch.int8, generator=g), 64)
    q2 = amx_gelu.pack_weight(torch.randint(-127, 128, (c, 4 * c), dtype=torch.int8, generator=g), 64)
    table = torch.randint(0, 256, (256,), dtype=torch.uint8, generator=g)
    xq = torch.randint(0, 256, (2, m, c), dtype=torch.uint8, generator=g)
    for bf16 in (False, True):
        torch.library.opcheck(torch.ops.convnext.qmlp.default,
                              (xq, q1, torch.rand(4 * c), torch.randn(4 * c), table, 64, q2, torch.rand(c),
                               torch.randn(c), res.to(res_dtype), 64, bf16), test_utils=checks)


@needs_kernel
def test_bf16_gemm_gelu_over_every_bf16_value():
    """The GELU in the bf16 GEMM's store (`phi_cubics`) on every normal bf16 input of |x| < 20 (identity weight):
    the bf16 rounding of exact GELU on [-4.5, 4.5) but for a few ties, 0 below (|GELU| < 1.6e-5 there), x above;
    NaN stays NaN."""
    import math

    v = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    v = v[torch.isfinite(v.float()) & (v.float().abs() < 20) & (v.float().abs() > 1e-37)]
    v = torch.cat([v, torch.zeros(-v.numel() % 32, dtype=torch.bfloat16),
                   torch.full((32,), float("nan"), dtype=torch.bfloat16)])  # NaN rows: NaN * 0 spreads along a row
    x = v.view(-1, 32)
    ks = amx_gelu._step(64)
    got = amx_gelu.linear_gelu_bf16(x, amx_gelu.pack_weight(torch.eye(32).bfloat16(), ks), torch.zeros(32), ks)
    xd, y = x.double(), got.double()
    exact = xd * 0.5 * (1 + torch.special.erf(xd / math.sqrt(2)))
    inside = (xd >= -4.5) & (xd < 4.5)
    assert (y[inside] != exact[inside].float().bfloat16().double()).sum() <= 10  # ties, one bf16 step apart
    assert torch.allclose(y[inside], exact[inside], rtol=2 ** -8, atol=1e-30)
    assert (y[xd < -4.5] == 0).all() and torch.equal(y[xd >= 4.5], xd[xd >= 4.5])
    assert torch.isnan(y[torch.isnan(xd)]).all()


@needs_kernel
@pytest.mark.parametrize("variant,second", [("convnext_pico", True), ("convnext_nano", False)])
def test_fast_cpu_model_bf16_runs_the_pointwise_convs_in_our_gemms(variant, second):
    """pico (64..512 channels): pwconv1 + GELU and pwconv2 + residual of every block in our bf16 GEMMs; nano
    (80 channels first): pwconv2's 80 outputs are not a multiple of 32, so there only pwconv1 is ours. Logits
    as close to fp32 as bf16 allows; recording gradients and export see the standard ops."""
    from convnext.deploy.cpu import fast_cpu_model
    from convnext.models.layers import Block

    model, x, ref, fast, blocks = _fast_eager(variant, "bf16", 4)
    taken = [b for b in blocks if b._pw2_ks]
    assert all(b.fused_linears for b in blocks) and (len(taken) == len(blocks) if second else 0 < len(taken))
    assert not any("_pw" in k for k in fast.module.state_dict())  # the packed weights are not saved
    assert f"pointwise convs of {len(blocks)} blocks in bf16 AMX GEMMs of ours" in fast.describe()
    assert [b.fused_mlp for b in blocks] == [bool(b._pw2_ks) for b in blocks]
    assert f"of {len(taken)}, both in one pass" in fast.describe()
    names = ("linear_gelu_bf16", "linear_residual_bf16", "mlp_bf16")
    ops = {name: getattr(torch.ops.convnext, name) for name in names}
    calls = {name: 0 for name in ops}

    def counting(name):
        def run(*a):
            calls[name] += 1
            return ops[name](*a)
        return run

    def counted(module):
        calls.update({name: 0 for name in ops})
        with mock.patch.object(torch.ops.convnext, "linear_gelu_bf16", side_effect=counting("linear_gelu_bf16")), \
                mock.patch.object(torch.ops.convnext, "linear_residual_bf16",
                                  side_effect=counting("linear_residual_bf16")), \
                mock.patch.object(torch.ops.convnext, "mlp_bf16", side_effect=counting("mlp_bf16")):
            return module(x)

    got = counted(fast)
    assert calls == {"linear_gelu_bf16": len(blocks) - len(taken), "linear_residual_bf16": 0, "mlp_bf16": len(taken)}
    scale = ref.abs().max()
    assert (got - ref).abs().max() < 0.05 * scale and torch.equal(got.argmax(1), ref.argmax(1))
    with mock.patch.dict("os.environ", {"CONVNEXT_NO_FUSED_MLP": "1"}):  # the two GEMMs: the same roundings
        two = fast_cpu_model(model, "bf16", 4, 64, candidates=("eager",))
    assert not any(b.fused_mlp for b in two.module.modules() if isinstance(b, Block))
    assert torch.equal(counted(two), got)
    assert calls == {"linear_gelu_bf16": len(blocks), "linear_residual_bf16": len(taken), "mlp_bf16": 0}
    with mock.patch.dict("os.environ", {"CONVNEXT_NO_FUSED_LINEARS": "1"}):
        plain = fast_cpu_model(model, "bf16", 4, 64, candidates=("eager",))
    assert not any(b.fused_linears for b in plain.module.modules() if isinstance(b, Block))
    assert (got - plain(x)).abs().max() < 0.05 * scale
    # recording gradients: the textbook ops (our kernels have no backward)
    xg = x.to(torch.bfloat16).to(memory_format=torch.channels_last).requires_grad_()
    calls.update({name: 0 for name in ops})
    with mock.patch.object(torch.ops.convnext, "linear_gelu_bf16", side_effect=counting("linear_gelu_bf16")):
        fast.module(xg).float().sum().backward()
    assert calls["linear_gelu_bf16"] == 0 and xg.grad is not None


def _fp32_block_mlp(m: int, c: int, hidden: int, seed: int):
    """(x, residual, (W1, b1), (W2, b2)) of one block's MLP on m rows of c channels; fp32."""
    g = torch.Generator().manual_seed(seed)
    x, res = torch.randn(m, c, generator=g), torch.randn(m, c, generator=g)
    w1, b1 = torch.randn(hidden, c, generator=g) * c ** -0.5, torch.randn(hidden, generator=g)
    w2, b2 = torch.randn(c, hidden, generator=g) * hidden ** -0.5, torch.randn(c, generator=g)
    return x, res, (w1, b1), (w2, b2)


@needs_kernel
@pytest.mark.parametrize("m,c,hidden,threads", [(3136, 96, 384, 2), (784, 768, 3072, 2), (49, 768, 3072, 2),
                                                 (300, 40, 160, 3), (77, 48, 192, 1), (5, 80, 100, 2), (1, 64, 256, 2)])
def test_mlp_fp32_is_fp32_arithmetic(m, c, hidden, threads):
    """`mlp_fp32` against the same block in float64: no further from it than torch's own fp32 ops are, but for
    the order of the sums (a small multiple of their error). Rows split into equal tiles per thread, too few rows
    to share out (the weights' panels split instead), channel counts that are not multiples of 32 (the last
    panel masked), a hidden width that is not one either; 1-3 threads."""
    x, res, (w1, b1), (w2, b2) = _fp32_block_mlp(m, c, hidden, m + c)
    p1, q1 = amx_gelu.pack_fp32(w1, b1)
    p2, q2 = amx_gelu.pack_fp32(w2, b2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = amx_gelu.mlp_fp32(x.view(1, m, c), p1, q1, p2, q2, res.view(1, m, c))
        torch_fp32 = res + F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    finally:
        torch.set_num_threads(before)
    assert got.shape == (1, m, c) and got.dtype == torch.float32
    exact = res.double() + F.linear(F.gelu(F.linear(x.double(), w1.double(), b1.double())), w2.double(),
                                    b2.double())
    err, yardstick = (got[0].double() - exact).abs().max(), (torch_fp32.double() - exact).abs().max()
    assert err <= 4 * yardstick + 2e-6, (err, yardstick)


@needs_kernel
def test_mlp_fp32_gelu_is_erf_gelu_to_fp32_precision():
    """Identity weights, no bias, zero residual: the kernel's output is its GELU (`phi_quintics`) of each input,
    over [-12, 12] and a few extremes: within 2e-7 max(1, |x|) of float64 erf GELU, 0 far below, x far above."""
    xs = torch.cat([torch.linspace(-12, 12, 32 * 4001), torch.tensor([-1e4, -50.0, 50.0, 1e4] * 8)]).view(-1, 32)
    eye, zeros = torch.eye(32), torch.zeros(32)
    p1, q1 = amx_gelu.pack_fp32(eye, zeros)
    p2, q2 = amx_gelu.pack_fp32(eye, zeros)
    y = amx_gelu.mlp_fp32(xs, p1, q1, p2, q2, torch.zeros_like(xs)).double()
    xd = xs.double()
    assert ((y - F.gelu(xd)).abs() <= 2e-7 * xd.abs().clamp(min=1)).all()
    assert (y[xd < -6] == 0).all() and torch.equal(y[xd > 6], xd[xd > 6])


@needs_kernel
def test_mlp_fp32_op_fake_shape_matches_the_kernel():
    """`torch.library.opcheck` on `convnext::mlp_fp32`: the schema and the fake implementation torch.compile traces
    with, against the kernel's output."""
    x, res, (w1, b1), (w2, b2) = _fp32_block_mlp(300, 64, 256, 0)
    p1, q1 = amx_gelu.pack_fp32(w1, b1)
    p2, q2 = amx_gelu.pack_fp32(w2, b2)
    torch.library.opcheck(torch.ops.convnext.mlp_fp32.default, (x.view(2, 150, 64), p1, q1, p2, q2,
                                                                 res.view(2, 150, 64)),
                          test_utils=("test_schema", "test_faketensor"))


@needs_kernel
def test_fast_cpu_model_fp32_runs_each_block_mlp_in_one_pass_at_inference_only():
    """fp32: every block's pwconv1 + GELU + pwconv2 + residual is one `convnext::mlp_fp32` call, logits equal to the
    model's up to fp32 rounding; the packed weights are not saved; recording gradients, export and GRN (V2) keep the
    standard ops; CONVNEXT_NO_FUSED_MLP turns it off."""
    from convnext.deploy.cpu import fast_cpu_model
    from convnext.models.layers import Block

    model, x, ref, fast, blocks = _fast_eager("convnext_pico", "fp32", 2)
    assert all(b.fused_mlp_fp32 for b in blocks)
    assert not any(b.fused_mlp_fp32 for b in model.modules() if isinstance(b, Block))  # a copy was switched
    assert not any("_pw" in k for k in fast.module.state_dict())
    assert f"pointwise convs of {len(blocks)} blocks in one fp32 pass of ours" in fast.describe()
    with torch.no_grad():
        got, calls = _calls_to("mlp_fp32", lambda: fast(x))
    assert calls == len(blocks)
    assert torch.allclose(got, ref, atol=1e-5 * ref.abs().max(), rtol=1e-5)
    xg = x.clone().to(memory_format=torch.channels_last).requires_grad_()
    _, calls = _calls_to("mlp_fp32", lambda: fast.module(xg).sum().backward())
    assert not calls and xg.grad is not None
    program = torch.export.export(fast.module, (x.to(memory_format=torch.channels_last),))
    assert not any("mlp_fp32" in str(n.target) for n in program.graph.nodes)
    with mock.patch.dict("os.environ", {"CONVNEXT_NO_FUSED_MLP": "1"}):
        plain = fast_cpu_model(model, "fp32", 2, 64, candidates=("eager",))
    assert not any(b.fused_mlp_fp32 for b in plain.module.modules() if isinstance(b, Block))
    assert "fp32 pass of ours" not in plain.describe()
    _, _, ref2, v2, v2_blocks = _fast_eager("convnextv2_pico", "fp32", 2)
    assert v2_blocks and not any(b.fused_mlp_fp32 for b in v2_blocks)
    assert torch.allclose(v2(x), ref2, atol=1e-4)
