// The FFN of every layer, run from a flash file's neuron bundles (layout: python/lutllm/convert.py)
// instead of resident matrices: gate/up/SwiGLU/down with the LUT kernels on staged bundle bytes.
// Modes: RESIDENT (all bundles read once at load), DENSE_STREAM (the first `resident_bundles` of
// each layer read once at load, the rest read per token with the next layer prefetched into a second
// buffer) and WINDOWED (a per-bundle score decides which bundles a token uses; those are kept in a
// per-layer slab while active within the last `window` tokens, misses read synchronously). The score
// is max |silu(gate)| over the bundle's neurons, from one of two sources: the exact gate rows, kept
// resident (slot = the bundle's up|down part), or, when the file has a low-rank predictor
// (Wg ~= A B, convert --predictor-rank), the predicted gate A (B x) with the gate rows not resident
// (slot = the whole bundle, the exact gate computed from it).
// RESIDENT and DENSE_STREAM give exactly the logits of the resident runtime on the same packed
// weights; so does WINDOWED with every bundle active (threshold < 0). It does not own attention or
// the residual stream.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "flash_io.h"
#include "linear.h"
#include "lutllm/lut.h"
#include "thread_pool.h"

namespace lutllm {

enum class FlashMode : int { RESIDENT = 0, DENSE_STREAM = 1, WINDOWED = 2 };

// What the flash file says about its bundles (lutllm.flash.* metadata plus tensor offsets).
struct FlashFfnConfig {
  std::string path;
  FlashMode mode = FlashMode::DENSE_STREAM;
  IoBackend io = IoBackend::AUTO;
  int io_threads = 4;
  int n_layer = 0, d_model = 0, d_ff = 0;
  int bundle_neurons = 0;                 // Gn
  std::vector<LutFormat> gu_format;       // per layer: gate and up rows
  std::vector<LutFormat> down_format;     // per layer: down K-slices
  std::vector<uint64_t> bundle_stride;    // per layer, multiple of 4096
  std::vector<uint64_t> layer_offset;     // per layer: absolute file offset of bundle 0
  // Neuron order: the file stores units of `unit_neurons` neurons in a permuted order (hot units
  // first); unit_order[l][u] is the original unit index of file unit u (empty: identity). The down
  // product puts every unit back at its original K position, so the order never changes a result.
  int unit_neurons = 0;
  std::vector<std::vector<int32_t>> unit_order;
  // DENSE_STREAM: bundles [0, resident_bundles) of every layer stay in memory (read once at load)
  int resident_bundles = 0;
  // WINDOWED only
  int window = 4;                         // a bundle stays cached while active in the last `window` tokens
  int slab_bundles = 0;                   // slab capacity per layer in bundles (0: all of them)
  std::vector<float> threshold;           // per layer: bundle active if max |silu(gate)| > threshold
                                          // (empty or < 0: every bundle active)
  int predictor_rank = 0;                 // > 0: score with the predictor factors passed to FlashFfn
};

// Time and bytes of the streamed path since load (or the last reset_stats()).
struct FlashStats {
  uint64_t bytes_read = 0;      // issued to storage (FlashReader::bytes_issued)
  double io_wait_s = 0;         // compute thread blocked on reads
  double compute_s = 0;         // gate/up/SwiGLU/down, gather included
  double gather_s = 0;          // assembling the down matrix from bundles
  uint64_t layers_run = 0;
  // WINDOWED: bundles used, read (cache misses) and evicted, summed over layers and tokens
  uint64_t bundles_active = 0, bundles_loaded = 0, bundles_evicted = 0;
  double cache_s = 0;           // window bookkeeping, evictions (swap-with-last copies), compaction
};

class FlashFfn {
 public:
  // Validates the layout against the model's shapes and the file; RESIDENT reads everything here.
  // WINDOWED with cfg.predictor_rank > 0: pred_a[l] (d_ff x rank, the file's neuron order) and
  // pred_b[l] (rank x d_model) per layer, the gate's low-rank factors (ignored in other modes).
  FlashFfn(const FlashFfnConfig& cfg, int n_layer, int d_model, int d_ff, std::vector<Linear> pred_a = {},
           std::vector<Linear> pred_b = {});
  ~FlashFfn();
  FlashFfn(const FlashFfn&) = delete;
  FlashFfn& operator=(const FlashFfn&) = delete;

  // y (n x d_model) = down(silu(gate x) * up x) for layer `layer`; `in` holds x (n x d_model) and
  // is shared with nothing else afterwards. ff_a, ff_b: scratch of n x d_ff floats each.
  // first_token: the batch holds the sequence's first token; WINDOWED then uses every bundle for it
  // (that token is the attention sink every later one reads, and its FFN input is unlike the rest:
  // skipping its bundles costs far more than any other token's: Qwen2.5-Coder-0.5B with the predictor
  // at density 0.9, perplexity +79 % without this rule, +57 % with it). Serialised internally.
  void forward(int layer, LinearInput& in, float* ff_a, float* ff_b, float* y, ThreadPool& pool,
               bool first_token = false);

