// Context state save/load: copies the first n_past cached key/value rows of every layer out of or
// into a flat float32 buffer (the cache itself is fp16). Sliding-window layers hold only recent
// positions: older ones are saved as zeros and are not needed after a load, which continues at
// n_past. It does not serialise tokens or files; callers own that framing.
#include <algorithm>
#include <string>
#include <vector>

#include "error.h"
#include "model.h"

namespace lutllm {

namespace {
void check_n_past(int64_t n_past, int n_ctx) {
  if (n_past < 0 || n_past > n_ctx)
    throw Error("state length " + std::to_string(n_past) + " is outside the context (0.." + std::to_string(n_ctx) + ")");
}
}  // namespace

int64_t Context::kv_state_floats(int64_t n_past) const {
  check_n_past(n_past, n_ctx_);
  const ModelConfig& c = model_->config();
  return int64_t(c.n_layer) * 2 * n_past * int64_t(c.n_head_kv) * int64_t(c.head_dim);
}

void Context::save_kv(int64_t n_past, float* out) const {
  check_n_past(n_past, n_ctx_);
  const ModelConfig& c = model_->config();
  const size_t kv_dim = size_t(c.n_head_kv) * size_t(c.head_dim), rows = size_t(n_past) * kv_dim;
  for (int l = 0; l < c.n_layer; ++l) {
    // positions [lo, hi) are held, at row p - base
    const int64_t base = kv_base_[size_t(l)];
    const int64_t lo = std::min(base, n_past), hi = std::min(n_past, base + kv_rows_[size_t(l)]);
    for (const std::vector<fp16_t>* cache : {&k_cache_, &v_cache_}) {
      const fp16_t* src = cache->data() + kv_offset_[size_t(l)];
      std::fill(out, out + size_t(lo) * kv_dim, 0.0f);
      for (size_t i = size_t(lo) * kv_dim; i < size_t(hi) * kv_dim; ++i) out[i] = fp16_to_f32(src[i - size_t(base) * kv_dim]);
      std::fill(out + size_t(hi) * kv_dim, out + rows, 0.0f);
      out += rows;
    }
  }
}

void Context::load_kv(int64_t n_past, const float* in) {
  check_n_past(n_past, n_ctx_);
  const ModelConfig& c = model_->config();
  const size_t kv_dim = size_t(c.n_head_kv) * size_t(c.head_dim), rows = size_t(n_past) * kv_dim;
  for (int l = 0; l < c.n_layer; ++l) {
    // a sliding layer keeps the last window - 1 positions: what evaluation at n_past attends to (the
    // state may come from a context that held no more, even where this one could hold all)
    const int window = model_->layers[size_t(l)].window;
    const int64_t base = window > 0 ? std::max<int64_t>(0, n_past - window + 1) : 0;
    kv_base_[size_t(l)] = base;
    for (std::vector<fp16_t>* cache : {&k_cache_, &v_cache_}) {
      fp16_t* dst = cache->data() + kv_offset_[size_t(l)];
      for (size_t i = size_t(base) * kv_dim; i < rows; ++i) dst[i - size_t(base) * kv_dim] = f32_to_fp16(in[i]);
      in += rows;
    }
  }
  update_resume_floor();
}

}  // namespace lutllm
