// The loop around the SIMD LUT kernels (AVX2, AVX-512, NEON): K blocking, per-group activation sums,
// row-block walk with clipped first/last blocks, token tiles of NT and the tail, prefetch switch.
// Each ISA file supplies a traits struct Isa with
//   Isa::Tile                                  running sums of one row block (16 rows) for one token
//   Isa::zero(), Isa::load_rows(y, lo, hi), Isa::store_rows(y, tile, lo, hi)   rows [lo, hi) of y
//   Isa::row_block<KIND, NT>(blk, f, act, sxg, qg, g0, g1, Tile yv[NT], pf)   groups [g0, g1)
//     sxg[t][g - g0]: Sx_g (per-group epilogue), qg[t][g - g0]: Qf_g (k-quant super-block epilogue)
// and defines its registry entry points with LUTLLM_LUT_ENTRY_POINTS(Isa, isa, NT) (in namespace
// lutllm, outside the anonymous one). Everything here has internal linkage (anonymous
// namespace), so every ISA file compiles its own copy with its own target flags and no inline code
// is shared with baseline-compiled files. Only the kernel files include this header.
#pragma once
#include <cstddef>
#include <cstdint>

#include "lutllm/lut.h"

namespace lutllm {
namespace {

constexpr int64_t kSxBuf = 4096;  // floats of precomputed group sums per K block
// Bytes of weights prefetched ahead of the group block in use. The hardware prefetcher alone left a
// 1-thread GEMV at ~75% of the read-bandwidth probe; 2-8 KB ahead measured best (4 KB chosen).
constexpr size_t kPrefetchAhead = 4096;

// Software prefetch of a row block's weights: each 64-byte line from `next` up to `end`, once (a
// g16 group block is 80..112 bytes, so prefetching per group block would repeat lines).
struct PrefetchCursor {
  const uint8_t* next;
  void upto(const uint8_t* end) {
    for (; next < end; next += 64) __builtin_prefetch(next, 0, 3);
  }
};

// Sum of the group's sum16 entries, left to right (the order of lut_group_sum in native/ref).
inline float group_sum(const float* sum16, int64_t g, int group) {
  const int64_t i0 = g * (group / 16);
  float s = sum16[i0];
  for (int i = 1; i < group / 16; ++i) s = s + sum16[i0 + i];
  return s;
}

// Token tile NT; the K range is walked in blocks so a block's tables (all tokens) stay in cache
// while every row block streams past. y carries the partial sums between K blocks, so the
// operation order per output is unchanged (bit-exact with one pass).
template <class Isa, int KIND, int NT>
void lut_gemm_tile(const LutWeights* w, const LutAct* a, int64_t n_tok, int64_t row_begin, int64_t row_end, float* y,
                   int64_t y_stride, int64_t kb_groups) {
  using Tile = typename Isa::Tile;
  const LutFormat& f = w->fmt;
  const int64_t ngroups = w->k / f.group;
  const size_t rbb = lut_row_block_bytes(f, w->k);
  const int64_t end = row_end < w->rows ? row_end : w->rows;
  // Software prefetch only when K is walked in one pass (GEMV): the weights are then read front to back.
  const size_t pf = kb_groups >= ngroups ? kPrefetchAhead : 0;
  for (int64_t g0 = 0; g0 < ngroups; g0 += kb_groups) {
    const int64_t g1 = g0 + kb_groups < ngroups ? g0 + kb_groups : ngroups;
    // Sx per (token, group) once per K block, not once per row block (callers bound n_tok * kb)
    // (k-quant: the integer Qf_g of lut.h instead; K blocks hold whole spans)
    float sxbuf[kSxBuf];
    int32_t qbuf[kSxBuf];
    const bool kq = lut_is_kq(f);
    for (int64_t t = 0; t < n_tok; ++t) {
      if (!kq) {
        for (int64_t g = g0; g < g1; ++g) sxbuf[t * (g1 - g0) + (g - g0)] = group_sum(a[t].sum16, g, f.group);
        continue;
      }
      // k-quant: spans of whole groups (lut_act_group_ok: ag % group == 0), one table scale each;
      // the loop over a span's groups vectorizes
      const int64_t per_span = a[t].ag / f.group;
      int32_t* q = qbuf + t * (g1 - g0) - g0;
      for (int64_t s = g0 / per_span; s * per_span < g1; ++s) {
        const int64_t b = s * per_span > g0 ? s * per_span : g0, e = (s + 1) * per_span < g1 ? (s + 1) * per_span : g1;
        const float inv = lut_qf_scale(a[t].scale[s]);
        if (f.group == 16)  // group_sum of one sum16 entry
          for (int64_t g = b; g < e; ++g) q[g] = lut_group_qf_scaled(a[t].sum16[g], inv);
        else
          for (int64_t g = b; g < e; ++g) q[g] = lut_group_qf_scaled(group_sum(a[t].sum16, g, f.group), inv);
      }
    }
    for (int64_t rb = row_begin / kLutRows; rb * kLutRows < end; ++rb) {
      const int64_t r0 = rb * kLutRows;
      const int lo = int((row_begin > r0 ? row_begin : r0) - r0);
      const int hi = int((end < r0 + kLutRows ? end : r0 + kLutRows) - r0);
      const uint8_t* blk = w->data + size_t(rb) * rbb;
      int64_t t = 0;
      for (; t + NT <= n_tok; t += NT) {
        Tile yv[NT];
        const float* sxp[NT];
        const int32_t* qp[NT];
        for (int u = 0; u < NT; ++u) {
          yv[u] = g0 == 0 ? Isa::zero() : Isa::load_rows(y + (t + u) * y_stride + r0, lo, hi);
          sxp[u] = sxbuf + (t + u) * (g1 - g0);
          qp[u] = qbuf + (t + u) * (g1 - g0);
        }
        Isa::template row_block<KIND, NT>(blk, f, a + t, sxp, qp, g0, g1, yv, pf);
        for (int u = 0; u < NT; ++u) Isa::store_rows(y + (t + u) * y_stride + r0, yv[u], lo, hi);
      }
      for (; t < n_tok; ++t) {
        Tile yv[1] = {g0 == 0 ? Isa::zero() : Isa::load_rows(y + t * y_stride + r0, lo, hi)};
        const float* sxp[1] = {sxbuf + t * (g1 - g0)};
        const int32_t* qp[1] = {qbuf + t * (g1 - g0)};
        Isa::template row_block<KIND, 1>(blk, f, a + t, sxp, qp, g0, g1, yv, pf);
        Isa::store_rows(y + t * y_stride + r0, yv[0], lo, hi);
      }
    }
  }
}

// Bounds the per-K-block Sx buffer (n_tok * groups in the block <= kSxBuf): a few tokens walk K in
// one pass (up to kSxBuf / NT groups); more tokens walk it in 512-activation blocks so that block's
// tables (2 KB per token) stay in cache, in chunks of tokens.
template <class Isa, int KIND, int NT>
void lut_gemm_driver(const LutWeights* w, const LutAct* a, int64_t n_tok, int64_t row_begin, int64_t row_end, float* y,
                     int64_t y_stride) {
  const int64_t ng = w->k / w->fmt.group;
  if (n_tok <= NT) {
    const int64_t kb = ng < kSxBuf / NT ? ng : kSxBuf / NT;
    lut_gemm_tile<Isa, KIND, NT>(w, a, n_tok, row_begin, row_end, y, y_stride, kb);
    return;
  }
  const int64_t kb = ng < 512 / w->fmt.group ? ng : 512 / w->fmt.group;
  const int64_t chunk = kSxBuf / kb;
  for (int64_t t0 = 0; t0 < n_tok; t0 += chunk)
    lut_gemm_tile<Isa, KIND, NT>(w, a + t0, n_tok - t0 < chunk ? n_tok - t0 : chunk, row_begin, row_end,
                                 y + t0 * y_stride, y_stride, kb);
}

}  // namespace
}  // namespace lutllm

