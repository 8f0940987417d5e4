// NEON attention of one query head over an fp16 KV cache: the bit-exact twin of
// native/ref/attention.cc (lanes 0..3 and 4..7 in two registers, multiply then add, no fma).
#include <arm_neon.h>

#include "lutllm/kernel_decls.h"

namespace lutllm {
namespace {

inline float32x4_t load4_f16(const fp16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

inline float half_to_float(fp16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }

// (l_j + l_{j+4}), then (+ r_{j+2}), then s0 + s1: the reference's order.
inline float reduce8(float32x4_t lo, float32x4_t hi) {
  const float32x4_t r = vaddq_f32(lo, hi);
  const float32x2_t s = vadd_f32(vget_low_f32(r), vget_high_f32(r));
  return vget_lane_f32(s, 0) + vget_lane_f32(s, 1);
}

inline void add_tail(float32x4_t& lo, float32x4_t& hi, const float* q, const fp16_t* k, int hd8, int hd) {
  float l[8];
  vst1q_f32(l, lo);
  vst1q_f32(l + 4, hi);
  for (int i = hd8; i < hd; ++i) l[i % 8] = l[i % 8] + q[i] * half_to_float(k[i]);
  lo = vld1q_f32(l);
  hi = vld1q_f32(l + 4);
}

}  // namespace

void attn_head_f16__neon(const float* q, const fp16_t* k, const fp16_t* v, int64_t len, int64_t kv_stride, int hd,
                         float scale, float* scores, float* out) {
  const int hd8 = hd & ~7;
  int64_t j = 0;
  for (; j + 2 <= len; j += 2) {  // two keys at a time so that their add chains overlap
    const fp16_t* k0 = k + j * kv_stride;
    const fp16_t* k1 = k0 + kv_stride;
    float32x4_t a0 = vdupq_n_f32(0.f), b0 = a0, a1 = a0, b1 = a0;
    for (int i = 0; i < hd8; i += 8) {
      const float32x4_t qa = vld1q_f32(q + i), qb = vld1q_f32(q + i + 4);
      a0 = vaddq_f32(a0, vmulq_f32(qa, load4_f16(k0 + i)));
      b0 = vaddq_f32(b0, vmulq_f32(qb, load4_f16(k0 + i + 4)));
      a1 = vaddq_f32(a1, vmulq_f32(qa, load4_f16(k1 + i)));
      b1 = vaddq_f32(b1, vmulq_f32(qb, load4_f16(k1 + i + 4)));
    }
    if (hd8 < hd) {
      add_tail(a0, b0, q, k0, hd8, hd);
      add_tail(a1, b1, q, k1, hd8, hd);
    }
    scores[j] = reduce8(a0, b0) * scale;
    scores[j + 1] = reduce8(a1, b1) * scale;
  }
  for (; j < len; ++j) {
    const fp16_t* kj = k + j * kv_stride;
    float32x4_t a = vdupq_n_f32(0.f), b = a;
    for (int i = 0; i < hd8; i += 8) {
      a = vaddq_f32(a, vmulq_f32(vld1q_f32(q + i), load4_f16(kj + i)));
      b = vaddq_f32(b, vmulq_f32(vld1q_f32(q + i + 4), load4_f16(kj + i + 4)));
    }
    if (hd8 < hd) add_tail(a, b, q, kj, hd8, hd);
    scores[j] = reduce8(a, b) * scale;
  }
  attn_softmax(scores, len, exp_row__neon);

  int c = 0;
  for (; c + 32 <= hd8; c += 32) {  // 32 outputs (8 registers) at a time, keys in order
    float32x4_t o[8];
    for (int u = 0; u < 8; ++u) o[u] = vdupq_n_f32(0.f);
    for (j = 0; j < len; ++j) {
      const float32x4_t p = vdupq_n_f32(scores[j]);
      const fp16_t* vj = v + j * kv_stride + c;
      for (int u = 0; u < 8; ++u) o[u] = vaddq_f32(o[u], vmulq_f32(p, load4_f16(vj + 4 * u)));
    }
    for (int u = 0; u < 8; ++u) vst1q_f32(out + c + 4 * u, o[u]);
  }
  for (; c < hd8; c += 4) {
    float32x4_t o = vdupq_n_f32(0.f);
    for (j = 0; j < len; ++j) o = vaddq_f32(o, vmulq_f32(vdupq_n_f32(scores[j]), load4_f16(v + j * kv_stride + c)));
    vst1q_f32(out + c, o);
  }
  for (int i = hd8; i < hd; ++i) {
    float o = 0.f;
    for (j = 0; j < len; ++j) o = o + scores[j] * half_to_float(v[j * kv_stride + i]);
    out[i] = o;
  }
}

}  // namespace lutllm