  FlashMode mode() const { return cfg_.mode; }
  IoBackend io_backend() const { return reader_->backend(); }
  // Bytes this executor keeps allocated (staging / resident bundles + the down gather buffer).
  uint64_t memory_bytes() const;
  uint64_t layer_bytes(int layer) const;
  FlashStats stats() const;
  void reset_stats();
  // WINDOWED: set per-layer thresholds; record per-bundle scores (max |silu(gate)| per token) for
  // calibration while `on`; take_scores() returns and clears them (layer -> scores, token-major):
  // the scores the bundles are chosen by (predicted with a predictor), or with `exact` the scores of
  // the exact gate (NaN for bundles not active on a token). With `inputs`, the FFN inputs x are
  // recorded too (any mode; take_inputs: layer -> n x d_model floats, token-major).
  void set_thresholds(const std::vector<float>& t);
  void record_scores(bool on, bool inputs = false);
  std::vector<std::vector<float>> take_scores(bool exact = false);
  std::vector<std::vector<float>> take_inputs();
  bool has_predictor() const { return !pred_a_.empty(); }
  int bundle_count() const;

 private:
  int64_t bundle_size(int j) const;
  size_t gate_bytes(int layer, int64_t n) const;
  size_t down_bytes(int layer, int64_t n) const;
  // The layer's bundles in memory (waits for / issues its read) and starts the next layer's read.
  const uint8_t* stage(int layer);
  void compute(int layer, const uint8_t* bundles, LinearInput& in, float* ff_a, float* ff_b, float* y,
               ThreadPool& pool);
  void forward_windowed(int layer, LinearInput& in, float* ff_a, float* ff_b, float* y, ThreadPool& pool,
                        bool all_active);
  // Down product over a subset of bundles: their down K-slices are gathered into one packed (d x K)
  // LUT matrix (K offsets in ascending bundle order), so over every bundle it is the resident down
  // matrix byte for byte; h holds the (n x K) activations of the same neurons in the same order.
  struct DownPart {
    const uint8_t* data;  // d/16 row-block slices of n/G group blocks, `stride` bytes apart
    int64_t k0, n;        // K offset and neuron count
    size_t stride;
  };
  // The down parts of bundle j (its down part at `down`): one per unit, each at K offset kpos(unit
  // index in the file) -- its original position when the units are permuted.
  template <class KPos>
  void bundle_parts(int layer, int j, const uint8_t* down, KPos kpos, std::vector<DownPart>& out) const;
  int unit_src(int layer, int file_unit) const {
    return cfg_.unit_order.empty() ? file_unit : cfg_.unit_order[size_t(layer)][size_t(file_unit)];
  }
  // (n x d_ff) activations in file order -> original order (identity: returns `h` itself)
  const float* unpermute(int layer, const float* h, int64_t n);
  void gather_into(int layer, const std::vector<DownPart>& parts, int64_t K, uint8_t* dst, ThreadPool* pool);
  void gather_down(int layer, const std::vector<DownPart>& parts, int64_t K, ThreadPool& pool);  // into down_
  // y = D x h with D the packed (d x K) down matrix (default: down_)
  void down_matmul(int layer, const float* h, int64_t n, int64_t K, float* y, ThreadPool& pool,
                   const uint8_t* D = nullptr);

  FlashFfnConfig cfg_;
  std::unique_ptr<FlashReader> reader_;
  std::mutex mu_;
  // RESIDENT: one buffer with every layer; DENSE_STREAM: two slots
  AlignedBuffer all_;
  std::vector<uint64_t> all_offset_;
  std::vector<const uint8_t*> resident_down_;  // RESIDENT: each layer's gathered down matrix (in all_)
  AlignedBuffer hot_;                  // DENSE_STREAM: each layer's resident bundles
  std::vector<uint64_t> hot_offset_;
  AlignedBuffer slot_[2];
  int slot_layer_[2] = {-1, -1};
  ReadTicket slot_ticket_[2];
  std::vector<uint8_t> down_;  // gathered (d_model x d_ff) LUT matrix of the current layer
  LinearInput down_in_;
  FlashStats stats_;
  uint64_t bytes_at_reset_ = 0;

  // WINDOWED state
  struct Slab {
    AlignedBuffer buf;                 // capacity x ud_stride bytes: [up rows | down K-slice] per slot
    std::vector<int> slot_bundle;      // slot -> bundle (slots [0, used) are live)
    std::vector<int> bundle_slot;      // bundle -> slot or -1
    std::vector<int64_t> last_active;  // bundle -> token count when last active (-inf: never)
    int used = 0;
    int64_t tokens = 0;
  };
  AlignedBuffer gates_;                // every layer's gate rows, bundle after bundle
  std::vector<uint64_t> gate_offset_;  // layer -> offset in gates_
  std::vector<Slab> slabs_;
  std::vector<size_t> ud_stride_;      // layer -> slot size (up + down of a full bundle, 4096-rounded)
  int capacity_ = 0;
  bool recording_ = false, recording_inputs_ = false;
  std::vector<std::vector<float>> scores_, exact_scores_, inputs_;
  std::vector<float> score_tmp_, exact_tmp_;
  // predictor (WINDOWED, predictor_rank > 0): gate ~= A (B x); slots then hold whole bundles
  std::vector<Linear> pred_a_, pred_b_;
  std::vector<float> pred_z_;          // B x (n x rank)
  LinearInput pred_in_;
  // bytes of a bundle's front not kept in a slot: its gate rows when they are resident, else 0
  size_t slot_skip(int layer, int64_t n) const { return pred_a_.empty() ? gate_bytes(layer, n) : 0; }
  std::vector<float> h_;               // compacted activations of the active neurons (n x K)
  std::vector<float> hperm_;           // activations put back in the original neuron order
};

}  // namespace lutllm
