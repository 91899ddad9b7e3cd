"""Our CPU kernels for ConvNeXt's blocks: AMX GEMMs for the pointwise convolutions (int8 and bf16), an AVX512 FMA
pass for both pointwise convolutions in exact fp32, and an AVX512 pass for the depthwise convolution + LayerNorm.

oneDNN's matmul takes GELU as an erf post-op that costs up to more than the GEMM it follows (stage 1 of ConvNeXt-T,
int8: 5.1-5.3 ms against 2.1-2.3 ms without it; `benchmarks/int8_gelu.py`). Here GELU is applied in the GEMM's store:
- **int8** (`qlinear_gelu_table`): the int32 accumulators of each 32 x 32 output block are dequantised and rounded
  onto the uint8 grid of the pre-GELU value (its range recorded at calibration, `RangeRecorder`): scale, bias, the
  input's zero point and that grid fold into one multiply-add per output channel (`grid_affine`). A 256-entry uint8
  table then maps the grid to the uint8 of the GELU output that pwconv2 reads (AVX512-VBMI byte permutes).
  `qlinear_dequant` (pwconv2) dequantises straight to bf16 / fp32, `qlinear_dequant_residual` adds the block's
  residual in the same store.
- **bf16** (`linear_gelu_bf16`): fp32 accumulators + bias, then x * Phi(x) with Phi a cubic per interval
  (`phi_cubics`), rounded to bf16 once; `linear_residual_bf16` (pwconv2) adds bias and residual in its store.
Both run on one driver: 2 x 2 AMX tiles per 32 x 32 block, K in steps of up to 64 bytes, the last rows of a matrix
through a zero-padded copy, each block's stores run during the next block's tile products. `mlp_bf16` / `qmlp`: a
block's two pointwise convs in one pass with equal outputs, the 4C hidden kept in each thread's cache. `dwconv_ln` /
`dwconv_ln_quant`: a block's depthwise 7 x 7 conv and LayerNorm (and the uint8 rounding pwconv1 reads) in one pass.
`mlp_fp32`: a block's pwconv1 + bias + erf GELU + pwconv2 + bias + residual in exact fp32 arithmetic (AVX512 FMA,
the 4C hidden kept in the core's L2, GELU as x * Phi(x) with `phi_quintics`), the path of `--dtype fp32`.

The kernels are compiled (`torch.utils.cpp_extension.load_inline`, once per machine, cached) at first use and
registered as `convnext::` ops of the dispatcher in C++, so that inductor's C++ wrapper calls them without Python.
`fuse_gelu_tables`, `fuse_dequant_linears`, `fuse_int8_mlps` and `fuse_dwconv_norms` rewrite a converted PT2E graph
to call the int8 ones; `convnext.deploy.cpu.fast_cpu_model` switches a float model's blocks to the others. `available()` says whether
this CPU (AMX-INT8, AMX-BF16, AVX512-VBMI) and compiler run them; everything else keeps oneDNN.
"""
from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.fast import depthwise_kernel_takes

__all__ = ["available", "fuse_gelu_tables", "fuse_dequant_linears", "fuse_int8_mlps", "fuse_dwconv_norms",
           "dwconv_ln_quant", "dwconv_ln", "RangeRecorder", "gelu_table", "grid_affine", "phi_cubics", "pack_weight",
           "pack_depthwise", "qlinear_gelu_table", "qlinear_dequant", "qlinear_dequant_residual", "qmlp",
           "linear_gelu_bf16", "linear_residual_bf16", "mlp_bf16", "first_stream_in_bf16", "phi_quintics",
           "pack_fp32", "mlp_fp32"]

# The AMX GEMM driver both kernels share (and `benchmarks/int8_gelu.py fused`, with other epilogues).
GEMM_SRC = r"""
#include <torch/extension.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cstring>
#include <vector>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <omp.h>
#include <type_traits>

struct TileCfg { uint8_t palette; uint8_t start_row; uint8_t reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; };

bool request_amx() {  // Linux: a process asks once for the AMX tile state
  return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}

// Tiles 0-3 C (16 x 16 fp32 / int32), 4-5 A (16 rows of ks bytes), 6-7 B (ks/4 rows of 64 bytes). The compiler
// barrier keeps the stores to cfg: GCC does not see the tile-config load read them (and dropped them here).
static void tile_config(int64_t ks) {
  TileCfg cfg = {}; cfg.palette = 1;
  for (int t = 0; t < 4; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
  for (int t = 4; t < 6; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = (uint16_t)ks; }
  for (int t = 6; t < 8; ++t) { cfg.rows[t] = (uint8_t)(ks / 4); cfg.colsb[t] = 64; }
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// work(kb) runs after each K step's tile products are issued: vector work (the previous block's stores) that the core
// does while the AMX unit multiplies.
struct NoWork { void operator()(int64_t) const {} };

// One 32 x 32 block of accumulators: tiles 0-3 = C (2 x 2 of 16 x 16), 4-5 = A rows, 6-7 = B columns. Acc int32_t:
// uint8 A x int8 B (AMX-INT8); float: bf16 A x bf16 B (AMX-BF16). ks: bytes of K per step. A's 16-row tiles: rows
// lda bytes apart, the second tile a_half bytes after the first, K steps a_step bytes apart (a row-major A: lda = its
// row, a_half = 16 lda, a_step = ks; `pack_rows`: ks, 16 ks, 32 ks).
template <typename Acc, typename Work = NoWork>
static void block(const uint8_t* a0, int64_t lda, int64_t a_half, int64_t a_step, const uint8_t* B, int64_t nb,
                  int64_t KB, int64_t ks, Acc (*c)[16][16], const uint8_t* pf = nullptr, int64_t pf_first = 0,
                  int64_t pf_step = 1, const uint8_t* pb = nullptr, int64_t pb_lines = 0, Work work = Work()) {
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  for (int64_t kb = 0; kb < KB; ++kb) {
    for (int64_t j = 0; j < pb_lines; ++j)  // pb_lines lines of pb per K step, towards L1 (the next weight slice)
      _mm_prefetch((const char*)(pb + (kb * pb_lines + j) * 64), _MM_HINT_T0);
    if (pf)  // rows pf_first, pf_first + pf_step, ... of the next row block, towards L2
      for (int64_t r = pf_first; r < 32; r += pf_step) _mm_prefetch((const char*)(pf + r * lda + kb * ks), _MM_HINT_T1);
    _tile_loadd(4, a0 + kb * a_step, lda);
    _tile_loadd(5, a0 + a_half + kb * a_step, lda);
    _tile_loadd(6, B + ((nb * KB + kb) * 2) * (ks / 4) * 64, 64);  // both tiles of a step adjacent (`pack_weight`)
    _tile_loadd(7, B + ((nb * KB + kb) * 2 + 1) * (ks / 4) * 64, 64);
    if constexpr (std::is_same<Acc, float>::value) {
      _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
    } else {
      _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
    }
    work(kb);
  }
  _tile_stored(0, c[0], 64); _tile_stored(1, c[1], 64); _tile_stored(2, c[2], 64); _tile_stored(3, c[3], 64);
}

// a [M, K] (uint8, or bf16 for Acc float) x B tiles bp [N/32][K bytes/ks][2][ks/4][64 bytes]: epilogue(c, mb, nb, rows,
// r0, r1) stores rows [r0, min(r1, rows)) of every 32 x 32 block, c its accumulators, rows of them valid (the last
// rows of a matrix go through a zero-padded copy, made once per thread). Blocks run in the order that keeps the larger
// operand's slice in cache: row blocks outer where the weight is the smaller (early stages), column blocks outer where
// it is the larger (stage 4). Software-pipelined: a block's stores run during the next block's tile products, a share
// of its rows after each K step (c alternates between two buffers): the two bf16 GEMMs of a ConvNeXt-T block measured
// 1.07-1.26x faster per stage at batch 16 (micro-benchmark).
template <typename Acc = int32_t, typename Epilogue>
static void gemm(const torch::Tensor& a, const torch::Tensor& bp, int64_t ks, Epilogue epilogue) {
  constexpr bool bf16 = std::is_same<Acc, float>::value;
  constexpr int64_t E = bf16 ? 2 : 1;  // bytes per element of A
  TORCH_CHECK(a.scalar_type() == (bf16 ? torch::kBFloat16 : torch::kUInt8) && a.dim() == 2 && a.is_contiguous(),
              "AMX GEMM: ", bf16 ? "bf16" : "uint8", " [M, K] input");
  const int64_t M = a.size(0), lda = a.size(1) * E, N = bp.size(0) * 16, KB = lda / ks;
  TORCH_CHECK(N % 32 == 0 && lda % ks == 0 && ks % 4 == 0 && ks <= 64 && bp.size(1) == KB &&
              bp.element_size() == E, "AMX GEMM: shapes");
  const uint8_t* A = (const uint8_t*)a.data_ptr(); const uint8_t* B = (const uint8_t*)bp.data_ptr();
  const int64_t full = M / 32, blocks = (M + 31) / 32, cols = N / 32;
  const bool rows_outer = N <= M;
  #pragma omp parallel
  {
    tile_config(ks);
    alignas(64) Acc c[2][4][16][16];
    std::vector<uint8_t> pad;
    int64_t j = 0, pmb = -1, pnb = 0, prows = 0;  // the pending block: its stores run during the next one
    const int64_t share = (32 + KB - 1) / KB;  // its rows stored per K step
    #pragma omp for schedule(static) nowait
    for (int64_t job = 0; job < blocks * cols; ++job) {
      const int64_t mb = rows_outer ? job / cols : job % blocks, nb = rows_outer ? job % cols : job / blocks;
      const int64_t rows = mb < full ? 32 : M - 32 * mb;
      const uint8_t* a0 = A + mb * 32 * lda;
      if (rows < 32) {
        if (pad.empty()) {  // the one partial row block
          pad.assign(32 * lda, 0);
          std::memcpy(pad.data(), a0, rows * lda);
        }
        a0 = pad.data();
      }
      // rows outer: the next row block's A is fetched while this one's column blocks run, a share of its rows each
      // (software prefetch of the next column block's weights, columns outer, measured no gain)
      const uint8_t* pf = rows_outer && mb + 1 < full ? a0 + 32 * lda : nullptr;
      Acc (*const prev)[16][16] = c[(j + 1) & 1];
      auto stores = [&](int64_t kb) {
        if (pmb >= 0) epilogue(prev, pmb, pnb, prows, std::min<int64_t>(32, kb * share), std::min<int64_t>(32, (kb + 1) * share));
      };
      block<Acc>(a0, lda, 16 * lda, ks, B, nb, KB, ks, c[j & 1], pf, nb % 32, cols, nullptr, 0, stores);
      pmb = mb; pnb = nb; prows = rows; ++j;
    }
    if (pmb >= 0) epilogue(c[(j + 1) & 1], pmb, pnb, prows, 0, 32);
    _tile_release();
  }
}
"""

