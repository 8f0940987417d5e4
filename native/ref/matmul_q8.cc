// Scalar reference matmuls of quantized weights (Q4_0 .. Q6_K) with ActQ8 activations. They define the
// exact float operation order that every SIMD twin reproduces bit for bit. Not tuned for speed.
#include <cmath>
#include <vector>

#include "lutllm/kernel_decls.h"
#include "q8_blocks.h"

namespace lutllm {

// THE ORDER (every Q8 matmul kernel, every ISA, computes exactly this):
//   For one weight row r and one activation row t, over the k/32 blocks b in increasing order:
//     P_b   = sum_e mult[e/16] * c[e] * xq[e]          exact int32 (see q8dot::Block; any order)
//     S_b   = D_b * x[b].d                               one float multiply
//     acc   = fma(float(P_b), S_b, acc)                  one fused multiply-add, acc starts at +0
//     summ  = fma(M_b, x[b].s, summ)                     only for types with an offset term
//   y[t][r] = acc + summ                                 (types without offset: y = acc)
// float(P_b) is exact (|P_b| < 2^24 for every type), so a SIMD kernel may form it from partial
// integer sums in any order, or as exact float products float(A) * float(mult). Because acc and summ
// are plain sequential chains per (r, t), SIMD kernels vectorise across rows or across tokens, never
// across blocks. K-quants store M_b = -(dmin * m_j) so the offset term is always added.
// Contract on the activations: codes in [-127, 127] (quantize_act never makes -128); the AVX2 Q8_0
// kernels rely on it (maddubs(|w|, sign(x, w)) would wrap -(-128)).
namespace {

template <GgmlType T, bool kHasMin>
void matmul_q8_ref(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const ActQ8* x,
                   int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  const int64_t nb = k / QK32;
  std::vector<q8dot::Block> blocks(static_cast<size_t>(nb));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w + size_t(r) * row_bytes;
    for (int64_t b = 0; b < nb; ++b) q8dot::decode_block<T>(row, b, &blocks[size_t(b)]);
    for (int64_t t = 0; t < n_tok; ++t) {
      const ActQ8* xt = x + t * x_stride;
      float acc = 0.0f, summ = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const q8dot::Block& blk = blocks[size_t(b)];
        int32_t p0 = 0, p1 = 0;
        for (int e = 0; e < 16; ++e) p0 += int32_t(blk.c[e]) * xt[b].qs[e];
        for (int e = 16; e < 32; ++e) p1 += int32_t(blk.c[e]) * xt[b].qs[e];
        const int32_t p = blk.mult[0] * p0 + blk.mult[1] * p1;
        const float s = blk.D * xt[b].d;
        acc = std::fma(float(p), s, acc);
        if (kHasMin) summ = std::fma(blk.M, xt[b].s, summ);
      }
      y[t * y_stride + r] = kHasMin ? acc + summ : acc;
    }
  }
}

}  // namespace

#define LUTLLM_Q8_REF(name, T, has_min)                                                              \
  void name(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const ActQ8* x,             \
            int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {                           \
    matmul_q8_ref<GgmlType::T, has_min>(w, row_bytes, rows, k, x, x_stride, n_tok, y, y_stride);    \
  }
LUTLLM_Q8_REF(matmul_q4_0_q8__ref, Q4_0, false)
LUTLLM_Q8_REF(matmul_q4_1_q8__ref, Q4_1, true)
LUTLLM_Q8_REF(matmul_q5_0_q8__ref, Q5_0, false)
LUTLLM_Q8_REF(matmul_q5_1_q8__ref, Q5_1, true)
LUTLLM_Q8_REF(matmul_q8_0_q8__ref, Q8_0, false)
LUTLLM_Q8_REF(matmul_q4_K_q8__ref, Q4_K, true)
LUTLLM_Q8_REF(matmul_q5_K_q8__ref, Q5_K, true)
LUTLLM_Q8_REF(matmul_q6_K_q8__ref, Q6_K, false)
#undef LUTLLM_Q8_REF

}  // namespace lutllm
