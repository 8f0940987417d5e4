// Model loading (tensor binding + shape checks) and the forward pass of the llama family.
// Other architectures add their binding and graph here, reusing ops.h and linear.h.
#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "error.h"
#include "ops.h"

namespace lutllm {

namespace {

void expect_shape(const WeightTensor& t, int64_t ne0, int64_t ne1) {
  const int64_t want_rows = ne1;
  if (t.ne[0] != ne0 || t.rows() != want_rows || t.ne[2] != 1 || t.ne[3] != 1)
    throw Error("tensor '" + t.name + "' has shape [" + std::to_string(t.ne[0]) + ", " + std::to_string(t.ne[1]) +
                "], expected [" + std::to_string(ne0) + ", " + std::to_string(ne1) + "] for this architecture");
}

const WeightTensor* norm_weight(const WeightStore& s, const std::string& name, int64_t d) {
  const WeightTensor& t = s.get(name);
  if (t.type != GgmlType::F32) throw Error("tensor '" + name + "' must be F32, is " + type_traits(t.type).name);
  expect_shape(t, d, 1);
  return &t;
}

Linear linear(const WeightStore& s, const std::string& name, int64_t in, int64_t out, bool use_lut) {
  const WeightTensor& t = s.get(name);
  expect_shape(t, in, out);
  return Linear(&t, use_lut);
}

}  // namespace

Model::Model(const std::string& path, const ModelConfig& cfg, const std::vector<TensorDesc>& tensors, int n_threads,
             const Progress& progress)
    : cfg_(cfg), store_(path, tensors) {
  if (cfg.arch != "llama") throw Error(path + ": architecture '" + cfg.arch + "' is not supported (supported: llama)");
  if (cfg.n_layer <= 0 || cfg.d_model <= 0 || cfg.n_head <= 0 || cfg.n_head_kv <= 0 || cfg.head_dim <= 0 ||
      cfg.d_ff <= 0 || cfg.n_vocab <= 0)
    throw Error(path + ": model hyper-parameters must be positive");
  if (cfg.n_head % cfg.n_head_kv != 0) throw Error(path + ": head_count is not a multiple of head_count_kv");
  if (cfg.rope_dim <= 0 || cfg.rope_dim > cfg.head_dim || cfg.rope_dim % 2)
    throw Error(path + ": rope dimension " + std::to_string(cfg.rope_dim) + " is invalid for head size " +
                std::to_string(cfg.head_dim));
  const int64_t d = cfg.d_model, hd = cfg.head_dim, q_dim = int64_t(cfg.n_head) * hd, kv_dim = int64_t(cfg.n_head_kv) * hd;

  tok_embd = &store_.get("token_embd.weight");
  expect_shape(*tok_embd, d, cfg.n_vocab);
  if (!kernels().dequant[int(tok_embd->type)])
    throw Error("tensor 'token_embd.weight': type " + std::string(type_traits(tok_embd->type).name) + " is not supported");
  output_norm = norm_weight(store_, "output_norm.weight", d);
  if (store_.find("output.weight")) output = linear(store_, "output.weight", d, cfg.n_vocab, cfg.use_lut);
  else output = Linear(tok_embd);  // tied embeddings

  if (cfg.flash) flash_ffn = std::make_shared<FlashFfn>(*cfg.flash, cfg.n_layer, cfg.d_model, cfg.d_ff);  // flash hook
  layers.resize(size_t(cfg.n_layer));
  for (int i = 0; i < cfg.n_layer; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LayerWeights& L = layers[size_t(i)];
    L.attn_norm = norm_weight(store_, p + "attn_norm.weight", d);
    L.wq = linear(store_, p + "attn_q.weight", d, q_dim, cfg.use_lut);
    L.wk = linear(store_, p + "attn_k.weight", d, kv_dim, cfg.use_lut);
    L.wv = linear(store_, p + "attn_v.weight", d, kv_dim, cfg.use_lut);
    L.wo = linear(store_, p + "attn_output.weight", q_dim, d, cfg.use_lut);
    L.ffn_norm = norm_weight(store_, p + "ffn_norm.weight", d);
    if (!flash_ffn) {  // flash hook: a flash file's FFN has no resident matrices
      L.w_gate = linear(store_, p + "ffn_gate.weight", d, cfg.d_ff, cfg.use_lut);
      L.w_up = linear(store_, p + "ffn_up.weight", d, cfg.d_ff, cfg.use_lut);
      L.w_down = linear(store_, p + "ffn_down.weight", cfg.d_ff, d, cfg.use_lut);
    }
    if (progress) progress(i + 1, cfg.n_layer);
  }
  pool_ = std::make_unique<ThreadPool>(n_threads > 0 ? n_threads : physical_core_count());
}

Context::Context(std::shared_ptr<const Model> model, int n_ctx, int n_batch) : model_(std::move(model)) {
  const ModelConfig& c = model_->config();
  if (n_ctx <= 0) throw Error("n_ctx must be positive, got " + std::to_string(n_ctx));
  if (n_batch <= 0) throw Error("n_batch must be positive, got " + std::to_string(n_batch));
  n_ctx_ = n_ctx;
  n_batch_ = std::min(n_batch, n_ctx);
  const size_t kv_dim = size_t(c.n_head_kv) * size_t(c.head_dim);
  k_cache_.assign(size_t(c.n_layer) * size_t(n_ctx_) * kv_dim, 0.f);
  v_cache_.assign(k_cache_.size(), 0.f);
  const size_t nb = size_t(n_batch_), q_dim = size_t(c.n_head) * size_t(c.head_dim);
  x_.resize(nb * size_t(c.d_model));
  xn_.resize(nb * std::max(size_t(c.d_model), q_dim));
  q_.resize(nb * q_dim);
  k_.resize(nb * kv_dim);
  v_.resize(nb * kv_dim);
  attn_.resize(nb * q_dim);
  ff_a_.resize(nb * size_t(c.d_ff));
  ff_b_.resize(nb * size_t(c.d_ff));
  att_scores_.resize(size_t(model_->pool().size()) * size_t(n_ctx_));
}

void Context::eval(const int32_t* tokens, int64_t n, int64_t pos, bool all_logits, float* logits) {
  const ModelConfig& c = model_->config();
  if (n <= 0) throw Error("eval needs at least one token");
  if (pos < 0 || pos + n > n_ctx_)
    throw Error("positions " + std::to_string(pos) + ".." + std::to_string(pos + n - 1) + " exceed the context size " +
                std::to_string(n_ctx_));
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= c.n_vocab)
      throw Error("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (0.." + std::to_string(c.n_vocab - 1) + ")");
  cancel_.store(false);
  for (int64_t done = 0; done < n;) {
    const int64_t m = std::min<int64_t>(n_batch_, n - done);
    const bool last = done + m == n;
    float* out = all_logits ? logits + done * c.n_vocab : (last ? logits : nullptr);
    forward_batch(tokens + done, m, pos + done, all_logits, out);
    done += m;
  }
}