_SRC = GEMM_SRC + r"""
// 16 fp32 or bf16 values as 16 fp32 lanes
template <typename T> static inline __m512 load16(const T* p);
template <> inline __m512 load16<float>(const float* p) { return _mm512_loadu_ps(p); }
template <> inline __m512 load16<at::BFloat16>(const at::BFloat16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

// Rows [r0, r1) of a 32 x 32 int32 block c stored as scale[n] * acc + shift[n] (+ res) in fp32 or bf16: o and res
// are whole [., ld] tensors (bytes), at the element offset of the block's first value; S, H at its first column.
static inline void store_dequant(const int32_t (*c)[16][16], int64_t r0, int64_t r1, char* o, const char* res,
                                 int64_t at0, int64_t ld, const float* S, const float* H, bool out_bf16, bool res_bf16) {
  if (out_bf16 && res) {  // bf16 + bf16 residual (int8-mixed-bf16's pwconv2): both column halves of a row in one store
    const __m512 s0 = _mm512_loadu_ps(S), s1 = _mm512_loadu_ps(S + 16);
    const __m512 h0 = _mm512_loadu_ps(H), h1 = _mm512_loadu_ps(H + 16);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t at = at0 + r * ld;
      const __m512i rv = _mm512_loadu_si512(res + 2 * at);  // 32 bf16: their fp32 values are the 16-bit halves << 16
      const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(rv)), 16));
      const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(rv, 1)), 16));
      const __m512 v0 = _mm512_add_ps(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[2 * (r >> 4)][r & 15])), s0, h0), lo);
      const __m512 v1 = _mm512_add_ps(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[2 * (r >> 4) + 1][r & 15])), s1, h1), hi);
      _mm512_storeu_si512(o + 2 * at, (__m512i)_mm512_cvtne2ps_pbh(v1, v0));
    }
    return;
  }
  for (int q = 0; q < 2; ++q) {  // column halves: tiles q (rows 0-15), 2 + q (rows 16-31)
    const __m512 vs = _mm512_loadu_ps(S + 16 * q), vh = _mm512_loadu_ps(H + 16 * q);
    for (int64_t r = r0; r < r1; ++r) {
      __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[2 * (r >> 4) + q][r & 15])), vs, vh);
      const int64_t at = at0 + r * ld + 16 * q;
      if (res)
        v = _mm512_add_ps(v, res_bf16 ? load16((const at::BFloat16*)(res + 2 * at)) : load16((const float*)(res + 4 * at)));
      if (out_bf16) _mm256_storeu_si256((__m256i*)(o + 2 * at), (__m256i)_mm512_cvtneps_pbh(v));
      else _mm512_storeu_ps((float*)(o + 4 * at), v);
    }
  }
}

// The uint8 GELU table (256 entries in four registers).
struct Table { __m512i l0, l1, l2, l3; };

static inline Table load_table(const uint8_t* T) {
  return {_mm512_loadu_si512(T), _mm512_loadu_si512(T + 64), _mm512_loadu_si512(T + 128), _mm512_loadu_si512(T + 192)};
}

// Rows [r0, r1) of a 32 x 32 int32 block c as table[clamp(round(scale[n] * acc + shift[n]), 0, 255)] to uint8 o (row
// stride ld bytes, at the block's first value); S, H at the block's first column. Two rows at a time: 64 indices
// packed to bytes with signed saturation (int32 -> int16 -> uint8: the clamp), one 64-byte table lookup, a dword
// permute to undo the packs' lane interleaving.
static inline __m512i grid_index(const int32_t* acc, __m512 s, __m512 h) {
  return _mm512_cvtps_epi32(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(acc)), s, h));
}

static inline __m512i lookup64(__m512i y, const Table& t) {  // 64 bytes through the 256-entry table
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(y), _mm512_permutex2var_epi8(t.l0, y, t.l1),
                                _mm512_permutex2var_epi8(t.l2, y, t.l3));
}

static inline void store_table(const int32_t (*c)[16][16], int64_t r0, int64_t r1, uint8_t* o, int64_t ld,
                               const float* S, const float* H, const Table& t) {
  const __m512 s0 = _mm512_loadu_ps(S), s1 = _mm512_loadu_ps(S + 16);
  const __m512 h0 = _mm512_loadu_ps(H), h1 = _mm512_loadu_ps(H + 16);
  // after packs_epi32(a, b) then packus_epi16(p, q), dword 4k + j of each 128-bit lane k holds columns 4k..4k+3 of
  // (a, b, a', b')[j]; this puts row r's 32 bytes first, then row r + 1's
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  int64_t r = r0;
  for (; r + 1 < r1; r += 2) {  // tiles (0, 1): rows 0-15, (2, 3): rows 16-31
    const __m512i p = _mm512_packs_epi32(grid_index(c[2 * (r >> 4)][r & 15], s0, h0),
                                         grid_index(c[2 * (r >> 4) + 1][r & 15], s1, h1));
    const int64_t q1 = r + 1;
    const __m512i q = _mm512_packs_epi32(grid_index(c[2 * (q1 >> 4)][q1 & 15], s0, h0),
                                         grid_index(c[2 * (q1 >> 4) + 1][q1 & 15], s1, h1));
    const __m512i y = _mm512_permutexvar_epi32(order, lookup64(_mm512_packus_epi16(p, q), t));
    _mm256_storeu_si256((__m256i*)(o + r * ld), _mm512_castsi512_si256(y));
    _mm256_storeu_si256((__m256i*)(o + q1 * ld), _mm512_extracti64x4_epi64(y, 1));
  }
  if (r < r1) {  // an odd last row: packed with itself
    const __m512i p = _mm512_packs_epi32(grid_index(c[2 * (r >> 4)][r & 15], s0, h0),
                                         grid_index(c[2 * (r >> 4) + 1][r & 15], s1, h1));
    const __m512i y = _mm512_permutexvar_epi32(order, lookup64(_mm512_packus_epi16(p, p), t));
    _mm256_storeu_si256((__m256i*)(o + r * ld), _mm512_castsi512_si256(y));
  }
}

// An int8 pwconv2's residual: fp32 / bf16 [M, N]; whether it is bf16.
static bool check_int8_residual(const torch::Tensor& residual, int64_t M, int64_t N) {
  const bool res_bf16 = residual.scalar_type() == torch::kBFloat16;
  TORCH_CHECK((res_bf16 || residual.scalar_type() == torch::kFloat) && residual.is_contiguous() &&
              residual.dim() == 2 && residual.size(0) == M && residual.size(1) == N,
              "AMX int8 GEMM: fp32 / bf16 [M, N] residual");
  return res_bf16;
}

// out[m, n] = scale[n] * acc + shift[n] in fp32 or bf16 (an int8 Linear whose output is read as floats: pwconv2)
// With a residual [M, N] (fp32 or bf16), it is added before the one rounding, and the output dtype is torch's
// promotion of the two: bf16 only where both are.
torch::Tensor qgemm_dequant(const torch::Tensor& a, const torch::Tensor& bp, const torch::Tensor& scale,
                            const torch::Tensor& shift, int64_t ks, bool bf16,
                            const torch::Tensor* residual = nullptr) {
  const int64_t M = a.size(0), N = bp.size(0) * 16;
  const bool res_bf16 = residual && check_int8_residual(*residual, M, N);
  const bool out_bf16 = bf16 && (!residual || res_bf16);
  auto out = torch::empty({M, N}, out_bf16 ? torch::kBFloat16 : torch::kFloat32);
  const float* S = scale.data_ptr<float>(); const float* H = shift.data_ptr<float>();
  char* O = (char*)out.data_ptr();
  const char* R = residual ? (const char*)residual->data_ptr() : nullptr;
  gemm(a, bp, ks, [=](int32_t (*c)[16][16], int64_t mb, int64_t nb, int64_t rows, int64_t r0, int64_t r1) {
    store_dequant(c, r0, std::min(r1, rows), O, R, mb * 32 * N + nb * 32, N, S + nb * 32, H + nb * 32, out_bf16, res_bf16);
  });
  return out;
}

// The index of each output on the pre-GELU uint8 grid is clamp(round(scale[n] * acc + shift[n]), 0, 255)
// (dequantisation, bias, zero points and the grid folded into scale / shift); out[m, n] = table[index].
torch::Tensor qgemm_table(const torch::Tensor& a, const torch::Tensor& bp, const torch::Tensor& scale,
                          const torch::Tensor& shift, const torch::Tensor& table, int64_t ks) {
  const int64_t M = a.size(0), N = bp.size(0) * 16;
  auto out = torch::empty({M, N}, torch::kUInt8);
  const float* S = scale.data_ptr<float>(); const float* H = shift.data_ptr<float>();
  const uint8_t* T = table.data_ptr<uint8_t>(); uint8_t* O = out.data_ptr<uint8_t>();
  const Table t = load_table(T);
  gemm(a, bp, ks, [=](int32_t (*c)[16][16], int64_t mb, int64_t nb, int64_t rows, int64_t r0, int64_t r1) {
    store_table(c, r0, std::min(r1, rows), O + mb * 32 * N + nb * 32, N, S + nb * 32, H + nb * 32, t);
  });
  return out;
}
// ---- depthwise 7 x 7 convolution + LayerNorm over channels + uint8 quantization, one pass (AVX512F) ----

// WB outputs along a row, 16 channels: each input vector is loaded once per kernel row and meets all 7 weights.
template <int WB>
static inline void dw_run(const float* in, int64_t rs, int64_t C, const float* wt, __m512 bias, float* out) {
  __m512 acc[WB];
  #pragma GCC unroll 32
  for (int i = 0; i < WB; ++i) acc[i] = bias;
  for (int ky = 0; ky < 7; ++ky) {
    const float* r = in + ky * rs;
    __m512 wv[7];
    #pragma GCC unroll 7
    for (int kx = 0; kx < 7; ++kx) wv[kx] = _mm512_loadu_ps(wt + (ky * 7 + kx) * 16);
    #pragma GCC unroll 32
    for (int j = 0; j < WB + 6; ++j) {
      const __m512 v = _mm512_loadu_ps(r + j * C);
      #pragma GCC unroll 7
      for (int kx = 0; kx < 7; ++kx) {
        const int i = j - kx;
        if (i >= 0 && i < WB) acc[i] = _mm512_fmadd_ps(v, wv[kx], acc[i]);
      }
    }
  }
  #pragma GCC unroll 32
  for (int i = 0; i < WB; ++i) _mm512_storeu_ps(out + i * C, acc[i]);
}

// LayerNorm over the C channels of P consecutive pixels (rows of p, C apart), stored as OutT: uint8_t rounds
// y * inv + zp to nearest even and clamps it to 0..255; float / at::BFloat16 store y.
template <int P, typename OutT>
static inline void ln_store(const float* p, int64_t C, const float* G, const float* BETA, float eps, __m512 vinv,
                            __m512 vzp, OutT* o) {
  __m512 s[P], q[P], mean[P], rstd[P];
  for (int k = 0; k < P; ++k) s[k] = q[k] = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; c += 16)
    for (int k = 0; k < P; ++k) s[k] = _mm512_add_ps(s[k], _mm512_loadu_ps(p + k * C + c));
  for (int k = 0; k < P; ++k) mean[k] = _mm512_set1_ps(_mm512_reduce_add_ps(s[k]) / C);
  for (int64_t c = 0; c < C; c += 16)
    for (int k = 0; k < P; ++k) {
      const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(p + k * C + c), mean[k]);
      q[k] = _mm512_fmadd_ps(d, d, q[k]);
    }
  for (int k = 0; k < P; ++k) rstd[k] = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(q[k]) / C + eps));
  const __m512i z = _mm512_setzero_si512(), top = _mm512_set1_epi32(255);
  for (int64_t c = 0; c < C; c += 16) {
    const __m512 g = _mm512_loadu_ps(G + c), be = _mm512_loadu_ps(BETA + c);
    for (int k = 0; k < P; ++k) {
      const __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(p + k * C + c), mean[k]), rstd[k]),
                                       g, be);
      if constexpr (std::is_same<OutT, uint8_t>::value) {
        const __m512 r = _mm512_add_ps(_mm512_roundscale_ps(_mm512_mul_ps(y, vinv),
                                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vzp);
        const __m512i n = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(r), z), top);
        _mm_storeu_si128((__m128i*)(o + k * C + c), _mm512_cvtusepi32_epi8(n));
      } else if constexpr (std::is_same<OutT, float>::value) {
        _mm512_storeu_ps(o + k * C + c, y);
      } else {
        _mm256_storeu_si256((__m256i*)(o + k * C + c), (__m256i)_mm512_cvtneps_pbh(y));
      }
    }
  }
}

// OutT uint8_t: LayerNorm then rounding onto the uint8 grid (inv_scale, zp); float / at::BFloat16: LayerNorm only.
template <typename T, typename OutT>
static void dwln_rows(const T* X, int64_t B, int64_t H, int64_t W, int64_t C, const float* WT, const float* BIAS,
                      const float* G, const float* BETA, float eps, float inv_scale, int32_t zp, OutT* O,
                      int64_t R) {
  const int64_t chunks = (H + R - 1) / R, rs = (W + 6) * C;
  #pragma omp parallel
  {
    float* buf = (float*)aligned_alloc(64, ((R + 6) * rs * 4 + 63) / 64 * 64);
    float* row = (float*)aligned_alloc(64, (R * W * C * 4 + 63) / 64 * 64);  // dwconv output, R rows
    const __m512 vzp = _mm512_set1_ps((float)zp), vinv = _mm512_set1_ps(inv_scale);
    #pragma omp for schedule(static)
    for (int64_t job = 0; job < B * chunks; ++job) {
      const int64_t b = job / chunks, h0 = (job % chunks) * R, h1 = std::min(H, h0 + R);
      for (int64_t i = 0; i < h1 - h0 + 6; ++i) {  // input rows h0 - 3 .. h1 + 2 as fp32, zero-padded by 3
        const int64_t hin = h0 - 3 + i;
        float* dst = buf + i * rs;
        if (hin < 0 || hin >= H) { std::memset(dst, 0, rs * 4); continue; }
        std::memset(dst, 0, 3 * C * 4); std::memset(dst + (W + 3) * C, 0, 3 * C * 4);
        const T* src = X + (b * H + hin) * W * C;
        for (int64_t k = 0; k < W * C; k += 16) _mm512_storeu_ps(dst + 3 * C + k, load16(src + k));
      }
      // channel slices outer, rows inner: the 7 input rows of one slice stay in L1 from one output row to the next
      for (int64_t cb = 0; cb < C; cb += 16) {
        const float* wt = WT + cb * 49;
        const __m512 bias = _mm512_loadu_ps(BIAS + cb);
        for (int64_t h = h0; h < h1; ++h) {
          const float* base = buf + (h - h0) * rs + cb;
          float* out = row + (h - h0) * W * C + cb;
          int64_t w = 0;
          for (; w + 14 <= W; w += 14) dw_run<14>(base + w * C, rs, C, wt, bias, out + w * C);
          for (; w + 7 <= W; w += 7) dw_run<7>(base + w * C, rs, C, wt, bias, out + w * C);
          for (; w < W; ++w) dw_run<1>(base + w * C, rs, C, wt, bias, out + w * C);
        }
      }
      // LayerNorm over C, then round onto the uint8 grid: 4 pixels at a time (independent chains)
      const int64_t pixels = (h1 - h0) * W;
      OutT* o = O + (b * H + h0) * W * C;
      int64_t q = 0;
      for (; q + 4 <= pixels; q += 4) ln_store<4>(row + q * C, C, G, BETA, eps, vinv, vzp, o + q * C);
      for (; q < pixels; ++q) ln_store<1>(row + q * C, C, G, BETA, eps, vinv, vzp, o + q * C);
    }
    free(buf); free(row);
  }
}

// Output rows per job (1..8): the fewest on the busiest thread under OpenMP's static schedule (contiguous, near
// equal job counts), each job also paying for widening its 6 extra input rows (about a tenth of a row's work).
static int64_t chunk_rows(int64_t B, int64_t H, int64_t T) {
  int64_t best = 1;
  double best_load = 1e300;
  for (int64_t R = 1; R <= std::min<int64_t>(8, H); ++R) {
    const int64_t per_image = (H + R - 1) / R, jobs = B * per_image;
    double load = 0;
    for (int64_t t = 0, j = 0; t < T; ++t) {  // thread t's jobs: j .. j + n - 1
      const int64_t n = jobs / T + (t < jobs % T ? 1 : 0);
      double l = 0;
      for (int64_t k = j; k < j + n; ++k) {
        const int64_t rows = std::min(R, H - (k % per_image) * R);
        l += rows + 0.1 * (rows + 6);
      }
      load = std::max(load, l);
      j += n;
    }
    if (load < best_load - 1e-9) { best_load = load; best = R; }
  }
  return best;
}

template <typename OutT>
static void dwln_dispatch(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                          const torch::Tensor& g, const torch::Tensor& beta, double eps, double inv_scale, int64_t zp,
                          OutT* out) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.size(3) % 16 == 0, "dwconv_ln: [B, H, W, C] input, C % 16 == 0");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  TORCH_CHECK(weight.numel() == C * 49 && bias.numel() == C && g.numel() == C && beta.numel() == C,
              "dwconv_ln: shapes");
  const int64_t R = chunk_rows(B, H, omp_get_max_threads());
  auto f32 = [](const torch::Tensor& t) { return t.to(torch::kFloat).contiguous(); };
  const torch::Tensor wt = f32(weight), bs = f32(bias), gg = f32(g), bb = f32(beta);
  if (x.scalar_type() == torch::kBFloat16)
    dwln_rows(x.data_ptr<at::BFloat16>(), B, H, W, C, wt.data_ptr<float>(), bs.data_ptr<float>(), gg.data_ptr<float>(),
              bb.data_ptr<float>(), (float)eps, (float)inv_scale, (int32_t)zp, out, R);
  else
    dwln_rows(x.data_ptr<float>(), B, H, W, C, wt.data_ptr<float>(), bs.data_ptr<float>(), gg.data_ptr<float>(),
              bb.data_ptr<float>(), (float)eps, (float)inv_scale, (int32_t)zp, out, R);
}

// x [B, H, W, C] fp32 or bf16 (channels-last memory), weight packed as [C/16][49][16] fp32: uint8 [B, H, W, C]
torch::Tensor dwconv_ln_quant(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              const torch::Tensor& g, const torch::Tensor& beta, double eps, double inv_scale, int64_t zp) {
  auto out = torch::empty(x.sizes(), torch::kUInt8);
  dwln_dispatch(x, weight, bias, g, beta, eps, inv_scale, zp, out.data_ptr<uint8_t>());
  return out;
}

// the same with LayerNorm's output in x's dtype (fp32 or bf16), weight packed as above
torch::Tensor dwconv_ln(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                        const torch::Tensor& g, const torch::Tensor& beta, double eps) {
  auto out = torch::empty(x.sizes(), x.options());
  if (x.scalar_type() == torch::kBFloat16)
    dwln_dispatch(x, weight, bias, g, beta, eps, 1.0, 0, out.data_ptr<at::BFloat16>());
  else
    dwln_dispatch(x, weight, bias, g, beta, eps, 1.0, 0, out.data_ptr<float>());
  return out;
}

// ---- bf16 GEMMs (AMX-BF16), bf16 out: pwconv1 + bias + GELU, pwconv2 + bias + residual ----
// GELU(x) = x * Phi(x), Phi a cubic in each of 32 equal intervals of [-4.5, 4.5) (coefficients coef[4][32] by power of
// the offset within the interval, `phi_cubics`): |error| <= 1.2e-6 |x|; above the range x * Phi(4.5) (Phi(4.5) =
// 1 - 3.4e-6), below it 0 (|GELU| < 1.6e-5 there). The coefficients are looked up with two-register permutes.
struct PhiCubic { __m512 c[4][2]; };

static inline __m512 gelu_ps(__m512 x, const PhiCubic& k) {
  // t = 32 (x + 4.5) / 9 in [0, 32): interval floor(t), offset t - floor(t). x is clamped inside (-4.5, 4.5) (NaN ->
  // the clamp, x * p stays NaN; below -4.5 the result is masked to 0). One FMA rounding down onto 2^23 + an integer
  // gives floor(t) in its low bits (the permutes read 5); a second FMA gives the offset, rounded once.
  const __m512 xc = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(4.4999995f)), _mm512_set1_ps(-4.4999995f));
  const __m512 ti = _mm512_fmadd_round_ps(xc, _mm512_set1_ps(32.f / 9.f), _mm512_set1_ps(8388608.f + 16.f),
                                          _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_fmadd_ps(xc, _mm512_set1_ps(32.f / 9.f), _mm512_sub_ps(_mm512_set1_ps(8388608.f + 16.f), ti));
  const __m512i i = _mm512_castps_si512(ti);
  __m512 p = _mm512_permutex2var_ps(k.c[3][0], i, k.c[3][1]);
  p = _mm512_fmadd_ps(p, f, _mm512_permutex2var_ps(k.c[2][0], i, k.c[2][1]));
  p = _mm512_fmadd_ps(p, f, _mm512_permutex2var_ps(k.c[1][0], i, k.c[1][1]));
  p = _mm512_fmadd_ps(p, f, _mm512_permutex2var_ps(k.c[0][0], i, k.c[0][1]));
  return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-4.5f), _CMP_NLT_UQ), x, p);  // 0 below -4.5
}

static void check_bf16_gemm(const torch::Tensor& bp, const torch::Tensor& bias) {
  TORCH_CHECK(bp.scalar_type() == torch::kBFloat16 && bias.scalar_type() == torch::kFloat &&
              bias.is_contiguous() && bias.numel() == bp.size(0) * 16, "AMX bf16 GEMM: packed bf16 weight, fp32 bias");
}

alignas(64) static float g_phi[128];  // `phi_cubics`, set once when the extension is loaded

void set_phi_cubics(torch::Tensor coef) {
  TORCH_CHECK(coef.scalar_type() == torch::kFloat && coef.is_contiguous() && coef.numel() == 128, "GELU cubics");
  std::memcpy(g_phi, coef.data_ptr<float>(), sizeof(g_phi));
}

static inline PhiCubic load_phi() {
  PhiCubic k;
  for (int d = 0; d < 4; ++d) { k.c[d][0] = _mm512_loadu_ps(g_phi + 32 * d); k.c[d][1] = _mm512_loadu_ps(g_phi + 32 * d + 16); }
  return k;
}

// The stores of one 32 x 32 block of accumulators c (tiles 0, 1: rows 0-15; 2, 3: rows 16-31), its rows [r0, r1), to
// bf16 o (row stride ld elements, at the block's first column); bias at the block's first column.
// GELU(c + bias):
static inline void store_gelu(const float (*c)[16][16], int64_t r0, int64_t r1, uint16_t* o, int64_t ld,
                              const float* bias, const PhiCubic& k) {  // rows [r0, r1) of the 32
  const __m512 b0 = _mm512_loadu_ps(bias), b1 = _mm512_loadu_ps(bias + 16);
  for (int64_t r = r0; r < r1; ++r) {
    const __m512 y0 = gelu_ps(_mm512_add_ps(_mm512_load_ps(c[2 * (r >> 4)][r & 15]), b0), k);
    const __m512 y1 = gelu_ps(_mm512_add_ps(_mm512_load_ps(c[2 * (r >> 4) + 1][r & 15]), b1), k);
    _mm512_storeu_si512(o + r * ld, (__m512i)_mm512_cvtne2ps_pbh(y1, y0));
  }
}

// c + bias + res (bf16, the same row stride), rounded once:
static inline void store_residual(const float (*c)[16][16], int64_t r0, int64_t r1, uint16_t* o,
                                  const uint16_t* res, int64_t ld, const float* bias) {  // rows [r0, r1) of the 32
  const __m512 b0 = _mm512_loadu_ps(bias), b1 = _mm512_loadu_ps(bias + 16);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t at = r * ld;
    const __m512 y0 = _mm512_add_ps(_mm512_add_ps(_mm512_load_ps(c[2 * (r >> 4)][r & 15]), b0),
                                    load16((const at::BFloat16*)(res + at)));
    const __m512 y1 = _mm512_add_ps(_mm512_add_ps(_mm512_load_ps(c[2 * (r >> 4) + 1][r & 15]), b1),
                                    load16((const at::BFloat16*)(res + at + 16)));
    _mm512_storeu_si512(o + at, (__m512i)_mm512_cvtne2ps_pbh(y1, y0));
  }
}

// out[m, n] = GELU(a[m] . w[n] + bias[n]) in bf16; a bf16 [M, K], bp the packed bf16 weight (`pack_weight`)
torch::Tensor bgemm_gelu(const torch::Tensor& a, const torch::Tensor& bp, const torch::Tensor& bias, int64_t ks) {
  check_bf16_gemm(bp, bias);
  const int64_t M = a.size(0), N = bp.size(0) * 16;
  auto out = torch::empty({M, N}, torch::kBFloat16);
  const float* BI = bias.data_ptr<float>();
  uint16_t* O = (uint16_t*)out.data_ptr();
  gemm<float>(a, bp, ks, [=](float (*c)[16][16], int64_t mb, int64_t nb, int64_t rows, int64_t r0, int64_t r1) {
    store_gelu(c, r0, std::min(r1, rows), O + mb * 32 * N + nb * 32, N, BI + nb * 32, load_phi());
  });
  return out;
}

static void check_residual(const torch::Tensor& residual, int64_t M, int64_t N) {
  TORCH_CHECK(residual.scalar_type() == torch::kBFloat16 && residual.is_contiguous() && residual.dim() == 2 &&
              residual.size(0) == M && residual.size(1) == N, "AMX bf16 GEMM: bf16 [M, N] residual");
}

// out[m, n] = a[m] . w[n] + bias[n] + residual[m, n] in bf16, rounded once; residual bf16 [M, N]
torch::Tensor bgemm_residual(const torch::Tensor& a, const torch::Tensor& bp, const torch::Tensor& bias,
                             const torch::Tensor& residual, int64_t ks) {
  check_bf16_gemm(bp, bias);
  const int64_t M = a.size(0), N = bp.size(0) * 16;
  check_residual(residual, M, N);
  auto out = torch::empty({M, N}, torch::kBFloat16);
  const float* BI = bias.data_ptr<float>();
  const uint16_t* R = (const uint16_t*)residual.data_ptr();
  uint16_t* O = (uint16_t*)out.data_ptr();
  gemm<float>(a, bp, ks, [=](float (*c)[16][16], int64_t mb, int64_t nb, int64_t rows, int64_t r0, int64_t r1) {
    const int64_t at = mb * 32 * N + nb * 32;
    store_residual(c, r0, std::min(r1, rows), O + at, R + at, N, BI + nb * 32);
  });
  return out;
}

// Rows [m0, m0 + 32 n) of a row-major [M, lda bytes] A as AMX A tiles, [n][K step][2][16 rows][ks bytes] (rows past M
// zero): each tile one sequential 16 ks-byte read, where a row-major A's tile rows are lda bytes apart (with a
// stride of hundreds of bytes, AMX GEMMs fed from L2 ran at a fraction of their rate here).
static void pack_rows(const uint8_t* A, int64_t M, int64_t lda, int64_t ks, int64_t m0, int64_t n, uint8_t* out) {
  const int64_t KB = lda / ks;
  for (int64_t b = 0; b < n; ++b)
    for (int64_t r = 0; r < 32; ++r) {
      const int64_t m = m0 + 32 * b + r;
      uint8_t* o = out + (b * KB * 32 + (r / 16) * 16 + r % 16) * ks;
      for (int64_t kb = 0; kb < KB; ++kb, o += 32 * ks)
        if (m < M) std::memcpy(o, A + m * lda + kb * ks, ks); else std::memset(o, 0, ks);
    }
}

// A whole ConvNeXt MLP in one pass: out = store_out(W2 . store_hidden(W1 . a)), the hidden [M, H] (E bytes per value)
// never leaving the thread's cache. Each thread takes an equal share of the 32-row blocks (to one block), in groups
// (a group's hidden at most about 512 KiB): the group's rows of a packed as A tiles (`pack_rows`), pwconv1 into
// a scratch already in A-tile order for pwconv2 (K steps of 64 bytes), then pwconv2. Column blocks outer within a
// group, so a weight slice is read once per group; the next slice is prefetched during the current one. Software-
// pipelined like `gemm`. store_hidden(c, r0, r1, nb, dst): rows [r0, r1) of column block nb to dst (row stride 64 bytes);
// store_out(c, r0, r1, mb, nb, rows) as gemm's epilogue. a [M, lda bytes]; ks1: pwconv1's K step.
template <typename Acc, int64_t E, typename Hidden, typename Out>
static void mlp_pass(const uint8_t* A, int64_t M, int64_t lda, int64_t ks1, const uint8_t* B1, int64_t H,
                     const uint8_t* B2, int64_t N, Hidden store_hidden, Out store_out) {
  const int64_t ks2 = 64, KB1 = lda / ks1, KB2 = H * E / ks2;
  const int64_t blocks = (M + 31) / 32, threads = omp_get_max_threads();
  const int64_t most = std::max<int64_t>(1, (512 << 10) / (32 * E * H));  // row blocks per group, at most
  #pragma omp parallel num_threads(threads)
  {
    // thread t takes row blocks [blocks t / T, blocks (t + 1) / T) (balanced to one block), in groups of equal size
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t first = blocks * t / T, last = blocks * (t + 1) / T;
    const int64_t groups = std::max<int64_t>(1, (last - first + most - 1) / most);
    const int64_t per = std::max<int64_t>(1, (last - first + groups - 1) / groups);
    alignas(64) Acc c[2][4][16][16];
    static thread_local std::vector<__m512i> scratch;  // kept between calls (OpenMP's threads persist); 64-byte aligned
    const int64_t a_bytes = per * 32 * lda, h_bytes = per * 32 * E * H;
    if (scratch.size() * 64 < (size_t)(a_bytes + h_bytes)) scratch.resize((a_bytes + h_bytes) / 64 + 1);
    uint8_t* const ap = (uint8_t*)scratch.data();
    uint8_t* const hp = ap + a_bytes;
    for (int64_t mb0 = first; mb0 < last; mb0 += per) {
      const int64_t n = std::min(per, last - mb0);
      pack_rows(A, M, lda, ks1, 32 * mb0, n, ap);
      tile_config(ks1);
      int64_t j = 0, pmb = 0, pnb = 0, prows = 0;
      Acc (*pc)[16][16] = nullptr; uint8_t* pdst = nullptr;
      const int64_t slice1 = KB1 * 32 * ks1, lines1 = (slice1 / 64 + n * KB1 - 1) / (n * KB1);  // per K step
      const int64_t share1 = (32 + KB1 - 1) / KB1;  // stored rows per K step
      for (int64_t nb = 0; nb < H / 32; ++nb)
        for (int64_t b = 0; b < n; ++b, ++j) {
          const int64_t done = b * KB1 * lines1 * 64;
          const uint8_t* next = nb + 1 < H / 32 && done < slice1 ? B1 + (nb + 1) * slice1 + done : nullptr;
          auto hidden = [&](int64_t kb) {
            if (pc) store_hidden(pc, std::min<int64_t>(32, kb * share1), std::min<int64_t>(32, (kb + 1) * share1), pnb, pdst);
          };
          block<Acc>(ap + b * KB1 * 32 * ks1, ks1, 16 * ks1, 32 * ks1, B1, nb, KB1, ks1, c[j & 1], nullptr, 0, 1,
                     next, next ? std::min(lines1, (slice1 - done) / 64 / KB1) : 0, hidden);
          const int64_t col = nb * 32 * E;  // the block's first byte along the hidden's row
          pc = c[j & 1]; pnb = nb; pdst = hp + (b * KB2 + col / ks2) * 32 * ks2 + col % ks2;
        }
      store_hidden(pc, 0, 32, pnb, pdst);
      if (ks1 != ks2) tile_config(ks2);
      pc = nullptr;
      const int64_t slice2 = KB2 * 32 * ks2, lines2 = (slice2 / 64 + n * KB2 - 1) / (n * KB2);
      const int64_t share2 = (32 + KB2 - 1) / KB2;
      for (int64_t nb = 0; nb < N / 32; ++nb)
        for (int64_t b = 0; b < n; ++b, ++j) {
          const int64_t done = b * KB2 * lines2 * 64;
          const uint8_t* next = nb + 1 < N / 32 && done < slice2 ? B2 + (nb + 1) * slice2 + done : nullptr;
          auto out = [&](int64_t kb) {
            if (pc) store_out(pc, std::min<int64_t>(32, kb * share2), std::min<int64_t>(32, (kb + 1) * share2), pmb, pnb, prows);
          };
          block<Acc>(hp + b * KB2 * 32 * ks2, ks2, 16 * ks2, 32 * ks2, B2, nb, KB2, ks2, c[j & 1], nullptr, 0, 1,
                     next, next ? std::min(lines2, (slice2 - done) / 64 / KB2) : 0, out);
          pc = c[j & 1]; pmb = mb0 + b; pnb = nb; prows = std::min<int64_t>(32, M - 32 * pmb);
        }
      store_out(pc, 0, 32, pmb, pnb, prows);
    }
    _tile_release();
  }
}

// bf16: out = residual + W2 . GELU(W1 . a + b1) + b2, with the roundings of bgemm_gelu then bgemm_residual (the hidden
// rounded to bf16 once; equal outputs). ks1: pwconv1's K step; pwconv2's is 64 bytes (4C a multiple of 32).
torch::Tensor bmlp(const torch::Tensor& a, const torch::Tensor& bp1, const torch::Tensor& bias1,
                   const torch::Tensor& bp2, const torch::Tensor& bias2, const torch::Tensor& residual, int64_t ks1) {
  check_bf16_gemm(bp1, bias1);
  check_bf16_gemm(bp2, bias2);
  TORCH_CHECK(a.scalar_type() == torch::kBFloat16 && a.dim() == 2 && a.is_contiguous(), "AMX bf16 MLP: bf16 [M, K] input");
  const int64_t M = a.size(0), H = bp1.size(0) * 16, N = bp2.size(0) * 16, lda = a.size(1) * 2;
  TORCH_CHECK(H % 32 == 0 && N % 32 == 0 && ks1 % 4 == 0 && ks1 <= 64 && lda % ks1 == 0 && bp1.size(1) == lda / ks1 &&
              bp2.size(1) == 2 * H / 64, "AMX bf16 MLP: shapes");
  check_residual(residual, M, N);
  if ((M + 31) / 32 < 2 * omp_get_max_threads())  // too few rows to share out: the two GEMMs split the weights instead
    return bgemm_residual(bgemm_gelu(a, bp1, bias1, ks1), bp2, bias2, residual, 64);
  auto out = torch::empty({M, N}, torch::kBFloat16);
  const float* BI1 = bias1.data_ptr<float>(); const float* BI2 = bias2.data_ptr<float>();
  const uint16_t* R = (const uint16_t*)residual.data_ptr();
  uint16_t* O = (uint16_t*)out.data_ptr();
  mlp_pass<float, 2>(
      (const uint8_t*)a.data_ptr(), M, lda, ks1, (const uint8_t*)bp1.data_ptr(), H, (const uint8_t*)bp2.data_ptr(), N,
      [=](float (*c)[16][16], int64_t r0, int64_t r1, int64_t nb, uint8_t* dst) {
        store_gelu(c, r0, r1, (uint16_t*)dst, 32, BI1 + nb * 32, load_phi());
      },
      [=](float (*c)[16][16], int64_t r0, int64_t r1, int64_t mb, int64_t nb, int64_t rows) {
        const int64_t at = mb * 32 * N + nb * 32;
        store_residual(c, r0, std::min(r1, rows), O + at, R + at, N, BI2 + nb * 32);
      });
  return out;
}

// int8: out = W2 . table(W1 . a) dequantised (+ residual), as qgemm_table then qgemm_dequant compute it (equal outputs),
// the uint8 hidden kept in cache; a uint8 [M, C], pwconv2's K step 64 bytes.
torch::Tensor qmlp(const torch::Tensor& a, const torch::Tensor& bp1, const torch::Tensor& scale1,
                   const torch::Tensor& shift1, const torch::Tensor& table, int64_t ks1, const torch::Tensor& bp2,
                   const torch::Tensor& scale2, const torch::Tensor& shift2, const torch::Tensor& residual, int64_t ks2,
                   bool bf16) {
  TORCH_CHECK(a.scalar_type() == torch::kUInt8 && a.dim() == 2 && a.is_contiguous(), "AMX int8 MLP: uint8 [M, K] input");
  const int64_t M = a.size(0), lda = a.size(1), H = bp1.size(0) * 16, N = bp2.size(0) * 16;
  TORCH_CHECK(bp1.element_size() == 1 && bp2.element_size() == 1 && H % 64 == 0 && N % 32 == 0 && ks2 == 64 &&
              ks1 % 4 == 0 && ks1 <= 64 && lda % ks1 == 0 && bp1.size(1) == lda / ks1 && bp2.size(1) == H / 64 &&
              table.numel() == 256, "AMX int8 MLP: shapes");
  const bool res_bf16 = check_int8_residual(residual, M, N), out_bf16 = bf16 && res_bf16;
  if ((M + 31) / 32 < 2 * omp_get_max_threads())  // too few rows to share out: the two GEMMs split the weights instead
    return qgemm_dequant(qgemm_table(a, bp1, scale1, shift1, table, ks1), bp2, scale2, shift2, ks2, bf16, &residual);
  auto out = torch::empty({M, N}, out_bf16 ? torch::kBFloat16 : torch::kFloat32);
  const float* S1 = scale1.data_ptr<float>(); const float* H1 = shift1.data_ptr<float>();
  const float* S2 = scale2.data_ptr<float>(); const float* H2 = shift2.data_ptr<float>();
  const Table t = load_table(table.data_ptr<uint8_t>());
  char* O = (char*)out.data_ptr(); const char* R = (const char*)residual.data_ptr();
  mlp_pass<int32_t, 1>(
      a.data_ptr<uint8_t>(), M, lda, ks1, (const uint8_t*)bp1.data_ptr(), H, (const uint8_t*)bp2.data_ptr(), N,
      [=](int32_t (*c)[16][16], int64_t r0, int64_t r1, int64_t nb, uint8_t* dst) {
        store_table(c, r0, r1, dst, 64, S1 + nb * 32, H1 + nb * 32, t);
      },
      [=](int32_t (*c)[16][16], int64_t r0, int64_t r1, int64_t mb, int64_t nb, int64_t rows) {
        store_dequant(c, r0, std::min(r1, rows), O, R, mb * 32 * N + nb * 32, N, S2 + nb * 32, H2 + nb * 32, out_bf16,
                      res_bf16);
      });
  return out;
}

// ---- fp32 (AVX-512 FMA): a block's pwconv1 + exact GELU + pwconv2 + bias + residual in one pass ----
// Weights `pack_fp32` [ceil(N/32)][K][32] (zero-padded columns), biases padded to match. Each thread takes an equal
// share of the rows, in equal tiles of up to 112 rows (`fmlp_tile_rows`): pwconv1 + bias into the tile's 4C hidden
// (kept in the core's L2), GELU over each 32-column panel of it while in L1, then pwconv2 + bias + residual to the
// output. One micro-kernel: MR rows x 32 columns of fp32 accumulators (MR <= 14: 28 registers), K in steps of one,
// each step two weight vectors and MR broadcasts of A; partial sums added every 256 steps of K (rounding error of
// long sums); the first row group of each panel prefetches the next panel's weights into L2.
alignas(64) static float g_phi5[192];  // `phi_quintics`, set once when the extension is loaded

void set_phi_quintics(torch::Tensor coef) {
  TORCH_CHECK(coef.scalar_type() == torch::kFloat && coef.is_contiguous() && coef.numel() == 192, "GELU quintics");
  std::memcpy(g_phi5, coef.data_ptr<float>(), sizeof(g_phi5));
}

// x * Phi(x), Phi a quintic in each of 32 intervals of [-6, 6), coefficients g_phi5[d * 32 + interval] of f^d, f the
// offset in the interval; 0 below -6 (|GELU| < 6e-9 there), the last interval's end above (Phi(6) = 1 - 1e-9).
struct PhiQuintic { __m512 c[6][2]; };

static inline PhiQuintic load_phi5() {
  PhiQuintic k;
  for (int d = 0; d < 6; ++d) { k.c[d][0] = _mm512_load_ps(g_phi5 + 32 * d); k.c[d][1] = _mm512_load_ps(g_phi5 + 32 * d + 16); }
  return k;
}

static inline __m512 gelu_fp32(__m512 x, const PhiQuintic& k) {
  __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(32.0f / 12.0f), _mm512_set1_ps(16.0f));
  t = _mm512_min_ps(_mm512_max_ps(t, _mm512_setzero_ps()), _mm512_set1_ps(31.999998f));
  const __m512i i = _mm512_cvttps_epi32(t);
  const __m512 f = _mm512_sub_ps(t, _mm512_cvtepi32_ps(i));
  __m512 p = _mm512_permutex2var_ps(k.c[5][0], i, k.c[5][1]);
  for (int d = 4; d >= 0; --d) p = _mm512_fmadd_ps(p, f, _mm512_permutex2var_ps(k.c[d][0], i, k.c[d][1]));
  return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-6.0f), _CMP_NLT_UQ), x, p);  // 0 below -6
}

constexpr int FMR = 14;       // rows per micro-kernel
constexpr int64_t FKB = 256;  // steps of K between partial sums

static inline float* aligned64(float* p) {  // the first 64-byte boundary at or after p (16 floats of room needed)
  return (float*)(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

// acc[r][0..1] = bias + sum_k A[r * lda + k] * B[k][0..31] for r < MR; then epi(acc).
template <int MR, bool PF, class Epi>
static inline __attribute__((always_inline)) void fkern(const float* A, int64_t lda, const float* B, int64_t K,
                                                        const float* bias, const float* pf, Epi&& epi) {
  __m512 acc[MR][2], sum[MR][2];
  const __m512 b0 = _mm512_loadu_ps(bias), b1 = _mm512_loadu_ps(bias + 16);
  for (int64_t k0 = 0; k0 < K; k0 += FKB) {
    for (int r = 0; r < MR; ++r) {
      acc[r][0] = k0 ? _mm512_setzero_ps() : b0;
      acc[r][1] = k0 ? _mm512_setzero_ps() : b1;
    }
    const int64_t k1 = std::min(K, k0 + FKB);
    for (int64_t k = k0; k < k1; ++k) {
      const __m512 v0 = _mm512_loadu_ps(B + k * 32), v1 = _mm512_loadu_ps(B + k * 32 + 16);
      if (PF) {  // the next panel's weights on their way to L2 while this one computes
        _mm_prefetch((const char*)(pf + k * 32), _MM_HINT_T1);
        _mm_prefetch((const char*)(pf + k * 32 + 16), _MM_HINT_T1);
      }
      #pragma GCC unroll 14
      for (int r = 0; r < MR; ++r) {
        const __m512 a = _mm512_set1_ps(A[r * lda + k]);
        acc[r][0] = _mm512_fmadd_ps(a, v0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(a, v1, acc[r][1]);
      }
    }
    for (int r = 0; r < MR; ++r) {
      sum[r][0] = k0 ? _mm512_add_ps(sum[r][0], acc[r][0]) : acc[r][0];
      sum[r][1] = k0 ? _mm512_add_ps(sum[r][1], acc[r][1]) : acc[r][1];
    }
  }
  epi(sum);
}

// Rows [0, rows) of one 32-column panel: the micro-kernel over groups of FMR rows, the last group shorter.
// epi(acc, first row, MR) stores.
template <class Epi>
static void fpanel(const float* A, int64_t lda, const float* B, int64_t K, const float* bias, int64_t rows,
                   const float* next, Epi&& epi) {
  int64_t r = 0;
  if (next && rows >= FMR) {  // the first row group prefetches the next panel's weights (K x 32), if any
    fkern<FMR, true>(A, lda, B, K, bias, next, [&](auto& acc) { epi(acc, 0, FMR); });
    r = FMR;
  }
  for (; r + FMR <= rows; r += FMR)
    fkern<FMR, false>(A + r * lda, lda, B, K, bias, nullptr, [&](auto& acc) { epi(acc, r, FMR); });
  const int64_t left = rows - r;
  const float* a = A + r * lda;
  switch (left) {
#define FMLP_TAIL(n) case n: fkern<n, false>(a, lda, B, K, bias, nullptr, [&](auto& acc) { epi(acc, r, n); }); break;
    FMLP_TAIL(1) FMLP_TAIL(2) FMLP_TAIL(3) FMLP_TAIL(4) FMLP_TAIL(5) FMLP_TAIL(6) FMLP_TAIL(7)
    FMLP_TAIL(8) FMLP_TAIL(9) FMLP_TAIL(10) FMLP_TAIL(11) FMLP_TAIL(12) FMLP_TAIL(13)
#undef FMLP_TAIL
    default: break;
  }
}

// pwconv1 + bias + GELU of `rows` rows of x (ldx) for panel p, into h (row stride ldh, the panel's first column).
static inline void fmlp_first(const float* x, int64_t ldx, int64_t C, const float* w1, const float* b1, int64_t p,
                              int64_t rows, float* h, int64_t ldh, const PhiQuintic& phi, bool last) {
  const float* w = w1 + p * C * 32;
  fpanel(x, ldx, w, C, b1 + p * 32, rows, last ? nullptr : w + C * 32, [&](auto& acc, int64_t r, int mr) {
    for (int i = 0; i < mr; ++i) {
      float* o = h + (r + i) * ldh;
      _mm512_storeu_ps(o, acc[i][0]);
      _mm512_storeu_ps(o + 16, acc[i][1]);
    }
  });
  for (int64_t i = 0; i < rows; ++i) {  // GELU over the panel while it is in L1
    float* o = h + i * ldh;
    _mm512_storeu_ps(o, gelu_fp32(_mm512_loadu_ps(o), phi));
    _mm512_storeu_ps(o + 16, gelu_fp32(_mm512_loadu_ps(o + 16), phi));
  }
}

// pwconv2 + bias + residual of `rows` hidden rows (ldh, H4 of them used) for panel p: out, residual [rows][N].
static inline void fmlp_second(const float* h, int64_t ldh, int64_t H4, const float* w2, const float* b2, int64_t p,
                               int64_t rows, const float* res, float* out, int64_t N, bool last) {
  const int64_t n0 = p * 32, valid = std::min<int64_t>(32, N - n0);
  const __mmask16 m0 = valid >= 16 ? 0xFFFF : (__mmask16)((1u << valid) - 1);
  const __mmask16 m1 = valid >= 32 ? 0xFFFF : valid <= 16 ? 0 : (__mmask16)((1u << (valid - 16)) - 1);
  const float* w = w2 + p * H4 * 32;
  fpanel(h, ldh, w, H4, b2 + n0, rows, last ? nullptr : w + H4 * 32, [&](auto& acc, int64_t r, int mr) {
    for (int i = 0; i < mr; ++i) {
      const int64_t at = (r + i) * N + n0;
      _mm512_mask_storeu_ps(out + at, m0, _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(m0, res + at)));
      _mm512_mask_storeu_ps(out + at + 16, m1, _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(m1, res + at + 16)));
    }
  });
}

// Rows per tile: the hidden tile (rows x padded 4C fp32) within about 700 KiB of the core's L2, a multiple of FMR,
// at most 112.
static int64_t fmlp_tile_rows(int64_t H4p) {
  return std::max<int64_t>(FMR, std::min<int64_t>(112, (700 * 1024 / (H4p * 4)) / FMR * FMR));
}

torch::Tensor fmlp(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                   const torch::Tensor& b2, const torch::Tensor& residual) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.dim() == 2 && x.is_contiguous(), "fp32 MLP: fp32 [M, C] input");
  const int64_t M = x.size(0), C = x.size(1), H4p = w1.size(0) * 32, H4 = w2.size(1), N = residual.size(1);
  TORCH_CHECK(w1.scalar_type() == torch::kFloat && w2.scalar_type() == torch::kFloat && w1.is_contiguous() &&
              w2.is_contiguous() && w1.dim() == 3 && w2.dim() == 3 && w1.size(1) == C && w1.size(2) == 32 &&
              w2.size(2) == 32 && H4 <= H4p && H4 > H4p - 32 && w2.size(0) == (N + 31) / 32, "fp32 MLP: packed weights");
  TORCH_CHECK(b1.scalar_type() == torch::kFloat && b2.scalar_type() == torch::kFloat && b1.is_contiguous() &&
              b2.is_contiguous() && b1.numel() == H4p && b2.numel() == w2.size(0) * 32, "fp32 MLP: padded fp32 biases");
  TORCH_CHECK(residual.scalar_type() == torch::kFloat && residual.dim() == 2 && residual.is_contiguous() &&
              residual.size(0) == M, "fp32 MLP: fp32 [M, N] residual");
  auto out = torch::empty({M, N}, x.options());
  if (M == 0) return out;
  const float *X = x.data_ptr<float>(), *W1 = w1.data_ptr<float>(), *W2 = w2.data_ptr<float>();
  const float *B1 = b1.data_ptr<float>(), *B2 = b2.data_ptr<float>(), *R = residual.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const PhiQuintic phi = load_phi5();
  const int64_t threads = omp_get_max_threads(), P1 = H4p / 32, P2 = w2.size(0);
  if ((M + FMR - 1) / FMR < 2 * threads) {  // too few rows to share out: each GEMM splits its weight's panels instead
    std::vector<float> hidden(M * H4p + 16);
    float* Hd = aligned64(hidden.data());
    #pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < P1; ++p) fmlp_first(X, C, C, W1, B1, p, M, Hd + p * 32, H4p, phi, true);
    #pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < P2; ++p) fmlp_second(Hd, H4p, H4, W2, B2, p, M, R, O, N, true);
    return out;
  }
  const int64_t mt = fmlp_tile_rows(H4p);
  #pragma omp parallel
  {
    static thread_local std::vector<float> hidden;
    if ((int64_t)hidden.size() < mt * H4p + 16) hidden.resize(mt * H4p + 16);
    float* Hd = aligned64(hidden.data());
    const int64_t T = omp_get_num_threads(), share = (M + T - 1) / T;
    const int64_t begin = std::min(M, omp_get_thread_num() * share), end = std::min(M, begin + share);
    const int64_t tiles = (end - begin + mt - 1) / mt, each = tiles ? (end - begin + tiles - 1) / tiles : 1;
    for (int64_t r0 = begin; r0 < end; r0 += each) {  // equal tiles: a short one would stream the weights for little
      const int64_t rows = std::min(each, end - r0);
      for (int64_t p = 0; p < P1; ++p)
        fmlp_first(X + r0 * C, C, C, W1, B1, p, rows, Hd + p * 32, H4p, phi, p + 1 == P1);
      for (int64_t p = 0; p < P2; ++p)
        fmlp_second(Hd, H4p, H4, W2, B2, p, rows, R + r0 * N, O + r0 * N, N, p + 1 == P2);
    }
  }
  return out;
}

// ---- the ops, registered with the dispatcher: torch.compile's C++ wrapper calls them without Python in between ----
static torch::Tensor rows_of(const torch::Tensor& x) { return x.reshape({-1, x.size(-1)}).contiguous(); }

static torch::Tensor with_lead(const torch::Tensor& out, const torch::Tensor& x) {
  auto sizes = x.sizes().vec();
  sizes.back() = out.size(1);
  return out.view(sizes);
}

torch::Tensor linear_gelu_bf16_op(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& bias,
                                  int64_t ks) {
  return with_lead(bgemm_gelu(rows_of(x), packed, bias, ks), x);
}

torch::Tensor linear_residual_bf16_op(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& bias,
                                      const torch::Tensor& residual, int64_t ks) {
  return with_lead(bgemm_residual(rows_of(x), packed, bias, rows_of(residual), ks), x);
}

torch::Tensor mlp_bf16_op(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1,
                          const torch::Tensor& w2, const torch::Tensor& b2, const torch::Tensor& residual, int64_t ks) {
  return with_lead(bmlp(rows_of(x), w1, b1, w2, b2, rows_of(residual), ks), residual);
}

torch::Tensor qmlp_op(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& scale1,
                      const torch::Tensor& shift1, const torch::Tensor& table, int64_t ks1, const torch::Tensor& w2,
                      const torch::Tensor& scale2, const torch::Tensor& shift2, const torch::Tensor& residual, int64_t ks2,
                      bool bf16) {
  return with_lead(qmlp(rows_of(x), w1, scale1, shift1, table, ks1, w2, scale2, shift2, rows_of(residual), ks2, bf16),
                   residual);
}

torch::Tensor mlp_fp32_op(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1,
                          const torch::Tensor& w2, const torch::Tensor& b2, const torch::Tensor& residual) {
  return with_lead(fmlp(rows_of(x), w1, b1, w2, b2, rows_of(residual)), residual);
}

torch::Tensor dwconv_ln_op(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                           const torch::Tensor& g, const torch::Tensor& beta, double eps) {
  return dwconv_ln(x.permute({0, 2, 3, 1}).contiguous(), weight, bias, g, beta, eps);
}

torch::Tensor qlinear_gelu_table_op(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                                    const torch::Tensor& shift, const torch::Tensor& table, int64_t ks) {
  return with_lead(qgemm_table(rows_of(x), packed, scale, shift, table, ks), x);
}

torch::Tensor qlinear_dequant_op(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                                 const torch::Tensor& shift, int64_t ks, bool bf16) {
  return with_lead(qgemm_dequant(rows_of(x), packed, scale, shift, ks, bf16), x);
}

torch::Tensor qlinear_dequant_residual_op(const torch::Tensor& x, const torch::Tensor& packed,
                                          const torch::Tensor& scale, const torch::Tensor& shift,
                                          const torch::Tensor& residual, int64_t ks, bool bf16) {
  const torch::Tensor r = rows_of(residual);
  return with_lead(qgemm_dequant(rows_of(x), packed, scale, shift, ks, bf16, &r), x);
}

torch::Tensor dwconv_ln_quant_op(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                 const torch::Tensor& g, const torch::Tensor& beta, double eps, double inv_scale,
                                 int64_t zp) {
  auto xs = x.permute({0, 2, 3, 1});
  if (xs.scalar_type() != torch::kFloat && xs.scalar_type() != torch::kBFloat16) xs = xs.to(torch::kFloat);
  return dwconv_ln_quant(xs.contiguous(), weight, bias, g, beta, eps, inv_scale, zp);
}

TORCH_LIBRARY_FRAGMENT(convnext, m) {
  m.def("dwconv_ln(Tensor x, Tensor weight, Tensor bias, Tensor norm_weight, Tensor norm_bias, float eps) -> Tensor");
  m.def("linear_gelu_bf16(Tensor x, Tensor packed, Tensor bias, int ks) -> Tensor");
  m.def("linear_residual_bf16(Tensor x, Tensor packed, Tensor bias, Tensor residual, int ks) -> Tensor");
  m.def("mlp_bf16(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor residual, int ks) -> Tensor");
  m.def("mlp_fp32(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor residual) -> Tensor");
  m.def("qmlp(Tensor x, Tensor w1, Tensor scale1, Tensor shift1, Tensor table, int ks1, Tensor w2, Tensor scale2, "
        "Tensor shift2, Tensor residual, int ks2, bool bf16) -> Tensor");
  m.def("qlinear_gelu_table(Tensor x, Tensor packed, Tensor scale, Tensor shift, Tensor table, int ks) -> Tensor");
  m.def("qlinear_dequant(Tensor x, Tensor packed, Tensor scale, Tensor shift, int ks, bool bf16) -> Tensor");
  m.def("qlinear_dequant_residual(Tensor x, Tensor packed, Tensor scale, Tensor shift, Tensor residual, int ks, "
        "bool bf16) -> Tensor");
  m.def("dwconv_ln_quant(Tensor x, Tensor weight, Tensor bias, Tensor norm_weight, Tensor norm_bias, float eps, "
        "float inv_scale, int zp) -> Tensor");
}

TORCH_LIBRARY_IMPL(convnext, CPU, m) {
  m.impl("dwconv_ln", &dwconv_ln_op);
  m.impl("linear_gelu_bf16", &linear_gelu_bf16_op);
  m.impl("linear_residual_bf16", &linear_residual_bf16_op);
  m.impl("mlp_bf16", &mlp_bf16_op);
  m.impl("mlp_fp32", &mlp_fp32_op);
  m.impl("qmlp", &qmlp_op);
  m.impl("qlinear_gelu_table", &qlinear_gelu_table_op);
  m.impl("qlinear_dequant", &qlinear_dequant_op);
  m.impl("qlinear_dequant_residual", &qlinear_dequant_residual_op);
  m.impl("dwconv_ln_quant", &dwconv_ln_quant_op);
}
"""


