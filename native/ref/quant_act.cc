// Scalar reference for activation quantization to ActQ8 blocks (the form every Q8 matmul consumes).
// Not a weight quantizer. The SIMD twins (native/x86/quant_act_q8_*.cc) are bit-exact with it.
#include <cfloat>
#include <cmath>

#include "lutllm/kernel_decls.h"

namespace lutllm {

// Per 32 values: amax = max|x|, d = amax / 127, id = d ? 1/d : 0, q = round(x * id) with halves away
// from zero (std::round; |x * id| <= 127 so q never reaches -128), s = d * float(sum q).
// Every step is one IEEE operation (division, not a reciprocal estimate), so SIMD can match it.
void quantize_act_q8__ref(const float* x, ActQ8* y, int64_t k) {
  for (int64_t b = 0; b < k / QK32; ++b, x += QK32, ++y) {
    float amax = 0.0f;
    for (int j = 0; j < QK32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d >= FLT_MIN ? 1.0f / d : 0.0f;  // subnormal d: 1/d overflows, block rounds to 0
    int sum = 0;
    for (int j = 0; j < QK32; ++j) {
      const int q = int(std::round(x[j] * id));
      y->qs[j] = int8_t(q);
      sum += q;
    }
    y->d = d;
    y->s = d * float(sum);
  }
}

}  // namespace lutllm
