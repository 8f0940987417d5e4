// Model loading (tensor binding + shape checks, one binder per architecture family) and the forward
// pass: one pre-norm decoder block whose optional parts (biases, q/k norms, sub-norms, post-norms,
// per-tensor scales, sliding windows) are switched on by what each family binds.
#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>

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

// Binds weights of one model file, naming the tensor at fault in every error.
class Binder {
 public:
  Binder(const WeightStore& s, bool use_lut, ThreadPool* pool = nullptr) : s_(s), use_lut_(use_lut), pool_(pool) {}

  bool has(const std::string& name) const { return s_.find(name) != nullptr; }

  // A 1-D F32 vector of d values (norm weights, biases).
  const float* vec(const std::string& name, int64_t d) const {
    const WeightTensor& t = s_.get(name);
    if (t.type != GgmlType::F32) throw Error("tensor '" + name + "' must be F32, is " + type_traits(t.type).name);
    expect_shape(t, d, 1);
    return reinterpret_cast<const float*>(t.data);
  }
  const float* opt_vec(const std::string& name, int64_t d) const { return has(name) ? vec(name, d) : nullptr; }

  // base.weight (in -> out) plus base.bias and base.scale when the file has them.
  Projection proj(const std::string& base, int64_t in, int64_t out, bool require_bias = false) const {
    Projection p;
    const WeightTensor& t = s_.get(base + ".weight");
    expect_shape(t, in, out);
    p.w = Linear(&t, use_lut_, pool_);
    if (require_bias || has(base + ".bias")) p.bias = vec(base + ".bias", out);
    if (has(base + ".scale")) {
      const float* sc = vec(base + ".scale", 1);
      if (!std::isfinite(sc[0])) throw Error("tensor '" + base + ".scale' is not finite");
      p.scale = sc[0];
    }
    return p;
  }

 private:
  const WeightStore& s_;
  bool use_lut_;
  ThreadPool* pool_;  // repacks weights in parallel (Linear)
};

// Which optional parts of the block each family has (required when listed here).
struct ArchParts {
  const char* name;
  bool qkv_bias;    // qwen2
  bool qk_norm;     // gemma3
  bool post_norms;  // gemma3
  bool sub_norms;   // bitnet
};
constexpr ArchParts kArchitectures[] = {
    {"llama", false, false, false, false},
    {"qwen2", true, false, false, false},
    {"gemma3", false, true, true, false},
    {"bitnet", false, false, false, true},
};

const ArchParts& arch_parts(const std::string& path, const std::string& arch) {
  std::string names;
  for (const ArchParts& a : kArchitectures) {
    if (arch == a.name) return a;
    names += std::string(names.empty() ? "" : ", ") + a.name;
  }
  throw Error(path + ": architecture '" + arch + "' is not supported (supported: " + names + ")");
}

}  // namespace

