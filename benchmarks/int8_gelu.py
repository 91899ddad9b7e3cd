"""The int8 GELU epilogue and the routes around it (docs/benchmarks.md, "The gap is GELU").

    python benchmarks/int8_gelu.py micro                   # ms of stage 1's int8 pwconv1 with each epilogue,
                                                           # and of a uint8 -> uint8 table pass (AVX512-VBMI)
    python benchmarks/int8_gelu.py table --model M.pt      # top-1 with the pre-GELU value also quantized
                                                           # (the table route), simulated in fp32
    python benchmarks/int8_gelu.py poly [--max-autotune]   # int8 with a polynomial GELU in torch ops vs
                                                           # int8 erf-GELU and our bf16 (ConvNeXt-T, batch 16)
    python benchmarks/int8_gelu.py stages                  # per stage: pwconv1 (+ GELU) and pwconv2, oneDNN vs
                                                           # our AMX int8 kernels (convnext.deploy.amx_gelu)
    python benchmarks/int8_gelu.py accuracy --model M.pt   # CIFAR-10 atto top-1: int8 with oneDNN / our kernels
    python benchmarks/int8_gelu.py fused                   # our AMX int8 kernel at stage 1's shape with GELU in
                                                           # its store (convnext.deploy.amx_gelu's uint8 table, or
                                                           # erf in registers), vs oneDNN with and without GELU

`table --model` takes the CIFAR-10 atto that `benchmarks/cpu_deploy_numerics.py` trains and caches
(`atto_cifar10_e10_n50000.pt` in its --out folder) and the CIFAR-10 test JPEGs of ../shared/data.
"""
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

STAGE1 = (50176, 96, 384)  # ConvNeXt-T stage 1 pwconv1 at batch 16: rows, C, 4C


def _ms(fn, n: int = 10) -> float:
    fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


_TABLE_SRC = r"""
#include <torch/extension.h>
#include <immintrin.h>
torch::Tensor lut_u8(torch::Tensor x, torch::Tensor table) {
  TORCH_CHECK(x.dtype() == torch::kUInt8 && x.is_contiguous() && table.numel() == 256);
  auto out = torch::empty_like(x);
  const uint8_t* t = table.data_ptr<uint8_t>();
  __m512i t0 = _mm512_loadu_si512(t), t1 = _mm512_loadu_si512(t + 64);
  __m512i t2 = _mm512_loadu_si512(t + 128), t3 = _mm512_loadu_si512(t + 192);
  const uint8_t* in = x.data_ptr<uint8_t>(); uint8_t* o = out.data_ptr<uint8_t>();
  int64_t n = x.numel(), blocks = n / 64;
  #pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i idx = _mm512_loadu_si512(in + b * 64);
    __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1);  // entries 0..127
    __m512i hi = _mm512_permutex2var_epi8(t2, idx, t3);  // entries 128..255
    _mm512_storeu_si512(o + b * 64, _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi));
  }
  for (int64_t i = blocks * 64; i < n; ++i) o[i] = t[in[i]];
  return out;
}
"""


def micro() -> None:
    from torch.utils.cpp_extension import load_inline

    from convnext.deploy.int8 import _pt2e
    from convnext.memory import keep_freed_memory

    _pt2e()
    keep_freed_memory()
    torch.manual_seed(0)
    m, c, h = STAGE1
    q = torch.ops.onednn
    x = torch.randint(0, 255, (m, c), dtype=torch.uint8)
    w = q.qlinear_prepack(torch.randint(-127, 127, (h, c), dtype=torch.int8), [m, c])
    scale, zp, bias = torch.rand(h) * 0.01, torch.zeros(h, dtype=torch.long), torch.randn(h)

    def lin(post, algo):
        return lambda: q.qlinear_pointwise(x, 0.05, 128, w, scale, zp, bias, 0.02, 0, torch.uint8, post, [], algo)

    print(f"int8 pwconv1 at stage 1 ({m}x{c} by {c}x{h}, uint8 out), ms:")
    for name, fn in (("no epilogue", lin("none", "")), ("ReLU", lin("relu", "")),
                     ("GELU (erf)", lin("gelu", "none")), ("GELU (tanh)", lin("gelu", "tanh")),
                     # the post-ops a GELU approximation could use: x sigmoid(1.702 x) = swish(1.702 x) / 1.702
                     # (max error 0.020), hardswish(1.67 x) / 1.67 (max error 0.065); scales fold into the weights
                     ("swish", lin("swish", "")), ("hardswish", lin("hardswish", ""))):
        print(f"  {name:12s} {_ms(fn):6.2f}")
    ext = load_inline("convnext_lut_u8", cpp_sources=_TABLE_SRC, functions=["lut_u8"],
                      extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])
    h8 = torch.randint(0, 256, (m, h), dtype=torch.uint8)
    table = torch.randint(0, 256, (256,), dtype=torch.uint8)
    assert torch.equal(ext.lut_u8(h8, table), table[h8.long()])
    print(f"uint8 -> uint8 table pass over the {m}x{h} activation: {_ms(lambda: ext.lut_u8(h8, table)):.2f} ms "
          f"(a plain copy: {_ms(h8.clone):.2f} ms)")


