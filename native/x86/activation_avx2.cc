// AVX2 (+FMA) SwiGLU gate a = silu(a) * b and the softmax's exp row: the bit-exact twins of
// native/ref/activation.cc (the exp sequence of SiluMulFn in kernels.h, 8 lanes at a time; tails go
// to the scalar code).
#include <immintrin.h>

#include "lutllm/kernel_decls.h"

namespace lutllm {
namespace {

// exp_fixed of 8 lanes. The clamps: min/max return their second operand for a NaN, as the scalar
// (t < 88) ? t : 88 does.
inline __m256 exp8_fixed(__m256 t) {
  t = _mm256_min_ps(t, _mm256_set1_ps(88.f));
  t = _mm256_max_ps(t, _mm256_set1_ps(-87.f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-0.693359375f), t);
  r = _mm256_fmadd_ps(k, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

}  // namespace

void exp_row__avx2(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp8_fixed(_mm256_loadu_ps(x + i)));
  if (i < n) exp_row__ref(x + i, n - i);
}

void silu_mul__avx2(float* a, const float* b, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(a + i);
    const __m256 e = exp8_fixed(_mm256_xor_ps(x, sign));
    _mm256_storeu_ps(a + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(b + i)));
  }
  if (i < n) silu_mul__ref(a + i, b + i, n - i);
}

}  // namespace lutllm