namespace {
// y = y * scale + bias on n rows of a projection's output, columns [c0, c1) (each part only where the file has it)
void scale_bias(const Projection& p, int64_t n, float* y, int64_t c0 = 0, int64_t c1 = -1) {
  const float scale = p.scale;
  const float* bias = p.bias;
  if (scale == 1.f && !bias) return;
  const int64_t m = p.w.out_features();
  if (c1 < 0) c1 = m;
  for (int64_t t = 0; t < n; ++t) {
    float* yt = y + t * m;
    if (scale != 1.f)
      for (int64_t i = c0; i < c1; ++i) yt[i] *= scale;
    if (bias)
      for (int64_t i = c0; i < c1; ++i) yt[i] += bias[i];
  }
}

// Projections reading one input, in one pool loop (Linear::forward_many), then their epilogues.
void forward_projections(std::initializer_list<std::pair<const Projection*, float*>> ps, LinearInput& in,
                         ThreadPool& pool) {
  const Linear* ls[4];
  float* ys[4];
  int n = 0;
  for (const auto& p : ps) {
    ls[n] = &p.first->w;
    ys[n++] = p.second;
  }
  Linear::forward_many(ls, ys, n, in, pool);
  for (const auto& p : ps) scale_bias(*p.first, in.n(), p.second);
}

// a = act(gate x) * (up x): gate and up in one pool loop, each task computing the same rows of both
// and applying the activation to them (no serial pass over d_ff values between the loops).
void forward_gated(const Projection& gate, const Projection& up, FfnAct act, LinearInput& in, float* a, float* b,
                   ThreadPool& pool) {
  const Linear* ls[2] = {&gate.w, &up.w};
  float* ys[2] = {a, b};
  const int64_t n = in.n(), m = gate.w.out_features();
  const Linear::RowEpilogue epilogue = [&](int64_t r0, int64_t r1) {
    scale_bias(gate, n, a, r0, r1);
    scale_bias(up, n, b, r0, r1);
    for (int64_t t = 0; t < n; ++t) gated_activation(act, a + t * m + r0, b + t * m + r0, r1 - r0);
  };
  Linear::forward_many(ls, ys, 2, in, pool, &epilogue);
}
}  // namespace

void Projection::forward(LinearInput& in, float* y, ThreadPool& pool) const {
  w.forward(in, y, pool);
  scale_bias(*this, in.n(), y);
}

