// AVX2 (+FMA) SwiGLU gate a = silu(a) * b: the bit-exact twin of native/ref/activation.cc (the exp
// sequence of SiluMulFn in kernels.h, 8 lanes at a time; the tail goes to the scalar kernel).
#include <immintrin.h>

#include "lutllm/kernel_decls.h"

namespace lutllm {

void silu_mul__avx2(float* a, const float* b, int64_t n) {
  const __m256 hi = _mm256_set1_ps(88.f), lo = _mm256_set1_ps(-87.f), one = _mm256_set1_ps(1.f);
  const __m256 sign = _mm256_set1_ps(-0.f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(a + i);
    __m256 t = _mm256_xor_ps(x, sign);
    t = _mm256_min_ps(t, hi);  // (t < 88) ? t : 88, NaN -> 88
    t = _mm256_max_ps(t, lo);  // (t > -87) ? t : -87
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
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), one);
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    const __m256 e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
    _mm256_storeu_ps(a + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(b + i)));
  }
  if (i < n) silu_mul__ref(a + i, b + i, n - i);
}

}  // namespace lutllm
