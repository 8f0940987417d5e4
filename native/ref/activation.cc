// Scalar SwiGLU gate a = silu(a) * b (SiluMulFn in kernels.h) and the fixed exp sequence stated there
// (exp_fixed, also the attention softmax's exp), which the SIMD twins (native/x86/activation_avx2.cc,
// native/arm/activation_neon.cc) repeat bit for bit. Compiled with -ffp-contract=off: every fma is explicit.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "lutllm/kernel_decls.h"

namespace lutllm {

float exp_fixed(float t) {
  t = t < 88.f ? t : 88.f;
  t = t > -87.f ? t : -87.f;
  const float k = std::nearbyint(t * 1.44269504f);
  float r = std::fma(k, -0.693359375f, t);
  r = std::fma(k, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  const float y = std::fma(p, r * r, r) + 1.f;
  const uint32_t bits = uint32_t(int32_t(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return y * scale;
}

void exp_row__ref(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_fixed(x[i]);
}

void silu_mul__ref(float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = a[i] / (1.f + exp_fixed(-a[i])) * b[i];
}

}  // namespace lutllm
