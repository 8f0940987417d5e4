// Decoder-only transformer models over a WeightStore: configuration, per-layer weights, and the
// per-session Context (KV cache + scratch) that runs forward passes. Every supported family
// (llama, qwen2, gemma3, bitnet) is one pre-norm decoder block with optional parts; model.cc binds
// each family's tensors in one place, and the block runs the parts a layer has. Building blocks
// (norms, rope, activations, attention) are in ops.h.
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
// Gated feed-forward activation: act(gate) * up.
enum class FfnAct { SILU = 0, GELU_TANH = 1, RELU_SQR = 2 };

// Hyper-parameters read from GGUF metadata by the Python loader (which names the key at fault).
struct ModelConfig {
  std::string arch = "llama";
  int n_layer = 0, d_model = 0, n_head = 0, n_head_kv = 0, head_dim = 0, d_ff = 0, n_vocab = 0;
  int n_ctx_train = 0;
  float norm_eps = 1e-5f;
  float rope_base = 10000.f, rope_freq_scale = 1.f;
  int rope_dim = 0;
  RopeMode rope_mode = RopeMode::NORM;
  FfnAct ffn_act = FfnAct::SILU;
  float embd_scale = 0.f;   // token embeddings are multiplied by this when non-zero (gemma: sqrt(d_model))
  float attn_scale = 0.f;   // softmax(q.k * attn_scale); 0 means 1/sqrt(head_dim)
  // Per-layer attention window and rope (empty = every layer full causal with rope_base/rope_freq_scale).
  // A window w > 0 lets position p attend to positions p-w+1..p (gemma3's local layers).
  std::vector<int> layer_window;
  std::vector<float> layer_rope_base, layer_rope_freq_scale;
  bool use_lut = true;  // run <= 4-bit weights through the table-lookup kernels (repacked at load)
  std::shared_ptr<const FlashFfnConfig> flash;  // set: FFN weights come from a flash file (flash_ffn.h)
};

// A projection y = scale * (W x) + bias; scale (bitnet's per-tensor scales) and bias (qwen2's q/k/v
// biases) are optional.
struct Projection {
  Linear w;
  const float* bias = nullptr;  // out_features floats, or null
  float scale = 1.f;
  bool empty() const { return w.empty(); }
  void forward(LinearInput& in, float* y, ThreadPool& pool) const;
};

// One decoder block. Norm pointers are F32 tensors in the mapping; null means the part is absent.
struct LayerWeights {
  const float* attn_norm = nullptr;       // (d_model)
  Projection wq, wk, wv, wo;              // (n_head*hd x d), (n_kv*hd x d) x2, (d x n_head*hd)
  const float* q_norm = nullptr;          // (head_dim) per-head RMSNorm of q and k (gemma3)
  const float* k_norm = nullptr;
  const float* attn_sub_norm = nullptr;   // (n_head*hd) before wo (bitnet)
  const float* post_attn_norm = nullptr;  // (d_model) after wo, before the residual add (gemma3)
  const float* ffn_norm = nullptr;        // (d_model)
  Projection w_gate, w_up, w_down;        // (d_ff x d) x2, (d x d_ff)
  const float* ffn_sub_norm = nullptr;    // (d_ff) before w_down (bitnet)
  const float* post_ffn_norm = nullptr;   // (d_model) after w_down (gemma3)
  int window = 0;                         // attention window in positions; 0 = full causal
  float rope_base = 10000.f, rope_freq_scale = 1.f;
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
  const float* output_norm = nullptr;        // (d)
  Linear output;                             // (n_vocab x d); the embedding when tied
  std::vector<LayerWeights> layers;
  std::shared_ptr<FlashFfn> flash_ffn;       // cfg.flash only: runs every FFN (w_gate/up/down unbound)

 private:
  ModelConfig cfg_;
  WeightStore store_;
  std::unique_ptr<ThreadPool> pool_;
};

// Positions of KV cache one layer holds. A sliding-window layer (window w > 0) needs only the last
// w - 1 positions plus the batch being written, so it keeps a buffer of min(n_ctx, 2 * (w + n_batch))
// rows that slides forward (the rows still needed are moved to the front when it fills: one copy of
// w - 1 rows per w + 2 * n_batch positions). With full_window_kv, or w == 0, every position is kept.
// python/lutllm/memory.py counts the same.
int64_t kv_rows_for_layer(int window, int n_ctx, int n_batch, bool full_window_kv);

// One sequence's state: KV cache for up to n_ctx positions plus scratch for batches of n_batch.
// Sliding-window layers keep only recent positions (kv_rows_for_layer), so evaluation may restart at
// position 0 or at any position >= resume_floor(); earlier restarts are refused with an error.
class Context {
 public:
  Context(std::shared_ptr<const Model> model, int n_ctx, int n_batch, bool full_window_kv = false);
  int n_ctx() const { return n_ctx_; }
  int n_batch() const { return n_batch_; }
  int n_vocab() const { return model_->config().n_vocab; }
  // Evaluates tokens at positions [pos, pos + n); cache entries at >= pos are overwritten.
  // Writes logits (n_vocab floats per row) for all n tokens when all_logits, else for the last.
  void eval(const int32_t* tokens, int64_t n, int64_t pos, bool all_logits, float* logits);
  void request_cancel() { cancel_.store(true); }
  // Smallest position > 0 that eval may start at: the sliding-window layers hold every position a
  // query there attends to. 0 when nothing has been dropped.
  int64_t resume_floor() const { return resume_floor_; }
  uint64_t kv_cache_bytes() const { return 2 * k_cache_.size() * sizeof(fp16_t); }
  // KV-cache state (runtime/context_state.cc): the first n_past positions of every layer's keys
  // and values, laid out (n_layer, 2 [K, V], n_past, n_head_kv * head_dim) as float32 (the cache
  // holds fp16, so saving is exact and loading rounds to fp16). Positions a sliding-window layer no
  // longer holds are saved as zeros; after a load, evaluation continues at n_past (or restarts at 0).
  int64_t kv_state_floats(int64_t n_past) const;
  void save_kv(int64_t n_past, float* out) const;
  void load_kv(int64_t n_past, const float* in);

 private:
  void forward_batch(const int32_t* tokens, int64_t n, int64_t pos, bool all_logits, float* logits);
  void forward_layer(int l, int64_t n, int64_t pos);  // one block over x_, rows at positions pos..
  // Makes layer l's cache rows hold positions [max(0, pos - window + 1), pos + n) (sliding layers
  // move the rows still needed to the front when the batch would not fit); returns the row of pos.
  int64_t kv_make_room(int l, int64_t n, int64_t pos);
  void update_resume_floor();

  std::shared_ptr<const Model> model_;
  int n_ctx_, n_batch_;
  // fp16, as llama.cpp keeps it by default: half the memory and half the attention reads of
  // float32, at a rounding far below the weights' own. Layer l owns kv_rows_[l] rows of
  // n_head_kv * head_dim from element kv_offset_[l]; row r holds position kv_base_[l] + r.
  std::vector<fp16_t> k_cache_, v_cache_;
  std::vector<size_t> kv_offset_;
  std::vector<int64_t> kv_rows_, kv_base_;
  int64_t resume_floor_ = 0;
  // scratch, sized for n_batch tokens
  std::vector<float> x_, xn_, q_, k_, v_, attn_, ff_a_, ff_b_, att_scores_;
  LinearInput in_;
  std::atomic<bool> cancel_{false};
};

}  // namespace lutllm
