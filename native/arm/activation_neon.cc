// NEON SwiGLU gate a = silu(a) * b and the softmax's exp row: the bit-exact twins of
// native/ref/activation.cc (the exp sequence of SiluMulFn in kernels.h, 4 lanes at a time; tails go
// to the scalar code).
#include <arm_neon.h>

#include "lutllm/kernel_decls.h"

namespace lutllm {
namespace {

// exp_fixed of 4 lanes. The clamps are compare + select, so a NaN becomes 88 as in the scalar code
// (vminq would keep the NaN).
inline float32x4_t exp4_fixed(float32x4_t t) {
  const float32x4_t hi = vdupq_n_f32(88.f), lo = vdupq_n_f32(-87.f);
  t = vbslq_f32(vcltq_f32(t, hi), t, hi);
  t = vbslq_f32(vcgtq_f32(t, lo), t, lo);
  const float32x4_t k = vrndnq_f32(vmulq_f32(t, vdupq_n_f32(1.44269504f)));
  float32x4_t r = vfmaq_f32(t, k, vdupq_n_f32(-0.693359375f));
  r = vfmaq_f32(r, k, vdupq_n_f32(2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  const float32x4_t y = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.f));
  const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(k), vdupq_n_s32(127)), 23);
  return vmulq_f32(y, vreinterpretq_f32_s32(bits));
}

}  // namespace

void exp_row__neon(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(x + i, exp4_fixed(vld1q_f32(x + i)));
  if (i < n) exp_row__ref(x + i, n - i);
}

void silu_mul__neon(float* a, const float* b, int64_t n) {
  const float32x4_t one = vdupq_n_f32(1.f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t x = vld1q_f32(a + i);
    const float32x4_t e = exp4_fixed(vnegq_f32(x));
    vst1q_f32(a + i, vmulq_f32(vdivq_f32(x, vaddq_f32(one, e)), vld1q_f32(b + i)));
  }
  if (i < n) silu_mul__ref(a + i, b + i, n - i);
}

}  // namespace lutllm
