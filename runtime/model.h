// Decoder-only transformer models over a WeightStore: configuration, per-layer weights, and the
// per-session Context (KV cache + scratch) that runs forward passes. One graph per architecture
// family lives in model.cc; building blocks (norms, rope, attention) in ops.h.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "flash_ffn.h"
#include "linear.h"
#include "thread_pool.h"
#include "weights.h"

namespace lutllm {

enum class RopeMode { NORM = 0, NEOX = 2 };  // adjacent pairs (llama) / split halves (qwen2, gemma)

// Hyper-parameters read from GGUF metadata by the Python loader (which names the key at fault).
struct ModelConfig {
  std::string arch = "llama";
  int n_layer = 0, d_model = 0, n_head = 0, n_head_kv = 0, head_dim = 0, d_ff = 0, n_vocab = 0;
  int n_ctx_train = 0;
  float norm_eps = 1e-5f;
  float rope_base = 10000.f, rope_freq_scale = 1.f;
  int rope_dim = 0;
  RopeMode rope_mode = RopeMode::NORM;
  bool use_lut = true;  // run <= 4-bit weights through the table-lookup kernels (repacked at load)
  std::shared_ptr<const FlashFfnConfig> flash;  // set: FFN weights come from a flash file (flash_ffn.h)
};

struct LayerWeights {
  const WeightTensor* attn_norm = nullptr;   // (d_model) f32
  Linear wq, wk, wv, wo;                     // (n_head*hd x d), (n_kv*hd x d) x2, (d x n_head*hd)
  const WeightTensor* ffn_norm = nullptr;    // (d_model)
  Linear w_gate, w_up, w_down;               // (d_ff x d) x2, (d x d_ff)
};

class Model {
 public:
  // progress(done, total) is called after each layer is bound (and repacked, on the LUT path).
  using Progress = std::function<void(int done, int total)>;
  Model(const std::string& path, const ModelConfig& cfg, const std::vector<TensorDesc>& tensors, int n_threads,
        const Progress& progress = {});
  const ModelConfig& config() const { return cfg_; }
  const WeightStore& store() const { return store_; }
  ThreadPool& pool() const { return *pool_; }

  const WeightTensor* tok_embd = nullptr;    // (n_vocab x d) rows, any decodable type
  const WeightTensor* output_norm = nullptr; // (d)
  Linear output;                             // (n_vocab x d); the embedding when tied
  std::vector<LayerWeights> layers;
  std::shared_ptr<FlashFfn> flash_ffn;       // cfg.flash only: runs every FFN (w_gate/up/down unbound)

 private:
  ModelConfig cfg_;
  WeightStore store_;
  std::unique_ptr<ThreadPool> pool_;
};

// One sequence's state: KV cache for up to n_ctx positions plus scratch for batches of n_batch.
class Context {
 public:
  Context(std::shared_ptr<const Model> model, int n_ctx, int n_batch);
  int n_ctx() const { return n_ctx_; }
  int n_batch() const { return n_batch_; }
  int n_vocab() const { return model_->config().n_vocab; }
  // Evaluates tokens at positions [pos, pos + n); cache entries at >= pos are overwritten.
  // Writes logits (n_vocab floats per row) for all n tokens when all_logits, else for the last.
  void eval(const int32_t* tokens, int64_t n, int64_t pos, bool all_logits, float* logits);
  void request_cancel() { cancel_.store(true); }
  // KV-cache state (runtime/context_state.cc): the first n_past positions of every layer's keys
  // and values, laid out (n_layer, 2 [K, V], n_past, n_head_kv * head_dim) as float32.
  int64_t kv_state_floats(int64_t n_past) const;
  void save_kv(int64_t n_past, float* out) const;
  void load_kv(int64_t n_past, const float* in);

 private:
  void forward_batch(const int32_t* tokens, int64_t n, int64_t pos, bool all_logits, float* logits);

  std::shared_ptr<const Model> model_;
  int n_ctx_, n_batch_;
  std::vector<float> k_cache_, v_cache_;  // (n_layer, n_ctx, n_head_kv * head_dim)
  // scratch, sized for n_batch tokens
  std::vector<float> x_, xn_, q_, k_, v_, attn_, ff_a_, ff_b_, att_scores_;
  LinearInput in_;
  std::atomic<bool> cancel_{false};
};

}  // namespace lutllm
