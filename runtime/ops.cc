// Implementations of the shared transformer building blocks (see ops.h).
#include "ops.h"

#include "lutllm/kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lutllm {


void rms_norm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * d;
    float* ot = out + t * d;
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += double(xt[i]) * xt[i];
    const float scale = float(1.0 / std::sqrt(ss / double(d) + double(eps)));
    for (int64_t i = 0; i < d; ++i) ot[i] = xt[i] * scale * w[i];
  }
}

void rope(float* x, int64_t n, int n_heads, int head_dim, int rope_dim, int64_t pos0, float base, float freq_scale,
          RopeMode mode) {
  const int half = rope_dim / 2;
  // cos/sin of every (token, pair): the same for q and k and for every layer with the same rope
  // settings, so the last table is kept (per thread) and rebuilt only when a setting changes
  struct Table {
    int64_t pos0 = -1, n = 0;
    float base = 0, freq_scale = 0;
    int rope_dim = 0;
    std::vector<float> cs;
  };
  thread_local Table tab;
  if (tab.pos0 != pos0 || tab.n != n || tab.base != base || tab.freq_scale != freq_scale || tab.rope_dim != rope_dim) {
    tab.cs.resize(size_t(n) * size_t(half) * 2);
    for (int64_t t = 0; t < n; ++t) {
      const double p = double(pos0 + t) * freq_scale;
      for (int i = 0; i < half; ++i) {
        const double theta = p * std::pow(double(base), -2.0 * i / rope_dim);
        tab.cs[size_t(t * half + i) * 2] = float(std::cos(theta));
        tab.cs[size_t(t * half + i) * 2 + 1] = float(std::sin(theta));
      }
    }
    tab.pos0 = pos0, tab.n = n, tab.base = base, tab.freq_scale = freq_scale, tab.rope_dim = rope_dim;
  }
  for (int64_t t = 0; t < n; ++t) {
    const float* cs = tab.cs.data() + size_t(t) * size_t(half) * 2;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * int64_t(head_dim);
      for (int i = 0; i < half; ++i) {
        const int i0 = mode == RopeMode::NORM ? 2 * i : i;
        const int i1 = mode == RopeMode::NORM ? 2 * i + 1 : i + half;
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float a = v[i0], b = v[i1];
        v[i0] = a * c - b * s;
        v[i1] = a * s + b * c;
      }
    }
  }
}

void gated_activation(FfnAct act, float* a, const float* b, int64_t n) {
  switch (act) {
    case FfnAct::SILU:  // the registry kernel: its exp is the same bits on every ISA (kernels.h)
      kernels().silu_mul(a, b, n);
      break;
    case FfnAct::GELU_TANH: {
      // 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)): the kernels' exp_fixed instead of libm's tanhf, whose
      // bits differ between x86-64 and aarch64 glibc (and gave the two builds different Gemma logits)
      const float c = 0.7978845608028654f;  // sqrt(2 / pi)
      for (int64_t i = 0; i < n; ++i) {
        const float v = a[i];
        const float u = c * (v + 0.044715f * v * v * v);
        a[i] = v / (1.f + exp_fixed(-2.f * u)) * b[i];
      }
      break;
    }
    case FfnAct::RELU_SQR:
      for (int64_t i = 0; i < n; ++i) {
        const float r = a[i] > 0.f ? a[i] : 0.f;
        a[i] = r * r * b[i];
      }
      break;
  }
}

void attention(const float* q, const fp16_t* kc, const fp16_t* vc, int64_t kv_base, int64_t n, int64_t pos0,
               int n_head, int n_kv, int hd, int n_ctx, int window, float scale, float* out, float* scores,
               ThreadPool& pool) {
  const int group = n_head / n_kv;
  const int64_t kv_stride = int64_t(n_kv) * hd;
  const AttnHeadFn head = kernels().attn_head;
  pool.parallel_for(n * n_head, [&](int64_t task, int thread) {
    const int64_t t = task / n_head;
    const int h = int(task % n_head), kvh = h / group;
    // causal: keys first..pos0+t, where a window keeps only the last `window` of them
    const int64_t first = window > 0 ? std::max<int64_t>(0, pos0 + t + 1 - window) : 0;
    const int64_t len = pos0 + t + 1 - first;
    const int64_t row = first - kv_base;
    head(q + (t * n_head + h) * int64_t(hd), kc + row * kv_stride + int64_t(kvh) * hd,
         vc + row * kv_stride + int64_t(kvh) * hd, len, kv_stride, hd, scale, scores + int64_t(thread) * n_ctx,
         out + (t * n_head + h) * int64_t(hd));
  });
}

}  // namespace lutllm