void Context::forward_batch(const int32_t* tokens, int64_t n, int64_t pos, bool all_logits, float* logits) {
  const Model& M = *model_;
  const ModelConfig& c = M.config();
  ThreadPool& pool = M.pool();
  const int64_t d = c.d_model, hd = c.head_dim, q_dim = int64_t(c.n_head) * hd, kv_dim = int64_t(c.n_head_kv) * hd;
  float* x = x_.data();

  // token embedding: decode one row per token
  DequantRowFn dq = kernels().dequant[int(M.tok_embd->type)];
  for (int64_t t = 0; t < n; ++t) dq(M.tok_embd->data + size_t(tokens[t]) * M.tok_embd->row_bytes, x + t * d, d);

  for (int l = 0; l < c.n_layer; ++l) {
    if (cancel_.load(std::memory_order_relaxed)) throw Cancelled();
    const LayerWeights& L = M.layers[size_t(l)];
    float* kc = k_cache_.data() + size_t(l) * size_t(n_ctx_) * size_t(kv_dim);
    float* vc = v_cache_.data() + size_t(l) * size_t(n_ctx_) * size_t(kv_dim);

    // attention block
    rms_norm(x, reinterpret_cast<const float*>(L.attn_norm->data), n, d, c.norm_eps, xn_.data());
    in_.set(xn_.data(), n, d);
    L.wq.forward(in_, q_.data(), pool);
    L.wk.forward(in_, k_.data(), pool);
    L.wv.forward(in_, v_.data(), pool);
    rope(q_.data(), n, c.n_head, int(hd), c.rope_dim, pos, c.rope_base, c.rope_freq_scale, c.rope_mode);
    rope(k_.data(), n, c.n_head_kv, int(hd), c.rope_dim, pos, c.rope_base, c.rope_freq_scale, c.rope_mode);
    std::memcpy(kc + pos * kv_dim, k_.data(), size_t(n * kv_dim) * sizeof(float));
    std::memcpy(vc + pos * kv_dim, v_.data(), size_t(n * kv_dim) * sizeof(float));
    attention(q_.data(), kc, vc, n, pos, c.n_head, c.n_head_kv, int(hd), n_ctx_, attn_.data(), att_scores_.data(), pool);
    in_.set(attn_.data(), n, q_dim);
    L.wo.forward(in_, xn_.data(), pool);
    for (int64_t i = 0; i < n * d; ++i) x[i] += xn_[size_t(i)];

    // feed-forward block (SwiGLU)
    rms_norm(x, reinterpret_cast<const float*>(L.ffn_norm->data), n, d, c.norm_eps, xn_.data());
    in_.set(xn_.data(), n, d);
    if (M.flash_ffn) {  // flash hook: the FFN streams from storage (runtime/flash_ffn.h)
      M.flash_ffn->forward(l, in_, ff_a_.data(), ff_b_.data(), xn_.data(), pool);
    } else {
      L.w_gate.forward(in_, ff_a_.data(), pool);
      L.w_up.forward(in_, ff_b_.data(), pool);
      silu_mul(ff_a_.data(), ff_b_.data(), n * c.d_ff);
      in_.set(ff_a_.data(), n, c.d_ff);
      L.w_down.forward(in_, xn_.data(), pool);
    }
    for (int64_t i = 0; i < n * d; ++i) x[i] += xn_[size_t(i)];
  }
  if (!logits) return;  // an earlier batch of a longer prompt: only the cache matters

  // output head on all rows or just the last one
  const int64_t first = all_logits ? 0 : n - 1, m = n - first;
  rms_norm(x + first * d, reinterpret_cast<const float*>(M.output_norm->data), m, d, c.norm_eps, xn_.data());
  in_.set(xn_.data(), m, d);
  M.output.forward(in_, logits, pool);
}

}  // namespace lutllm