Model::Model(const std::string& path, const ModelConfig& cfg, const std::vector<TensorDesc>& tensors, int n_threads,
             const Progress& progress)
    : cfg_(cfg), store_(path, tensors) {
  const ArchParts& parts = arch_parts(path, cfg.arch);
  if (cfg.n_layer <= 0 || cfg.d_model <= 0 || cfg.n_head <= 0 || cfg.n_head_kv <= 0 || cfg.head_dim <= 0 ||
      cfg.d_ff <= 0 || cfg.n_vocab <= 0)
    throw Error(path + ": model hyper-parameters must be positive");
  if (cfg.n_head % cfg.n_head_kv != 0) throw Error(path + ": head_count is not a multiple of head_count_kv");
  if (cfg.rope_dim <= 0 || cfg.rope_dim > cfg.head_dim || cfg.rope_dim % 2)
    throw Error(path + ": rope dimension " + std::to_string(cfg.rope_dim) + " is invalid for head size " +
                std::to_string(cfg.head_dim));
  auto per_layer_ok = [&](size_t size) { return size == 0 || size == size_t(cfg.n_layer); };
  if (!per_layer_ok(cfg.layer_window.size()) || !per_layer_ok(cfg.layer_rope_base.size()) ||
      !per_layer_ok(cfg.layer_rope_freq_scale.size()))
    throw Error(path + ": per-layer attention settings must list one value per layer");
  const int64_t d = cfg.d_model, hd = cfg.head_dim, q_dim = int64_t(cfg.n_head) * hd, kv_dim = int64_t(cfg.n_head_kv) * hd;
  pool_ = std::make_unique<ThreadPool>(n_threads > 0 ? n_threads : physical_core_count());
  const Binder b(store_, cfg.use_lut, pool_.get());

  tok_embd = &store_.get("token_embd.weight");
  expect_shape(*tok_embd, d, cfg.n_vocab);
  if (!kernels().dequant[int(tok_embd->type)])
    throw Error("tensor 'token_embd.weight': type " + std::string(type_traits(tok_embd->type).name) + " is not supported");
  output_norm = b.vec("output_norm.weight", d);
  if (b.has("output.weight")) output = b.proj("output", d, cfg.n_vocab).w;
  else output = Linear(tok_embd);  // tied embeddings

  if (cfg.flash) {  // flash hook: the streamed FFN computes silu(gate) * up, then down, nothing else
    if (cfg.ffn_act != FfnAct::SILU || parts.sub_norms)
      throw Error(path + ": flash files support SiLU-gated FFNs without sub-norms (llama, qwen2), not '" + cfg.arch + "'");
    std::vector<Linear> pred_a, pred_b;  // windowed mode's gate predictor (blk.N.ffn_pred_{a,b}), mapped as is
    const Binder mapped(store_, false);
    if (cfg.flash->mode == FlashMode::WINDOWED && cfg.flash->predictor_rank > 0)
      for (int i = 0; i < cfg.n_layer; ++i) {
        const std::string p = "blk." + std::to_string(i) + ".ffn_pred_";
        pred_a.push_back(mapped.proj(p + "a", cfg.flash->predictor_rank, cfg.d_ff).w);
        pred_b.push_back(mapped.proj(p + "b", cfg.d_model, cfg.flash->predictor_rank).w);
      }
    flash_ffn = std::make_shared<FlashFfn>(*cfg.flash, cfg.n_layer, cfg.d_model, cfg.d_ff, std::move(pred_a),
                                           std::move(pred_b));
  }
  layers.resize(size_t(cfg.n_layer));
  for (int i = 0; i < cfg.n_layer; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LayerWeights& L = layers[size_t(i)];
    L.attn_norm = b.vec(p + "attn_norm.weight", d);
    L.wq = b.proj(p + "attn_q", d, q_dim, parts.qkv_bias);
    L.wk = b.proj(p + "attn_k", d, kv_dim, parts.qkv_bias);
    L.wv = b.proj(p + "attn_v", d, kv_dim, parts.qkv_bias);
    L.wo = b.proj(p + "attn_output", q_dim, d);
    if (parts.qk_norm) {
      L.q_norm = b.vec(p + "attn_q_norm.weight", hd);
      L.k_norm = b.vec(p + "attn_k_norm.weight", hd);
    }
    if (parts.post_norms) {
      L.post_attn_norm = b.vec(p + "post_attention_norm.weight", d);
      L.post_ffn_norm = b.vec(p + "post_ffw_norm.weight", d);
    }
    if (parts.sub_norms) {
      L.attn_sub_norm = b.vec(p + "attn_sub_norm.weight", q_dim);
      L.ffn_sub_norm = b.vec(p + "ffn_sub_norm.weight", cfg.d_ff);
    }
    L.ffn_norm = b.vec(p + "ffn_norm.weight", d);
    if (!flash_ffn) {  // flash hook: a flash file's FFN has no resident matrices
      L.w_gate = b.proj(p + "ffn_gate", d, cfg.d_ff);
      L.w_up = b.proj(p + "ffn_up", d, cfg.d_ff);
      L.w_down = b.proj(p + "ffn_down", cfg.d_ff, d);
    }
    L.window = cfg.layer_window.empty() ? 0 : cfg.layer_window[size_t(i)];
    if (L.window < 0) throw Error(path + ": layer " + std::to_string(i) + " has a negative attention window");
    L.rope_base = cfg.layer_rope_base.empty() ? cfg.rope_base : cfg.layer_rope_base[size_t(i)];
    L.rope_freq_scale = cfg.layer_rope_freq_scale.empty() ? cfg.rope_freq_scale : cfg.layer_rope_freq_scale[size_t(i)];
    if (progress) progress(i + 1, cfg.n_layer);
  }
}

int64_t kv_rows_for_layer(int window, int n_ctx, int n_batch, bool full_window_kv) {
  if (window <= 0 || full_window_kv) return n_ctx;
  return std::min<int64_t>(n_ctx, 2 * (int64_t(window) + std::min(n_batch, n_ctx)));
}