// lut_gemv_{w1,w2,w3,w4,wt}_g4__ISA and lut_gemm_..._g4__ISA (kernel_decls.h) over lut_gemm_driver
// with traits ISA_T; GEMM token tile NT.
#define LUTLLM_LUT_ENTRY_POINT(ISA_T, ISA, NT, KIND, SUFFIX)                                                 \
  void lut_gemv_##SUFFIX##_g4__##ISA(const LutWeights* w, const LutAct* a, int64_t row_begin, int64_t row_end, \
                                     float* y) {                                                              \
    lut_gemm_driver<ISA_T, KIND, 1>(w, a, 1, row_begin, row_end, y, 0);                                       \
  }                                                                                                           \
  void lut_gemm_##SUFFIX##_g4__##ISA(const LutWeights* w, const LutAct* a, int64_t n_tok, int64_t row_begin,   \
                                     int64_t row_end, float* y, int64_t y_stride) {                           \
    lut_gemm_driver<ISA_T, KIND, NT>(w, a, n_tok, row_begin, row_end, y, y_stride);                           \
  }
#define LUTLLM_LUT_ENTRY_POINTS(ISA_T, ISA, NT)   \
  LUTLLM_LUT_ENTRY_POINT(ISA_T, ISA, NT, 1, w1) \
  LUTLLM_LUT_ENTRY_POINT(ISA_T, ISA, NT, 2, w2) \
  LUTLLM_LUT_ENTRY_POINT(ISA_T, ISA, NT, 3, w3) \
  LUTLLM_LUT_ENTRY_POINT(ISA_T, ISA, NT, 4, w4) \
  LUTLLM_LUT_ENTRY_POINT(ISA_T, ISA, NT, 5, wt)
