// Context state save/load: copies the first n_past cached key/value rows of every layer out of or
// into a flat float32 buffer (the cache itself is fp16). It does not serialise tokens or files;
// callers own that framing.
#include <string>

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
    const size_t base = size_t(l) * size_t(n_ctx_) * kv_dim;
    for (size_t i = 0; i < rows; ++i) out[i] = fp16_to_f32(k_cache_[base + i]);
    out += rows;
    for (size_t i = 0; i < rows; ++i) out[i] = fp16_to_f32(v_cache_[base + i]);
    out += rows;
  }
}

void Context::load_kv(int64_t n_past, const float* in) {
  check_n_past(n_past, n_ctx_);
  const ModelConfig& c = model_->config();
  const size_t kv_dim = size_t(c.n_head_kv) * size_t(c.head_dim), rows = size_t(n_past) * kv_dim;
  for (int l = 0; l < c.n_layer; ++l) {
    const size_t base = size_t(l) * size_t(n_ctx_) * kv_dim;
    for (size_t i = 0; i < rows; ++i) k_cache_[base + i] = f32_to_fp16(in[i]);
    in += rows;
    for (size_t i = 0; i < rows; ++i) v_cache_[base + i] = f32_to_fp16(in[i]);
    in += rows;
  }
}

}  // namespace lutllm