Context::Context(std::shared_ptr<const Model> model, int n_ctx, int n_batch, bool full_window_kv)
    : model_(std::move(model)) {
  const ModelConfig& c = model_->config();
  if (n_ctx <= 0) throw Error("n_ctx must be positive, got " + std::to_string(n_ctx));
  if (n_batch <= 0) throw Error("n_batch must be positive, got " + std::to_string(n_batch));
  n_ctx_ = n_ctx;
  n_batch_ = std::min(n_batch, n_ctx);
  const size_t kv_dim = size_t(c.n_head_kv) * size_t(c.head_dim);
  size_t rows = 0;
  for (int l = 0; l < c.n_layer; ++l) {
    kv_offset_.push_back(rows * kv_dim);
    kv_rows_.push_back(kv_rows_for_layer(model_->layers[size_t(l)].window, n_ctx_, n_batch_, full_window_kv));
    kv_base_.push_back(0);
    rows += size_t(kv_rows_.back());
  }
  k_cache_.assign(rows * kv_dim, fp16_t(0));
  v_cache_.assign(k_cache_.size(), fp16_t(0));
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
  if (pos > 0 && pos < resume_floor_)
    throw Error("cannot continue at position " + std::to_string(pos) +
                ": the sliding-window layers no longer hold the positions it attends to (continue at " +
                std::to_string(resume_floor_) + " or later, or start again at 0)");
  cancel_.store(false);
  for (int64_t done = 0; done < n;) {
    const int64_t m = std::min<int64_t>(n_batch_, n - done);
    const bool last = done + m == n;
    float* out = all_logits ? logits + done * c.n_vocab : (last ? logits : nullptr);
    try {
      forward_batch(tokens + done, m, pos + done, all_logits, out);
    } catch (...) {
      update_resume_floor();
      throw;
    }
    done += m;
  }
  update_resume_floor();
}

int64_t Context::kv_make_room(int l, int64_t n, int64_t pos) {
  const int window = model_->layers[size_t(l)].window;
  int64_t& base = kv_base_[size_t(l)];
  const int64_t rows = kv_rows_[size_t(l)];
  if (pos + n - base <= rows && pos >= base) return pos - base;
  // only sliding layers get here: keep the positions the batch attends to before pos
  const int64_t lo = std::max<int64_t>(0, pos - window + 1);
  if (lo < base) {  // eval() lets only pos == 0 through here
    base = 0;
    return pos;
  }
  const size_t kv_dim = size_t(model_->config().n_head_kv) * size_t(model_->config().head_dim);
  const size_t from = size_t(lo - base) * kv_dim, count = size_t(pos - lo) * kv_dim;
  fp16_t* kc = k_cache_.data() + kv_offset_[size_t(l)];
  fp16_t* vc = v_cache_.data() + kv_offset_[size_t(l)];
  std::memmove(kc, kc + from, count * sizeof(fp16_t));
  std::memmove(vc, vc + from, count * sizeof(fp16_t));
  base = lo;
  return pos - base;
}

void Context::update_resume_floor() {
  resume_floor_ = 0;
  for (size_t l = 0; l < kv_base_.size(); ++l)
    if (kv_base_[l] > 0) resume_floor_ = std::max<int64_t>(resume_floor_, kv_base_[l] + model_->layers[l].window - 1);
}

void Context::forward_batch(const int32_t* tokens, int64_t n, int64_t pos, bool all_logits, float* logits) {
  const Model& M = *model_;
  const ModelConfig& c = M.config();
  const int64_t d = c.d_model;
  float* x = x_.data();

  // token embedding: decode one row per token
  DequantRowFn dq = kernels().dequant[int(M.tok_embd->type)];
  for (int64_t t = 0; t < n; ++t) dq(M.tok_embd->data + size_t(tokens[t]) * M.tok_embd->row_bytes, x + t * d, d);
  if (c.embd_scale != 0.f)
    for (int64_t i = 0; i < n * d; ++i) x[i] *= c.embd_scale;

  for (int l = 0; l < c.n_layer; ++l) {
    if (cancel_.load(std::memory_order_relaxed)) throw Cancelled();
    forward_layer(l, n, pos);
  }
  if (!logits) return;  // an earlier batch of a longer prompt: only the cache matters

  // output head on all rows or just the last one
  const int64_t first = all_logits ? 0 : n - 1, m = n - first;
  rms_norm(x + first * d, M.output_norm, m, d, c.norm_eps, xn_.data());
  in_.set(xn_.data(), m, d);
  M.output.forward(in_, logits, M.pool());
}

