// Scalar reference LUT kernels: table build, GEMV and GEMM over the packed layout of lut.h.
// The twin every SIMD LUT kernel must match bit for bit; written for clarity, not speed.
#include <cmath>
#include <cstring>

#include "lutllm/kernel_decls.h"
#include "lutllm/lut.h"

namespace lutllm {

void lut_build_g4__ref(const float* x, int64_t k, int32_t ag, int64_t ag_begin, int64_t ag_end, int8_t* tab,
                       float* scale, float* sum16) {
  for (int64_t a = ag_begin; a < ag_end; ++a) {
    const float* xa = x + a * ag;
    float mx = 0.0f;
    for (int q = 0; q < ag / 4; ++q) {
      const float* v = xa + 4 * q;
      const float m = (std::fabs(v[0]) + std::fabs(v[1])) + (std::fabs(v[2]) + std::fabs(v[3]));
      mx = m > mx ? m : mx;
    }
    const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    scale[a] = mx / 127.0f;
    for (int q = 0; q < ag / 4; ++q) {
      const float* v = xa + 4 * q;
      int8_t* t = tab + (a * ag / 4 + q) * 16;
      for (int idx = 0; idx < 16; ++idx) {
        float e = (idx & 1) ? v[0] : -v[0];
        e = e + ((idx & 2) ? v[1] : -v[1]);
        e = e + ((idx & 4) ? v[2] : -v[2]);
        e = e + ((idx & 8) ? v[3] : -v[3]);
        float r = std::nearbyint(e * inv);
        r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
        t[idx] = int8_t(r);
      }
    }
    for (int i = 0; i < ag / 16; ++i) {
      // pairwise tree: halves of 8, then 4, 2, 1 (the order an 8-lane vector reduces in)
      float v[16];
      std::memcpy(v, xa + 16 * i, sizeof v);
      for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; ++j) v[j] = v[j] + v[j + w];
      sum16[a * ag / 16 + i] = v[0];
    }
  }
}

namespace {

// One row block's output (16 rows) for one activation vector.
template <int KIND>
void row_block_ref(const LutWeights& w, const LutAct& act, int64_t rb, float acc[kLutRows]) {
  constexpr bool kTern = KIND == int(LutKind::TERNARY);
  constexpr int n = kTern ? 2 : KIND;
  const LutFormat& f = w.fmt;
  const int G = f.group;
  const int64_t ngroups = w.k / G;
  const uint8_t* blk = w.data + size_t(rb) * lut_row_block_bytes(f, w.k);
  const float cn = float((1 << n) - 1) * 0.5f;
  const bool kq = lut_is_kq(f);
  int32_t J[kLutRows] = {0}, M[kLutRows] = {0};  // k-quant super-block sums
  for (int r = 0; r < kLutRows; ++r) acc[r] = 0.0f;
  for (int64_t g = 0; g < ngroups; ++g) {
    const uint8_t* p = blk + lut_group_offset(f, g);
    const int8_t* tq = act.tab + g * G / 4 * 16;  // this group's tables
    int32_t I[kLutRows] = {0};
    for (int pp = 0; pp < n / 2; ++pp)
      for (int qd = 0; qd < G / 4; ++qd, p += 16)
        for (int j = 0; j < 16; ++j) {
          const int m = kTern ? 1 : 1 << (2 * pp + (j & 1));
          I[j >> 1] += m * tq[qd * 16 + (p[j] & 15)];
          I[8 + (j >> 1)] += m * tq[qd * 16 + (p[j] >> 4)];
        }
    if (n & 1) {
      const int C = lut_st_chunk_quads(G), H = C / 2;  // ST(c, i): quads C*c + i and C*c + i + H
      for (int c = 0; c < G / 4 / C; ++c)
        for (int i = 0; i < H; ++i, p += 16)
          for (int j = 0; j < 16; ++j)
            I[j] += (1 << (n - 1)) * (tq[(C * c + i) * 16 + (p[j] & 15)] + tq[(C * c + i + H) * 16 + (p[j] >> 4)]);
    }
    if (kq) {  // super-block epilogue (lut.h): integer sums over the super-block, one float step
      const float ts = act.scale[g * G / act.ag];
      const int32_t Q = lut_group_qf(lut_group_sum(act.sum16, g, G), ts), cq = f.has_offset ? (1 << n) - 1 : -1;
      int32_t sc[kLutRows], m[kLutRows];
      float d[kLutRows], dmin[kLutRows];
      lut_group_kq(blk, f, g, sc, m, d, dmin);
      for (int r = 0; r < kLutRows; ++r) {
        J[r] += sc[r] * (16 * I[r] + cq * Q);
        M[r] += m[r] * Q;
      }
      if ((g & lut_kq_span_mask(f, act.ag)) == lut_kq_span_mask(f, act.ag)) {  // last group of the span
        for (int r = 0; r < kLutRows; ++r) {
          acc[r] = std::fma(d[r] * (ts * 0.03125f), float(J[r]), acc[r]);
          if (f.has_offset) acc[r] = std::fma(-dmin[r] * (ts * 0.0625f), float(M[r]), acc[r]);
          J[r] = M[r] = 0;
        }
      }
      continue;
    }
    const float tsh = 0.5f * act.scale[g * G / act.ag];
    const float sx = kTern ? 0.0f : lut_group_sum(act.sum16, g, G);
    float sv[kLutRows], ov[kLutRows];
    lut_group_scales(blk, f, g, sv, ov);
    for (int r = 0; r < kLutRows; ++r) {
      const float s = sv[r];
      acc[r] = std::fma(s * tsh, float(I[r]), acc[r]);
      if (!kTern) {
        const float c = f.has_offset ? std::fma(s, cn, ov[r]) : s * -0.5f;
        acc[r] = std::fma(c, sx, acc[r]);
      }
    }
  }
}

template <int KIND>
void gemm_ref(const LutWeights* w, const LutAct* a, int64_t n_tok, int64_t row_begin, int64_t row_end, float* y,
              int64_t y_stride) {
  const int64_t end = row_end < w->rows ? row_end : w->rows;
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t rb = row_begin / kLutRows; rb * kLutRows < end; ++rb) {
      float acc[kLutRows];
      row_block_ref<KIND>(*w, a[t], rb, acc);
      for (int r = 0; r < kLutRows; ++r) {
        const int64_t row = rb * kLutRows + r;
        if (row >= row_begin && row < end) y[t * y_stride + row] = acc[r];
      }
    }
}

}  // namespace

#define LUTLLM_LUT_REF(KIND, SUFFIX)                                                                          \
  void lut_gemv_##SUFFIX##_g4__ref(const LutWeights* w, const LutAct* a, int64_t row_begin, int64_t row_end,  \
                                   float* y) {                                                                \
    gemm_ref<KIND>(w, a, 1, row_begin, row_end, y, 0);                                                        \
  }                                                                                                           \
  void lut_gemm_##SUFFIX##_g4__ref(const LutWeights* w, const LutAct* a, int64_t n_tok, int64_t row_begin,    \
                                   int64_t row_end, float* y, int64_t y_stride) {                             \
    gemm_ref<KIND>(w, a, n_tok, row_begin, row_end, y, y_stride);                                             \
  }
LUTLLM_LUT_REF(1, w1)
LUTLLM_LUT_REF(2, w2)
LUTLLM_LUT_REF(3, w3)
LUTLLM_LUT_REF(4, w4)
LUTLLM_LUT_REF(5, wt)
#undef LUTLLM_LUT_REF

}  // namespace lutllm