@functools.cache
def _extension():
    """The compiled kernel, or None where it cannot be built or run here."""
    from .features import cpu_features

    if not cpu_features().amx_int8 or not cpu_features().amx_bf16 or not cpu_features().avx512_vbmi:
        return None
    from .cpu import quiet_library_notes

    name = "convnext_amx_v57"
    try:
        with quiet_library_notes():  # the CUDA_HOME note of a CUDA build without a GPU
            from torch.utils.cpp_extension import load_inline

            if not _built(name):
                print("convnext: compiling our CPU kernels (AMX / AVX512), once for this machine: about 30 s ...",
                      file=sys.stderr, flush=True)
            ext = load_inline(name, cpp_sources=_SRC,
                              functions=["set_phi_cubics", "set_phi_quintics", "request_amx"],
                              extra_cflags=["-O3", "-march=native", "-mamx-tile", "-mamx-int8", "-mamx-bf16",
                                            "-fopenmp"],
                              extra_ldflags=["-fopenmp"])
        if not ext.request_amx():
            return None
        ext.set_phi_cubics(phi_cubics())
        ext.set_phi_quintics(phi_quintics())
        _register_fakes()
        return ext
    except Exception:  # noqa: BLE001 - no compiler, no AMX support in it: oneDNN's post-op stays
        return None