void Context::forward_layer(int l, int64_t n, int64_t pos) {
  const Model& M = *model_;
  const ModelConfig& c = M.config();
  ThreadPool& pool = M.pool();
  const LayerWeights& L = M.layers[size_t(l)];
  const int64_t d = c.d_model, hd = c.head_dim, q_dim = int64_t(c.n_head) * hd, kv_dim = int64_t(c.n_head_kv) * hd;
  const float eps = c.norm_eps;
  float* x = x_.data();
  fp16_t* kc = k_cache_.data() + kv_offset_[size_t(l)];
  fp16_t* vc = v_cache_.data() + kv_offset_[size_t(l)];

  // attention block
  rms_norm(x, L.attn_norm, n, d, eps, xn_.data());
  in_.set(xn_.data(), n, d);
  forward_projections({{&L.wq, q_.data()}, {&L.wk, k_.data()}, {&L.wv, v_.data()}}, in_, pool);
  if (L.q_norm) rms_norm(q_.data(), L.q_norm, n * c.n_head, hd, eps, q_.data());
  if (L.k_norm) rms_norm(k_.data(), L.k_norm, n * c.n_head_kv, hd, eps, k_.data());
  rope(q_.data(), n, c.n_head, int(hd), c.rope_dim, pos, L.rope_base, L.rope_freq_scale, c.rope_mode);
  rope(k_.data(), n, c.n_head_kv, int(hd), c.rope_dim, pos, L.rope_base, L.rope_freq_scale, c.rope_mode);
  const int64_t row = kv_make_room(l, n, pos);
  for (int64_t i = 0; i < n * kv_dim; ++i) {
    kc[row * kv_dim + i] = f32_to_fp16(k_[size_t(i)]);
    vc[row * kv_dim + i] = f32_to_fp16(v_[size_t(i)]);
  }
  const float scale = c.attn_scale != 0.f ? c.attn_scale : 1.f / std::sqrt(float(hd));
  attention(q_.data(), kc, vc, kv_base_[size_t(l)], n, pos, c.n_head, c.n_head_kv, int(hd), n_ctx_, L.window, scale, attn_.data(),
            att_scores_.data(), pool);
  if (L.attn_sub_norm) rms_norm(attn_.data(), L.attn_sub_norm, n, q_dim, eps, attn_.data());
  in_.set(attn_.data(), n, q_dim);
  L.wo.forward(in_, xn_.data(), pool);
  if (L.post_attn_norm) rms_norm(xn_.data(), L.post_attn_norm, n, d, eps, xn_.data());
  for (int64_t i = 0; i < n * d; ++i) x[i] += xn_[size_t(i)];

  // feed-forward block: act(gate) * up, then down
  rms_norm(x, L.ffn_norm, n, d, eps, xn_.data());
  in_.set(xn_.data(), n, d);
  if (M.flash_ffn) {  // flash hook: the FFN streams from storage (runtime/flash_ffn.h)
    M.flash_ffn->forward(l, in_, ff_a_.data(), ff_b_.data(), xn_.data(), pool, pos == 0);
  } else {
    forward_gated(L.w_gate, L.w_up, c.ffn_act, in_, ff_a_.data(), ff_b_.data(), pool);
    if (L.ffn_sub_norm) rms_norm(ff_a_.data(), L.ffn_sub_norm, n, c.d_ff, eps, ff_a_.data());
    in_.set(ff_a_.data(), n, c.d_ff);
    L.w_down.forward(in_, xn_.data(), pool);
  }
  if (L.post_ffn_norm) rms_norm(xn_.data(), L.post_ffn_norm, n, d, eps, xn_.data());
  for (int64_t i = 0; i < n * d; ++i) x[i] += xn_[size_t(i)];
}

}  // namespace lutllm
