// AVX2 (+F16C) attention of one query head over an fp16 KV cache: the bit-exact twin of
// native/ref/attention.cc (same lane order, multiply then add, no fma). Uses no shared inline code.
#include <immintrin.h>

#include "lutllm/kernel_decls.h"

namespace lutllm {
namespace {

inline __m256 load8_f16(const fp16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

inline float half_to_float(fp16_t h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }

// Lanes of one key, reduced in the order the reference states: (l_j + l_{j+4}), then (+ r_{j+2}), then s0 + s1.
inline float reduce8(__m256 lane) {
  const __m128 r = _mm_add_ps(_mm256_castps256_ps128(lane), _mm256_extractf128_ps(lane, 1));
  const __m128 s = _mm_add_ps(r, _mm_movehl_ps(r, r));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

// Scalar tail (hd % 8 elements) added to the lanes they belong to.
inline __m256 add_tail(__m256 lane, const float* q, const fp16_t* k, int hd8, int hd) {
  alignas(32) float l[8];
  _mm256_store_ps(l, lane);
  for (int i = hd8; i < hd; ++i) l[i % 8] = l[i % 8] + q[i] * half_to_float(k[i]);
  return _mm256_load_ps(l);
}

}  // namespace

void attn_head_f16__avx2(const float* q, const fp16_t* k, const fp16_t* v, int64_t len, int64_t kv_stride, int hd,
                         float scale, float* scores, float* out) {
  const int hd8 = hd & ~7;
  // scores: four keys at a time so that their add chains overlap
  int64_t j = 0;
  for (; j + 4 <= len; j += 4) {
    const fp16_t* k0 = k + j * kv_stride;
    const fp16_t* k1 = k0 + kv_stride;
    const fp16_t* k2 = k1 + kv_stride;
    const fp16_t* k3 = k2 + kv_stride;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < hd8; i += 8) {
      const __m256 qv = _mm256_loadu_ps(q + i);
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(qv, load8_f16(k0 + i)));
      a1 = _mm256_add_ps(a1, _mm256_mul_ps(qv, load8_f16(k1 + i)));
      a2 = _mm256_add_ps(a2, _mm256_mul_ps(qv, load8_f16(k2 + i)));
      a3 = _mm256_add_ps(a3, _mm256_mul_ps(qv, load8_f16(k3 + i)));
    }
    if (hd8 < hd) {
      a0 = add_tail(a0, q, k0, hd8, hd);
      a1 = add_tail(a1, q, k1, hd8, hd);
      a2 = add_tail(a2, q, k2, hd8, hd);
      a3 = add_tail(a3, q, k3, hd8, hd);
    }
    scores[j] = reduce8(a0) * scale;
    scores[j + 1] = reduce8(a1) * scale;
    scores[j + 2] = reduce8(a2) * scale;
    scores[j + 3] = reduce8(a3) * scale;
  }
  for (; j < len; ++j) {
    const fp16_t* kj = k + j * kv_stride;
    __m256 a = _mm256_setzero_ps();
    for (int i = 0; i < hd8; i += 8) a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_loadu_ps(q + i), load8_f16(kj + i)));
    if (hd8 < hd) a = add_tail(a, q, kj, hd8, hd);
    scores[j] = reduce8(a) * scale;
  }
  attn_softmax(scores, len, exp_row__avx2);

  // out = sum_j p_j v_j, 64 outputs (8 registers) at a time, keys in order
  int c = 0;
  for (; c + 64 <= hd8; c += 64) {
    __m256 o[8];
    for (int u = 0; u < 8; ++u) o[u] = _mm256_setzero_ps();
    for (j = 0; j < len; ++j) {
      const __m256 p = _mm256_set1_ps(scores[j]);
      const fp16_t* vj = v + j * kv_stride + c;
      for (int u = 0; u < 8; ++u) o[u] = _mm256_add_ps(o[u], _mm256_mul_ps(p, load8_f16(vj + 8 * u)));
    }
    for (int u = 0; u < 8; ++u) _mm256_storeu_ps(out + c + 8 * u, o[u]);
  }
  for (; c < hd8; c += 8) {
    __m256 o = _mm256_setzero_ps();
    for (j = 0; j < len; ++j)
      o = _mm256_add_ps(o, _mm256_mul_ps(_mm256_set1_ps(scores[j]), load8_f16(v + j * kv_stride + c)));
    _mm256_storeu_ps(out + c, o);
  }
  for (int i = hd8; i < hd; ++i) {
    float o = 0.f;
    for (j = 0; j < len; ++j) o = o + scores[j] * half_to_float(v[j * kv_stride + i]);
    out[i] = o;
  }
}

}  // namespace lutllm
