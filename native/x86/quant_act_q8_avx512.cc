// AVX-512 activation quantization to ActQ8, bit-exact with quantize_act_q8__ref (native/ref/quant_act.cc):
// same IEEE division for d and 1/d, same product, rounding half away from zero. Not a weight quantizer.
// GCC 12 flags its own AVX-512 intrinsic headers (_mm512_undefined_*) with -Wmaybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <cfloat>
#include <immintrin.h>

#include "lutllm/kernel_decls.h"

namespace lutllm {

void quantize_act_q8__avx512(const float* x, ActQ8* y, int64_t k) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f);
  for (int64_t b = 0; b < k / QK32; ++b, x += QK32, ++y) {
    const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float d = amax / 127.0f;
    const float id = d >= FLT_MIN ? 1.0f / d : 0.0f;  // subnormal d: 1/d overflows, block rounds to 0
    const __m512 vid = _mm512_set1_ps(id);
    __m512i q[2];
    const __m512 v[2] = {v0, v1};
    for (int i = 0; i < 2; ++i) {
      const __m512 p = _mm512_mul_ps(v[i], vid);
      const __m512 t = _mm512_roundscale_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      const __mmask16 away = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(p, t)), half, _CMP_GE_OQ);
      // +-1 with the sign of p
      const __m512 sgn1 = _mm512_or_ps(_mm512_and_ps(p, sign), one);
      q[i] = _mm512_cvttps_epi32(_mm512_mask_add_ps(t, away, t, sgn1));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y->qs), _mm512_cvtsepi32_epi8(q[0]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y->qs + 16), _mm512_cvtsepi32_epi8(q[1]));
    y->d = d;
    y->s = d * float(_mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1])));
  }
}

}  // namespace lutllm