def _fake_quant(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    scale = max(hi - lo, 1e-8) / 255
    zp = round(-lo / scale)
    return (torch.clamp(torch.round(v / scale) + zp, 0, 255) - zp) * scale


def table(model_path: str, data: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from cpu_deploy_numerics import logits, read_split

    import convnext.models.layers as layers
    from convnext.models import create_model

    model = create_model("convnext_atto", num_classes=10)
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    xt, yt, _ = read_split(Path(data) / "cifar10-test-jpeg.tar.gz", 2256)  # as cpu_deploy_numerics: 256 + 2000
    x_cal, x_test, y_test = xt[:256], xt[256:], yt[256:]
    ranges: dict[int, list[float]] = {}
    mode = "calibrate"

    def linear_gelu(x, linear):  # pwconv1 + GELU with the int8 program's activation rounding simulated
        y = F.linear(x, linear.weight, linear.bias)
        r = ranges.setdefault(id(linear), [math.inf, -math.inf, math.inf, -math.inf])
        if mode == "calibrate":  # min / max of the pre- and post-GELU values
            g = F.gelu(y)
            r[:] = [min(r[0], y.min().item()), max(r[1], y.max().item()),
                    min(r[2], g.min().item()), max(r[3], g.max().item())]
            return g
        if mode == "fp32":
            return F.gelu(y)
        if mode == "table":  # the pre-GELU value in uint8 too: GELU becomes a uint8 -> uint8 table
            y = _fake_quant(y, r[0], r[1])
        return _fake_quant(F.gelu(y), r[2], r[3])

    layers.linear_gelu = linear_gelu
    with torch.no_grad():
        for i in range(0, len(x_cal), 32):
            model(x_cal[i : i + 32])
    out = {}
    for mode in ("fp32", "uint8 after GELU (int8 as built)", "table"):
        out[mode] = logits(model, x_test)
        top1 = 100 * (out[mode].argmax(1) == y_test).float().mean().item()
        agree = 100 * (out[mode].argmax(1) == out["fp32"].argmax(1)).float().mean().item()
        print(f"{mode}: top-1 {top1:.2f}%, agreement with fp32 {agree:.2f}%")


def _gelu_poly(degree: int = 15):
    """GELU through an odd least-squares polynomial for Phi(x) - 1/2 on [-4, 4]; x above 4, 0 below -4."""
    xs = torch.linspace(-4, 4, 20001, dtype=torch.float64)
    phi = 0.5 * (1 + torch.erf(xs / math.sqrt(2)))
    basis = torch.stack([xs**p for p in range(1, degree + 1, 2)], 1)
    coef = torch.linalg.lstsq(basis, (phi - 0.5)[:, None]).solution[:, 0].tolist()

    def gelu(y):
        z = y.clamp(-4.0, 4.0)
        z2, p = z * z, coef[-1]
        for c in reversed(coef[:-1]):
            p = p * z2 + c
        return torch.where(y > 4.0, y, torch.where(y < -4.0, torch.zeros_like(y), y * (0.5 + z * p)))

    t = torch.linspace(-8, 8, 100001)
    return gelu, (gelu(t) - F.gelu(t)).abs().max().item()


def poly(max_autotune: bool) -> None:
    import convnext.models.layers as layers
    from convnext.deploy.cpu import _measure, fast_cpu_model, freezing, quiet_library_notes
    from convnext.deploy.int8 import _drop_dtype_asserts, quantize_int8
    from convnext.models import create_model

    gelu, err = _gelu_poly()
    print(f"polynomial GELU: max |error| {err:.2e} on [-8, 8]")
    torch.manual_seed(0)
    model = create_model("convnext_tiny").eval()
    x = torch.randn(16, 3, 224, 224)

    def compiled(program, autotune):
        module = program.module()
        _drop_dtype_asserts(module)
        fn = torch.compile(module, dynamic=False)

        def run(inp):
            with torch.no_grad(), freezing(max_autotune=autotune), torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(inp)

        run(x)
        return run

    runs = {"bf16 (ours)": fast_cpu_model(model, "bf16", 16, 224, candidates=("compile",))}
    with quiet_library_notes():
        runs["int8 erf-GELU"] = compiled(quantize_int8(model, [x[:4]], 224), False)
        erf = layers.linear_gelu
        layers.linear_gelu = lambda x_, linear: gelu(linear(x_))
        try:
            program = quantize_int8(model, [x[:4]], 224)
        finally:
            layers.linear_gelu = erf
        runs["int8 polynomial GELU"] = compiled(program, False)
        if max_autotune:
            torch._dynamo.reset()
            runs["int8 polynomial GELU, max-autotune"] = compiled(program, True)
    med = _measure(runs, x, repeats=6)
    for name, s in med.items():
        print(f"{name}: {16 / s:.1f} img/s, {med['bf16 (ours)'] / s:.2f}x our bf16")


# erf computed in registers, on the library's AMX GEMM driver (`convnext.deploy.amx_gelu.GEMM_SRC`)
_ERF_SRC = r"""
static inline __m512 erf_ps(__m512 a) {  // rational approximation on [-4, 4], max error 6.5e-8
  const __m512 x = _mm512_max_ps(_mm512_min_ps(a, _mm512_set1_ps(4.f)), _mm512_set1_ps(-4.f));
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(-2.72614225801306e-10f), _mm512_set1_ps(2.77068142495902e-08f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-2.10102402082508e-06f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-5.69250639462346e-05f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-7.34990630326855e-04f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-2.95459980854025e-03f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-1.60960333262415e-02f));
  __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(-1.45660718464996e-05f), _mm512_set1_ps(-2.13374055278905e-04f));
  q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(-1.68282697438203e-03f));
  q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(-7.37332916720468e-03f));
  q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(-1.42647390514189e-02f));
  return _mm512_div_ps(_mm512_mul_ps(x, p), q);
}

// out = clamp(round(gelu(scale[n] * acc + shift[n]) * inv + z), 0, 255): exact GELU, then the output's uint8
torch::Tensor qgemm_erf(torch::Tensor a, torch::Tensor bp, torch::Tensor scale, torch::Tensor shift, double inv,
                        int64_t z, int64_t ks) {
  request_amx();
  const int64_t M = a.size(0), N = bp.size(0) * 16;
  auto out = torch::empty({M, N}, torch::kUInt8);
  const float* S = scale.data_ptr<float>(); const float* H = shift.data_ptr<float>();
  uint8_t* O = out.data_ptr<uint8_t>();
  const float finv = (float)inv, fz = (float)z;
  gemm(a, bp, ks, [=](int32_t (*c)[16][16], int64_t mb, int64_t nb, int64_t rows, int64_t r0, int64_t r1) {
    uint8_t* const o = O; const int64_t n = N;
    const __m512 vinv = _mm512_set1_ps(finv), vz = _mm512_set1_ps(fz), half = _mm512_set1_ps(0.5f);
    for (int q = 0; q < 2; ++q) {  // column halves: tiles q (rows 0-15), 2 + q (rows 16-31)
      const int64_t n0 = nb * 32 + q * 16;
      const __m512 vs = _mm512_loadu_ps(S + n0), vh = _mm512_loadu_ps(H + n0);
      for (int64_t r = r0; r < std::min(r1, rows); ++r) {
        __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[2 * (r >> 4) + q][r & 15])), vs, vh);
        v = _mm512_mul_ps(_mm512_mul_ps(half, v),
                          _mm512_add_ps(_mm512_set1_ps(1.f), erf_ps(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678f)))));
        const __m512i i = _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_fmadd_ps(v, vinv, vz)), _mm512_setzero_si512());
        _mm_storeu_si128((__m128i*)(o + (mb * 32 + r) * n + n0), _mm512_cvtusepi32_epi8(i));
      }
    }
  });
  return out;
}
"""


def fused() -> None:
    """Stage 1's int8 pwconv1 through our AMX kernel (`convnext.deploy.amx_gelu`, GELU as a uint8 table in its
    store), and through the same GEMM with erf computed in registers, against oneDNN's int8 matmul with and
    without its GELU post-op."""
    from torch.utils.cpp_extension import load_inline

    from convnext.deploy import amx_gelu
    from convnext.deploy.int8 import _pt2e
    from convnext.memory import keep_freed_memory

    _pt2e()
    keep_freed_memory()
    if not amx_gelu.available():
        sys.exit("fused: this CPU or compiler cannot run the AMX int8 kernels (AMX-INT8 and AVX512-VBMI needed)")
    erf = load_inline("convnext_amx_erf_bench", cpp_sources=amx_gelu.GEMM_SRC + _ERF_SRC, functions=["qgemm_erf"],
                      extra_cflags=["-O3", "-march=native", "-mamx-tile", "-mamx-int8", "-fopenmp"],
                      extra_ldflags=["-fopenmp"])
    torch.manual_seed(0)
    m, k, n = STAGE1
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    sa, za = 0.05, 128
    sw, bias = torch.rand(n) * 0.002 + 0.0005, torch.randn(n) * 0.5
    v = sa * sw.double() * (a.long() @ w.long().t() - za * w.long().sum(1)).double() + bias.double()  # exactly
    g = F.gelu(v)
    s_out, g_lo = (g.max().item() - g.min().item()) / 255, g.min().item()
    z_out = round(-g_lo / s_out)
    exact = torch.clamp(torch.round(g / s_out) + z_out, 0, 255).to(torch.uint8)  # what oneDNN's erf post-op writes
    table, inv, zp = amx_gelu.gelu_table((v.min().item(), v.max().item()), s_out, z_out)
    ks = amx_gelu._step(k)
    bp = amx_gelu.pack_weight(w, ks)
    grid_scale, grid_shift = amx_gelu.grid_affine(sa, za, w, sw, bias, inv, zp)
    scale, shift = amx_gelu.grid_affine(sa, za, w, sw, bias, 1.0, 0)
    q = torch.ops.onednn
    wp = q.qlinear_prepack(w, [m, k])
    zps = torch.zeros(n, dtype=torch.long)
    runs = {
        "oneDNN, no epilogue": lambda: q.qlinear_pointwise(a, sa, za, wp, sw, zps, bias, s_out, z_out, torch.uint8,
                                                           "none", [], ""),
        "oneDNN, erf-GELU post-op": lambda: q.qlinear_pointwise(a, sa, za, wp, sw, zps, bias, s_out, z_out,
                                                                torch.uint8, "gelu", [], "none"),
        "ours, GELU table in the store": lambda: amx_gelu.qlinear_gelu_table(a, bp, grid_scale, grid_shift, table, ks),
        "ours, erf-GELU in registers": lambda: erf.qgemm_erf(a, bp, scale, shift, 1 / s_out, z_out, ks),
    }
    print(f"int8 pwconv1 at stage 1 ({m}x{k} by {k}x{n}, uint8 out), ms; outputs vs exact GELU then uint8:")
    for name, fn in runs.items():
        if "no epilogue" in name:  # not GELU: its speed only
            print(f"  {name:31s} {_ms(fn):6.2f}")
            continue
        diff = (fn().int() - exact.int()).abs()
        print(f"  {name:31s} {_ms(fn):6.2f}   {100 * (diff > 0).float().mean().item():6.2f}% differ, "
              f"max {int(diff.max())} step(s)")


def stages() -> None:
    """Per stage of ConvNeXt-T at batch 16: pwconv1 (oneDNN without / with its erf-GELU post-op, ours with the
    GELU table) and pwconv2 (oneDNN, ours; bf16 out), ms, random data."""
    from convnext.deploy import amx_gelu
    from convnext.deploy.int8 import _pt2e
    from convnext.memory import keep_freed_memory

    _pt2e()
    keep_freed_memory()
    if not amx_gelu.available():
        sys.exit("stages: this CPU or compiler cannot run the AMX int8 kernels (AMX-INT8 and AVX512-VBMI needed)")
    q = torch.ops.onednn
    torch.manual_seed(0)
    print("shape (M x K by K x N)            oneDNN none  oneDNN GELU  ours table | oneDNN bf16  ours bf16")
    for m, c in ((50176, 96), (12544, 192), (3136, 384), (784, 768)):
        row = []
        for k, n in ((c, 4 * c), (4 * c, c)):  # pwconv1, pwconv2
            a = torch.randint(0, 256, (m, k), dtype=torch.uint8)
            w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
            sw, bias, zp = torch.rand(n) * 0.002, torch.randn(n), torch.zeros(n, dtype=torch.long)
            wp, ks = q.qlinear_prepack(w, [m, k]), amx_gelu._step(k)
            bp = amx_gelu.pack_weight(w, ks)
            scale, shift = amx_gelu.grid_affine(0.05, 128, w, sw, bias, 1.0, 0)
            if k == c:
                table = torch.arange(256, dtype=torch.uint8)
                row += [_ms(lambda: q.qlinear_pointwise(a, 0.05, 128, wp, sw, zp, bias, 0.02, 0, torch.uint8, post,
                                                        [], algo)) for post, algo in (("none", ""), ("gelu", "none"))]
                row.append(_ms(lambda: amx_gelu.qlinear_gelu_table(a, bp, scale, shift, table, ks)))
            else:
                row.append(_ms(lambda: q.qlinear_pointwise(a, 0.05, 128, wp, sw, zp, bias, 1.0, 0, torch.bfloat16,
                                                           "none", [], "")))
                row.append(_ms(lambda: amx_gelu.qlinear_dequant(a, bp, scale, shift, ks, True)))
        print(f"{m:6d} x {c:4d} by {c:4d} x {4 * c:4d} (and back)  {row[0]:9.2f}  {row[1]:11.2f}  {row[2]:10.2f} | "
              f"{row[3]:11.2f}  {row[4]:9.2f}")


def accuracy(model_path: str, data: str) -> None:
    """The CIFAR-10 atto: top-1 and agreement with fp32 of the int8 program with oneDNN and with our kernels,
    float ops in fp32 and in bf16, compiled; calibrated on 256 test images, measured on the rest."""
    sys.path.insert(0, str(Path(__file__).parent))
    from cpu_deploy_numerics import logits, read_split

    from convnext.deploy.int8 import Int8Model, quantize_int8
    from convnext.models import create_model

    xt, yt, _ = read_split(Path(data) / "cifar10-test-jpeg.tar.gz", 10000)
    x_cal, x_test, y_test = xt[:256], xt[256:], yt[256:]
    model = create_model("convnext_atto", num_classes=10)
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    ref = logits(model, x_test)
    print(f"fp32: top-1 {100 * (ref.argmax(1) == y_test).float().mean():.2f}% on {len(y_test)} images")
    program = quantize_int8(model, [x_cal[i : i + 32] for i in range(0, 256, 32)], 32)
    for mixed in (False, True):
        for fused in (False, None):
            q = Int8Model(program, mixed, fused_gelu=fused)
            got = logits(q, x_test)
            kernels = (f"our kernels ({q.fused_gelu} pwconv1, {q.fused_dequant} pwconv2, "
                       f"{q.fused_norms} dwconv + LayerNorm)") if q.fused_gelu else "oneDNN"
            print(f"int8, float ops {'bf16' if mixed else 'fp32'}, {kernels}: top-1 {100 * (got.argmax(1) == y_test).float().mean():.2f}%, agreement with fp32 "
                  f"{100 * (got.argmax(1) == ref.argmax(1)).float().mean():.2f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("micro", "table", "poly", "fused", "stages", "accuracy"))
    p.add_argument("--model", help="table / accuracy: the trained CIFAR-10 atto state dict")
    p.add_argument("--data", default="../shared/data", help="table: the folder holding cifar10-test-jpeg.tar.gz")
    p.add_argument("--max-autotune", action="store_true", help="poly: also compile with max-autotune")
    args = p.parse_args()
    if args.what in ("table", "accuracy") and not args.model:
        p.error(f"{args.what} needs --model (the atto that benchmarks/cpu_deploy_numerics.py trains)")
    if args.what == "micro":
        micro()
    elif args.what == "table":
        table(args.model, args.data)
    elif args.what == "fused":
        fused()
    elif args.what == "stages":
        stages()
    elif args.what == "accuracy":
        accuracy(args.model, args.data)
    else:
        poly(args.max_autotune)


if __name__ == "__main__":
    main()
