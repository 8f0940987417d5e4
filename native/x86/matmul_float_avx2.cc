// AVX2 (+FMA, F16C) matmuls of float weights (F32, F16, BF16) with float32 activations. Not bit-exact
// with the sequential refs (8-lane FMA partial sums); tests bound the error against float64 instead.
#include <immintrin.h>

#include <cstring>

#include "lutllm/kernel_decls.h"

namespace lutllm {
namespace {

// 8 weights starting at element i of a row -> float32
struct LdF32 {
  static constexpr size_t kBytes = 4;
  static __m256 v8(const uint8_t* row, int64_t i) { return _mm256_loadu_ps(reinterpret_cast<const float*>(row + 4 * i)); }
  static float one(const uint8_t* row, int64_t i) {
    float f;
    std::memcpy(&f, row + 4 * i, 4);
    return f;
  }
};
struct LdF16 {
  static constexpr size_t kBytes = 2;
  static __m256 v8(const uint8_t* row, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
  }
  static float one(const uint8_t* row, int64_t i) {
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    return _cvtsh_ss(h);
  }
};
struct LdBF16 {
  static constexpr size_t kBytes = 2;
  static __m256 v8(const uint8_t* row, int64_t i) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static float one(const uint8_t* row, int64_t i) {
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    const uint32_t bits = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// NR rows x NT tokens of dot products; each weight vector is loaded once for the NT tokens.
template <class L, int NR, int NT>
void block_dots(const uint8_t* const* wr, const float* const* xt, int64_t k, float* out /* [NT][NR] */) {
  __m256 acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < NT; ++j) acc[r][j] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 xv[NT];
    for (int j = 0; j < NT; ++j) xv[j] = _mm256_loadu_ps(xt[j] + i);
    for (int r = 0; r < NR; ++r) {
      const __m256 wv = L::v8(wr[r], i);
      for (int j = 0; j < NT; ++j) acc[r][j] = _mm256_fmadd_ps(wv, xv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < NT; ++j) {
      float s = hsum8(acc[r][j]);
      for (int64_t e = i; e < k; ++e) s += L::one(wr[r], e) * xt[j][e];
      out[j * NR + r] = s;
    }
}

template <class L>
void matmul_float_avx2(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const float* x,
                       int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  constexpr int NR = 4, NT = 2;
  for (int64_t r0 = 0; r0 < rows; r0 += NR) {
    const int nr = int(rows - r0 < NR ? rows - r0 : NR);
    const uint8_t* wr[NR];
    for (int r = 0; r < NR; ++r) wr[r] = w + size_t(r0 + (r < nr ? r : 0)) * row_bytes;
    for (int64_t t0 = 0; t0 < n_tok; t0 += NT) {
      const int nt = int(n_tok - t0 < NT ? n_tok - t0 : NT);
      const float* xt[NT];
      for (int j = 0; j < NT; ++j) xt[j] = x + (t0 + (j < nt ? j : 0)) * x_stride;
      float out[NT * NR];
      if (nt == NT) block_dots<L, NR, NT>(wr, xt, k, out);
      else block_dots<L, NR, 1>(wr, xt, k, out);
      for (int j = 0; j < nt; ++j)
        for (int r = 0; r < nr; ++r) y[(t0 + j) * y_stride + r0 + r] = out[j * NR + r];
    }
  }
}

}  // namespace

void matmul_f32_f32__avx2(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const float* x,
                          int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  matmul_float_avx2<LdF32>(w, row_bytes, rows, k, x, x_stride, n_tok, y, y_stride);
}
void matmul_f16_f32__avx2(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const float* x,
                          int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  matmul_float_avx2<LdF16>(w, row_bytes, rows, k, x, x_stride, n_tok, y, y_stride);
}
void matmul_bf16_f32__avx2(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const float* x,
                           int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  matmul_float_avx2<LdBF16>(w, row_bytes, rows, k, x, x_stride, n_tok, y, y_stride);
}

}  // namespace lutllm
