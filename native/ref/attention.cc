// Scalar attention of one query head over an fp16 KV cache (AttnHeadFn in kernels.h): the reference
// every SIMD twin reproduces bit for bit, and the kernel of CPUs without one.
#include <cmath>

#include "lutllm/kernel_decls.h"

namespace lutllm {

void attn_softmax(float* scores, int64_t len, ExpRowFn exp_row) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < len; ++j) mx = scores[j] > mx ? scores[j] : mx;
  for (int64_t j = 0; j < len; ++j) scores[j] = scores[j] - mx;
  exp_row(scores, len);
  double sum = 0;
  for (int64_t j = 0; j < len; ++j) sum += scores[j];
  const float inv = float(1.0 / sum);
  for (int64_t j = 0; j < len; ++j) scores[j] = scores[j] * inv;
}

void attn_head_f16__ref(const float* q, const fp16_t* k, const fp16_t* v, int64_t len, int64_t kv_stride, int hd,
                        float scale, float* scores, float* out) {
  for (int64_t j = 0; j < len; ++j) {
    const fp16_t* kj = k + j * kv_stride;
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < hd; ++i) lane[i % 8] = lane[i % 8] + q[i] * fp16_to_f32(kj[i]);
    const float r0 = lane[0] + lane[4], r1 = lane[1] + lane[5], r2 = lane[2] + lane[6], r3 = lane[3] + lane[7];
    const float s0 = r0 + r2, s1 = r1 + r3;
    scores[j] = (s0 + s1) * scale;
  }
  attn_softmax(scores, len, exp_row__ref);
  for (int i = 0; i < hd; ++i) out[i] = 0.f;
  for (int64_t j = 0; j < len; ++j) {
    const fp16_t* vj = v + j * kv_stride;
    for (int i = 0; i < hd; ++i) out[i] = out[i] + scores[j] * fp16_to_f32(vj[i]);
  }
}

}  // namespace lutllm
