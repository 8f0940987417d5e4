// Building blocks shared by every architecture: normalisation, rotary embedding, activations and
// causal attention over the fp16 KV cache. Plain float loops on the baseline ISA, except attention's
// per-head kernel (native/, dispatched); matmuls live in linear.h.
#pragma once
#include <cstdint>

#include "model.h"
#include "thread_pool.h"

namespace lutllm {

// out[t] = x[t] / rms(x[t]) * w  for t < n rows of d (out may alias x)
void rms_norm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* out);
// In-place rotary embedding of n rows, each n_heads heads of head_dim, row t at position pos0 + t.
void rope(float* x, int64_t n, int n_heads, int head_dim, int rope_dim, int64_t pos0, float base,
          float freq_scale, RopeMode mode);
// a[i] = act(a[i]) * b[i] with act = silu, gelu (tanh approximation) or relu^2
void gated_activation(FfnAct act, float* a, const float* b, int64_t n);
// Causal grouped-query attention for n queries at positions pos0.. against the cached positions
// before them (and their own).
//   q: (n, n_head*hd); kc, vc: fp16 rows (n_kv*hd) of this layer, row r holding position kv_base + r;
//   every position a query attends to must be there; out: (n, n_head*hd)
//   Each (query, head) runs the registry's attn_head kernel (same bits on every ISA).
//   window: 0 = all earlier positions, w > 0 = only the last w positions (the query's own included)
//   scale: multiplies q.k before the softmax
//   scores: per-thread scratch of n_ctx floats, pool.size() of them, contiguous
void attention(const float* q, const fp16_t* kc, const fp16_t* vc, int64_t kv_base, int64_t n, int64_t pos0,
               int n_head, int n_kv, int hd, int n_ctx, int window, float scale, float* out, float* scores,
               ThreadPool& pool);

}  // namespace lutllm