def _built(name: str) -> bool:
    """Whether torch's extension cache already holds `name` (so loading it compiles nothing); True when unsure."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # private: a missing one only skips the note

        return (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").exists()
    except Exception:  # noqa: BLE001
        return True


def available() -> bool:
    """Whether this CPU (AMX-INT8, AVX512-VBMI) and compiler run the fused kernel."""
    return _extension() is not None


def _step(k: int) -> int | None:
    """K bytes per AMX step: the largest divisor of K that is a multiple of 4 and at most 64."""
    return next((s for s in range(64, 3, -4) if k % s == 0), None)


def pack_weight(w: torch.Tensor, ks: int) -> torch.Tensor:
    """int8 or bf16 [N, K] (N a multiple of 32) -> AMX B tiles [N/32][K bytes/ks][2][ks/4][64 bytes], returned with
    shape [N/16, K bytes/ks, ks/4, 64 bytes]: for each 32-column block and K step, its two 16-column tiles side by
    side, so that a block's whole weight slice (and the next block's after it) is one sequential read. Row r of a
    tile is the r-th group of 4 bytes along K (4 int8 or 2 bf16 values) for 16 columns. `ks`: bytes of K per step
    (`_step`)."""
    n, k = w.shape
    size = w.element_size()
    g, step = 4 // size, ks // size  # values per group, values of K per step
    return w.view(n // 32, 2, 16, k // step, step // g, g).permute(0, 3, 1, 4, 2, 5).contiguous().view(
        n // 16, k // step, step // g, 16 * g)


def gelu_table(pre: tuple[float, float], out_scale: float, out_zp: int) -> tuple[torch.Tensor, float, int]:
    """(table, 1 / pre-GELU step, pre-GELU zero point): the pre-GELU range's uint8 grid -> GELU on the output's.
    The grid index of a pre-GELU value v is clamp(round(v / step + zero point), 0, 255)."""
    lo, hi = min(pre[0], 0.0), max(pre[1], 0.0)
    step = max(hi - lo, 1e-8) / 255
    zp = int(round(-lo / step))
    grid = (torch.arange(256, dtype=torch.float64) - zp) * step
    table = torch.clamp(torch.round(F.gelu(grid) / out_scale) + out_zp, 0, 255).to(torch.uint8)
    return table, 1.0 / step, zp


def qlinear_gelu_table(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                       table: torch.Tensor, ks: int) -> torch.Tensor:
    """uint8 (..., K) -> uint8 (..., N): the fused pwconv1 + GELU. Output n of a row with int32 accumulator
    acc is table[clamp(round(scale[n] * acc + shift[n]), 0, 255)] (`grid_affine` gives scale / shift). The op
    `convnext::qlinear_gelu_table` (C++)."""
    return _ops().qlinear_gelu_table(x, packed, scale, shift, table, ks)


def qlinear_dequant(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, ks: int,
                    bf16: bool) -> torch.Tensor:
    """uint8 (..., K) -> (..., N) in bf16 or fp32: scale[n] * acc + shift[n], an int8 Linear read as floats. The
    op `convnext::qlinear_dequant` (C++)."""
    return _ops().qlinear_dequant(x, packed, scale, shift, ks, bf16)


def qlinear_dequant_residual(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                             residual: torch.Tensor, ks: int, bf16: bool) -> torch.Tensor:
    """`qlinear_dequant(...) + residual` (fp32 or bf16 (..., N)) in one pass, rounded once; bf16 out only where
    `bf16` and the residual is bf16 (torch's type promotion). The op `convnext::qlinear_dequant_residual` (C++)."""
    return _ops().qlinear_dequant_residual(x, packed, scale, shift, residual, ks, bf16)


def pack_depthwise(w: torch.Tensor) -> torch.Tensor:
    """Depthwise 7 x 7 weight (C, 1, 7, 7) -> fp32 [C/16][49][16]: 16 channels of one tap per vector."""
    c = w.shape[0]
    return w.float().reshape(c // 16, 16, 49).transpose(1, 2).contiguous()


def dwconv_ln_quant(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, norm_weight: torch.Tensor,
                    norm_bias: torch.Tensor, eps: float, inv_scale: float, zp: int) -> torch.Tensor:
    """(B, C, H, W) fp32 / bf16 -> uint8 (B, H, W, C): a block's depthwise 7 x 7 convolution (padding 3,
    `pack_depthwise` weight), LayerNorm over channels, and clamp(round(y * inv_scale) + zp, 0, 255), in one
    pass with fp32 arithmetic (the convolution output is not rounded to bf16 in between). The op
    `convnext::dwconv_ln_quant` (C++)."""
    return _ops().dwconv_ln_quant(x, weight, bias, norm_weight, norm_bias, eps, inv_scale, zp)


def _phi_pieces(degree: int, lo: float, hi: float) -> torch.Tensor:
    """fp32 [degree + 1][32]: the standard normal CDF Phi on [lo, hi) as a polynomial of `degree` in each of 32 equal
    intervals, coefficient [d][i] of f^d, f in [0, 1) the offset within interval i (least squares on 64 Chebyshev
    points per interval, in float64)."""
    f = (1 - torch.cos(torch.linspace(0, math.pi, 64, dtype=torch.float64))) / 2
    powers = torch.stack([f ** d for d in range(degree + 1)], 1)  # (64, degree + 1)
    coef = torch.empty(degree + 1, 32, dtype=torch.float64)
    for i in range(32):
        x = lo + (i + f) * (hi - lo) / 32
        phi = 0.5 * (1 + torch.special.erf(x / math.sqrt(2)))
        coef[:, i] = torch.linalg.lstsq(powers, phi[:, None]).solution[:, 0]
    return coef.float().contiguous()


@functools.cache
def phi_cubics() -> torch.Tensor:
    """fp32 [4][32]: Phi on [-4.5, 4.5) as a cubic in each of 32 equal intervals (`_phi_pieces`). The bf16 GEMM's
    GELU is x * Phi(x) with them: |error| <= 1.2e-6 |x|."""
    return _phi_pieces(3, -4.5, 4.5)


@functools.cache
def phi_quintics() -> torch.Tensor:
    """fp32 [6][32]: Phi on [-6, 6) as a quintic in each of 32 equal intervals (`_phi_pieces`). The fp32 MLP's GELU
    is x * Phi(x) with them (0 below -6, where |GELU| < 6e-9; the offset clamped to the last interval above 6):
    |error| <= 1e-7 |x| before fp32 rounding, the order of oneDNN's erf approximation."""
    return _phi_pieces(5, -6.0, 6.0)


def pack_fp32(weight: torch.Tensor, bias: torch.Tensor | None, width: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear's (N, K) weight and (N,) bias for `mlp_fp32`: fp32 [ceil(N/width)][K][width] (`width` output
    channels of one K step side by side, zero-padded to a multiple of it) and the bias zero-padded to match."""
    n, k = weight.shape
    pad = -n % width
    w = F.pad(weight.detach().float(), (0, 0, 0, pad))
    b = F.pad(bias.detach().float(), (0, pad)) if bias is not None else torch.zeros(n + pad)
    return w.view((n + pad) // width, width, k).transpose(1, 2).contiguous(), b.contiguous()


def _gemm_out(x: torch.Tensor, packed: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The (..., N) output of one of our GEMMs on x (..., K) with a `pack_weight` weight (N = 16 x its rows)."""
    return x.new_empty((*x.shape[:-1], packed.shape[0] * 16), dtype=dtype)


def _register_fakes() -> None:
    """Shapes of our ops (registered by the extension, in C++) for torch.compile's and export's fake tensors."""
    @torch.library.register_fake("convnext::dwconv_ln")
    def _(x, weight, bias, norm_weight, norm_bias, eps):
        b, c, h, w = x.shape
        return x.new_empty((b, h, w, c))

    @torch.library.register_fake("convnext::linear_gelu_bf16")
    def _(x, packed, bias, ks):
        return _gemm_out(x, packed)

    @torch.library.register_fake("convnext::linear_residual_bf16")
    def _(x, packed, bias, residual, ks):
        return _gemm_out(x, packed)

    @torch.library.register_fake("convnext::mlp_bf16")
    def _(x, w1, b1, w2, b2, residual, ks):
        return residual.new_empty(residual.shape)  # contiguous, as the op returns it

    @torch.library.register_fake("convnext::mlp_fp32")
    def _(x, w1, b1, w2, b2, residual):
        return residual.new_empty(residual.shape)

    @torch.library.register_fake("convnext::qmlp")
    def _(x, w1, scale1, shift1, table, ks1, w2, scale2, shift2, residual, ks2, bf16):
        both = bf16 and residual.dtype == torch.bfloat16
        return residual.new_empty(residual.shape, dtype=torch.bfloat16 if both else torch.float32)

    @torch.library.register_fake("convnext::qlinear_gelu_table")
    def _(x, packed, scale, shift, table, ks):
        return _gemm_out(x, packed)

    @torch.library.register_fake("convnext::qlinear_dequant")
    def _(x, packed, scale, shift, ks, bf16):
        return _gemm_out(x, packed, torch.bfloat16 if bf16 else torch.float32)

    @torch.library.register_fake("convnext::qlinear_dequant_residual")
    def _(x, packed, scale, shift, residual, ks, bf16):
        both = bf16 and residual.dtype == torch.bfloat16  # torch's promotion of the GEMM's output and the residual
        return _gemm_out(x, packed, torch.bfloat16 if both else torch.float32)

    @torch.library.register_fake("convnext::dwconv_ln_quant")
    def _(x, weight, bias, norm_weight, norm_bias, eps, inv_scale, zp):
        b, c, h, w = x.shape
        return x.new_empty((b, h, w, c), dtype=torch.uint8)


def _ops():
    if _extension() is None:
        raise RuntimeError("convnext's AMX / AVX512 CPU kernels do not run on this machine (amx_gelu.available())")
    return torch.ops.convnext


def dwconv_ln(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, norm_weight: torch.Tensor,
              norm_bias: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, C, H, W) fp32 / bf16 -> (B, H, W, C) in x's dtype: a block's depthwise 7 x 7 convolution (padding 3,
    `pack_depthwise` weight) and LayerNorm over channels in one pass, fp32 arithmetic (`dwconv_ln_quant` without
    the rounding onto a uint8 grid). C a multiple of 16; the parameters fp32 (others are converted per call).
    The op `convnext::dwconv_ln`, registered in C++ when the kernels are loaded."""
    return _ops().dwconv_ln(x, weight, bias, norm_weight, norm_bias, eps)


def linear_gelu_bf16(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor, ks: int) -> torch.Tensor:
    """bf16 (..., K) -> bf16 (..., N): exact-GELU(x W^T + b) in one AMX GEMM of ours, fp32 accumulation, rounded
    to bf16 once. `packed` = `pack_weight(W bf16, ks)`, `bias` fp32 (N,). GELU as `phi_cubics` compute it. The op
    `convnext::linear_gelu_bf16`, registered in C++ when the kernels are loaded."""
    return _ops().linear_gelu_bf16(x, packed, bias, ks)


def linear_residual_bf16(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor,
                         ks: int) -> torch.Tensor:
    """bf16 (..., K) -> bf16 (..., N): x W^T + b + residual in one AMX GEMM of ours, fp32 arithmetic, rounded to
    bf16 once. `residual` bf16 (..., N). The op `convnext::linear_residual_bf16` (C++)."""
    return _ops().linear_residual_bf16(x, packed, bias, residual, ks)


def mlp_bf16(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
             residual: torch.Tensor, ks: int) -> torch.Tensor:
    """bf16 (..., C) -> bf16 (..., N): residual + GELU(x W1^T + b1) W2^T + b2, i.e. `linear_gelu_bf16` then
    `linear_residual_bf16` with the same roundings (equal outputs), in one pass that keeps the (..., 4C) hidden in
    each thread's cache. Both weights `pack_weight`-ed with the same `ks`; `residual` bf16 (..., N). The op
    `convnext::mlp_bf16` (C++)."""
    return _ops().mlp_bf16(x, w1, b1, w2, b2, residual, ks)


def mlp_fp32(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
             residual: torch.Tensor) -> torch.Tensor:
    """fp32 (..., C) -> fp32 (..., N): residual + GELU(x W1^T + b1) W2^T + b2 in one pass of AVX-512 FMAs, the
    (..., 4C) hidden kept in each thread's cache; exact fp32 arithmetic up to the summation order and GELU's
    `phi_quintics` (within 1e-7 |x| of erf GELU). (w1, b1), (w2, b2): `pack_fp32`; `residual` fp32 (..., N). The
    op `convnext::mlp_fp32` (C++)."""
    return _ops().mlp_fp32(x, w1, b1, w2, b2, residual)


def grid_affine(in_scale: float, in_zp: int, w: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                inv: float, zp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel (scale, shift), fp32, with scale * acc + shift = v / step + zero point, where
    v = in_scale * w_scale * (acc - in_zp * sum_k w) + bias is the dequantised pre-GELU value of the
    int32 accumulator acc = sum_k x_uint8 * w_int8, and (inv = 1 / step, zp) its uint8 grid."""
    s = in_scale * w_scale.double()
    shift = -s * in_zp * w.long().sum(1).double() + (bias.double() if bias is not None else 0.0)
    return (s * inv).float(), (shift * inv + zp).float()


def _is(node, name: str) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and str(node.target).startswith(name)


def _linear_gelu_pairs(gm: torch.fx.GraphModule) -> list[tuple]:
    """(linear, gelu) node pairs in graph order: an `aten.linear` read only by an exact (erf) GELU. The
    same pairs in the same order in a prepared (observed) and in the converted PT2E graph."""
    pairs = []
    for node in gm.graph.nodes:
        if _is(node, "aten.gelu") and node.kwargs.get("approximate", "none") == "none" and \
                (len(node.args) < 2 or node.args[1] == "none"):
            linear = node.args[0]
            if _is(linear, "aten.linear") and len(linear.users) == 1:
                pairs.append((linear, node))
    return pairs


class RangeRecorder(torch.fx.Interpreter):
    """Runs a graph node by node and records the (min, max) of every GELU's input (`_linear_gelu_pairs`)."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self._index = {linear: i for i, (linear, _) in enumerate(_linear_gelu_pairs(gm))}
        self.ranges = [[math.inf, -math.inf] for _ in self._index]

    def run_node(self, n):
        out = super().run_node(n)
        i = self._index.get(n)
        if i is not None:
            r = self.ranges[i]
            r[0], r[1] = min(r[0], out.min().item()), max(r[1], out.max().item())
        return out

    def result(self) -> list[tuple[float, float]]:
        return [(float(lo), float(hi)) for lo, hi in self.ranges]


def _const(gm: torch.fx.GraphModule, node) -> torch.Tensor | None:
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj.detach() if isinstance(obj, torch.Tensor) else None
    return None


def _int8_linear(gm: torch.fx.GraphModule, linear) -> tuple | None:
    """(uint8 input node, its scale, its zero point, int8 weight [N, K], weight scales, bias or None, K step) of a
    `dequantize_per_tensor -> linear(dequantize_per_channel(weight))` the kernels take (N a multiple of 32,
    symmetric int8 weights, constant quantization parameters), else None."""
    dq, wdq = linear.args[0], linear.args[1]
    if not (_is(dq, "quantized_decomposed.dequantize_per_tensor") and
            _is(wdq, "quantized_decomposed.dequantize_per_channel")):
        return None
    q_in, s_in, z_in = dq.args[0], dq.args[1], dq.args[2]
    w, ws = _const(gm, wdq.args[0]), _const(gm, wdq.args[1])
    bias = _const(gm, linear.args[2]) if len(linear.args) > 2 and linear.args[2] is not None else None
    if w is None or ws is None or w.dtype != torch.int8 or w.dim() != 2 or \
            not all(isinstance(v, (int, float)) for v in (s_in, z_in)):
        return None
    ks = _step(w.shape[1])
    if ks is None or w.shape[0] % 32:
        return None
    if wdq.args[2] is not None:  # per-channel weight zero points must be zero (symmetric)
        wz = _const(gm, wdq.args[2])
        if wz is None or bool(wz.any()):
            return None
    return q_in, float(s_in), int(z_in), w, ws, bias, ks


def _replace(gm: torch.fx.GraphModule, before, op, args: tuple, buffers: dict[str, torch.Tensor], extra: tuple):
    """A call of `op(args[0], *buffers (registered on gm), *extra)` inserted before node `before`."""
    for name, value in buffers.items():
        gm.register_buffer(name, value)
    with gm.graph.inserting_before(before):
        attrs = [gm.graph.get_attr(name) for name in buffers]
        return gm.graph.call_function(op, (args[0], *attrs, *extra))


def _recompiled(gm: torch.fx.GraphModule, fused: int) -> int:
    if fused:  # the replaced dequantize nodes are unread now
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return fused


def fuse_gelu_tables(gm: torch.fx.GraphModule, ranges: list[tuple[float, float]]) -> int:
    """Rewrite `gm` in place: each `dequantize -> linear -> gelu -> quantize` with its recorded pre-GELU range
    (`ranges`, one per `_linear_gelu_pairs` entry) becomes one `convnext::qlinear_gelu_table` call, where
    the shapes suit the kernel (`_int8_linear`). Returns how many."""
    pairs = _linear_gelu_pairs(gm)
    if not ranges or len(pairs) != len(ranges):  # not the program the ranges were recorded on: leave it
        return 0
    fused = 0
    for i, ((linear, gelu), pre) in enumerate(zip(pairs, ranges)):
        users = list(gelu.users)
        found = _int8_linear(gm, linear)
        if found is None or len(users) != 1 or not _is(users[0], "quantized_decomposed.quantize_per_tensor"):
            continue
        quant = users[0]
        q_in, s_in, z_in, w, ws, bias, ks = found
        s_out, z_out = quant.args[1], quant.args[2]
        if not isinstance(s_out, (int, float)) or not isinstance(z_out, int) or \
                not math.isfinite(pre[0]) or not math.isfinite(pre[1]):
            continue
        table, inv, zp = gelu_table(pre, float(s_out), int(z_out))
        scale, shift = grid_affine(s_in, z_in, w, ws, bias, inv, zp)
        buffers = {f"_gelu_table_{i}_{k}": v for k, v in
                   (("w", pack_weight(w, ks)), ("scale", scale), ("shift", shift), ("table", table))}
        call = _replace(gm, quant, _ops().qlinear_gelu_table.default, (q_in,), buffers, (ks,))
        quant.replace_all_uses_with(call)
        for node in (quant, gelu, linear):
            gm.graph.erase_node(node)
        fused += 1
    return _recompiled(gm, fused)


def _arg(node, i: int, name: str, default):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def fuse_dwconv_norms(gm: torch.fx.GraphModule) -> int:
    """Rewrite `gm` in place: each block's `conv2d (depthwise 7 x 7, padding 3) -> permute to channels-last ->
    layer_norm -> quantize_per_tensor (uint8)` becomes one `convnext::dwconv_ln_quant` call, where the
    channels are a multiple of 16 and the parameters are constants. Returns how many."""
    fused = 0
    for i, conv in enumerate([n for n in gm.graph.nodes if _is(n, "aten.conv2d")]):
        w = _const(gm, conv.args[1]) if len(conv.args) > 1 else None
        if w is None or w.dim() != 4 or w.shape[1] != 1 or not depthwise_kernel_takes(
                w.shape[0], tuple(w.shape[2:]), _arg(conv, 3, "stride", 1), _arg(conv, 4, "padding", 0),
                _arg(conv, 5, "dilation", 1), _arg(conv, 6, "groups", 1)):
            continue
        c = w.shape[0]
        b = _arg(conv, 2, "bias", None)
        bias = _const(gm, b) if b is not None else torch.zeros(c)
        if bias is None:
            continue
        chain = [conv]
        for name in ("aten.permute", "aten.layer_norm", "quantized_decomposed.quantize_per_tensor"):
            users = list(chain[-1].users)
            if len(users) != 1 or not _is(users[0], name):
                break
            chain.append(users[0])
        if len(chain) != 4:
            continue
        _, permute, norm, quant = chain
        if list(permute.args[1]) != [0, 2, 3, 1] or list(norm.args[1]) != [c]:
            continue
        g, beta = _arg(norm, 2, "weight", None), _arg(norm, 3, "bias", None)
        g = _const(gm, g) if g is not None else torch.ones(c)
        beta = _const(gm, beta) if beta is not None else torch.zeros(c)
        eps = _arg(norm, 4, "eps", 1e-5)
        scale, zp = quant.args[1], quant.args[2]
        if g is None or beta is None or not isinstance(scale, (int, float)) or not isinstance(zp, int) or \
                tuple(quant.args[3:6]) != (0, 255, torch.uint8):
            continue
        buffers = {f"_dwconv_norm_{i}_{k}": v.float().contiguous() for k, v in
                   (("w", pack_depthwise(w)), ("b", bias), ("g", g), ("beta", beta))}
        call = _replace(gm, quant, _ops().dwconv_ln_quant.default, (conv.args[0],), buffers,
                        (float(eps), 1.0 / float(scale), int(zp)))
        quant.replace_all_uses_with(call)
        for node in (quant, norm, permute, conv):
            gm.graph.erase_node(node)
        fused += 1
    return _recompiled(gm, fused)


def _residual_add(linear) -> tuple | None:
    """(permute, add, shortcut) where `linear`'s only reader is a permute to (B, C, H, W) whose only reader adds a
    shortcut to it (a block's `x + pwconv2(...)`), else None."""
    users = list(linear.users)
    if len(users) != 1 or not _is(users[0], "aten.permute") or list(users[0].args[1]) != [0, 3, 1, 2]:
        return None
    permute = users[0]
    adds = list(permute.users)
    if len(adds) != 1 or not (_is(adds[0], "aten.add.Tensor") or _is(adds[0], "aten.add_.Tensor")):
        return None
    add = adds[0]
    if add.kwargs.get("alpha", 1) != 1 or len(add.args) != 2 or add.args[0] is not permute or \
            not isinstance(add.args[1], torch.fx.Node):
        return None
    return permute, add, add.args[1]


def fuse_dequant_linears(gm: torch.fx.GraphModule, bf16: bool) -> int:
    """Rewrite `gm` in place: each `dequantize -> linear` whose output no GELU reads (pwconv2) becomes one
    `convnext::qlinear_dequant` call writing bf16 (`bf16`, the int8-mixed-bf16 mode) or fp32, where the
    shapes suit the kernel (`_int8_linear`); where the block's residual add follows it, a
    `convnext::qlinear_dequant_residual` call that adds the shortcut in the same store. Returns how many."""
    gelu_inputs = {linear for linear, _ in _linear_gelu_pairs(gm)}
    fused = 0
    for i, linear in enumerate([n for n in gm.graph.nodes if _is(n, "aten.linear") and n not in gelu_inputs]):
        found = _int8_linear(gm, linear)
        if found is None:
            continue
        q_in, s_in, z_in, w, ws, bias, ks = found
        scale, shift = grid_affine(s_in, z_in, w, ws, bias, 1.0, 0)
        buffers = {f"_dequant_linear_{i}_{k}": v for k, v in
                   (("w", pack_weight(w, ks)), ("scale", scale), ("shift", shift))}
        residual = _residual_add(linear)
        if residual is None:
            call = _replace(gm, linear, _ops().qlinear_dequant.default, (q_in,), buffers, (ks, bf16))
            linear.replace_all_uses_with(call)
            gm.graph.erase_node(linear)
        else:
            permute, add, shortcut = residual
            with gm.graph.inserting_before(add):
                rows = gm.graph.call_function(torch.ops.aten.permute.default, (shortcut, [0, 2, 3, 1]))
            call = _replace(gm, add, _ops().qlinear_dequant_residual.default, (q_in,), buffers, (rows, ks, bf16))
            with gm.graph.inserting_before(add):
                out = gm.graph.call_function(torch.ops.aten.permute.default, (call, [0, 3, 1, 2]))
            add.replace_all_uses_with(out)
            for node in (add, permute, linear):
                gm.graph.erase_node(node)
        fused += 1
    return _recompiled(gm, fused)


def fuse_int8_mlps(gm: torch.fx.GraphModule) -> int:
    """Rewrite `gm` in place (after `fuse_gelu_tables` and `fuse_dequant_linears`): each block's
    `convnext::qlinear_gelu_table` whose only reader is a `convnext::qlinear_dequant_residual` with a K step of 64
    bytes becomes, with it, one `convnext::qmlp` call (equal outputs, the uint8 hidden kept in cache). Returns how
    many."""
    fused = 0
    for second in [n for n in gm.graph.nodes if _is(n, "convnext.qlinear_dequant_residual")]:
        first = second.args[0]
        if not _is(first, "convnext.qlinear_gelu_table") or len(first.users) != 1 or second.args[5] != 64:
            continue
        x, w1, scale1, shift1, table, ks1 = first.args
        _, w2, scale2, shift2, residual, ks2, bf16 = second.args
        with gm.graph.inserting_before(second):
            call = gm.graph.call_function(_ops().qmlp.default, (x, w1, scale1, shift1, table, ks1, w2, scale2, shift2,
                                                                 residual, ks2, bf16))
        second.replace_all_uses_with(call)
        gm.graph.erase_node(second)
        gm.graph.erase_node(first)
        fused += 1
    return _recompiled(gm, fused)


def qmlp(x: torch.Tensor, w1: torch.Tensor, scale1: torch.Tensor, shift1: torch.Tensor, table: torch.Tensor, ks1: int,
         w2: torch.Tensor, scale2: torch.Tensor, shift2: torch.Tensor, residual: torch.Tensor, bf16: bool) -> torch.Tensor:
    """uint8 (..., C) -> (..., N): `qlinear_gelu_table` then `qlinear_dequant_residual` (pwconv2's K step 64 bytes)
    with equal outputs, in one pass that keeps the uint8 (..., 4C) hidden in each thread's cache. The op
    `convnext::qmlp` (C++)."""
    return _ops().qmlp(x, w1, scale1, shift1, table, ks1, w2, scale2, shift2, residual, 64, bf16)


def first_stream_in_bf16(gm: torch.fx.GraphModule) -> bool:
    """Rewrite `gm` in place: where the network's first block starts with `convnext::dwconv_ln_quant`, its input (the
    first stage's residual stream, which int8-mixed-bf16's autocast leaves in fp32 after the stem's LayerNorm) is
    cast to bf16 for all its readers, so the first stage's blocks read and write bf16 like the later ones (whose
    stream starts at a bf16 conv). Whether a cast was inserted."""
    first = next((n for n in gm.graph.nodes if _is(n, "convnext.dwconv_ln_quant")), None)
    if first is None or not isinstance(first.args[0], torch.fx.Node):
        return False
    for node in gm.graph.nodes:  # a block ahead of it (a Linear, or one of ours): not the first stage's stream
        if node is first:
            break
        if _is(node, "aten.linear") or _is(node, "convnext."):
            return False
    stream = first.args[0]
    with gm.graph.inserting_after(stream):
        cast = gm.graph.call_function(torch.ops.aten._to_copy.default, (stream,), {"dtype": torch.bfloat16})
    stream.replace_all_uses_with(cast, delete_user_cb=lambda user: user is not cast)
    gm.recompile()
    return True
