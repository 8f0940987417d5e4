// The FFN of every layer, run from a flash file's neuron bundles (layout: python/lutllm/convert.py)
// instead of resident matrices: gate/up/SwiGLU/down with the LUT kernels on staged bundle bytes.
// Modes: RESIDENT (all bundles read once at load) and DENSE_STREAM (each layer's bundles read per
// token with the next layer prefetched into a second buffer). Both give exactly the logits of the
// resident runtime on the same packed weights. It does not own attention or the residual stream.
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

enum class FlashMode : int { RESIDENT = 0, DENSE_STREAM = 1 };

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
};

// Time and bytes of the streamed path since load (or the last reset_stats()).
struct FlashStats {
  uint64_t bytes_read = 0;      // issued to storage (FlashReader::bytes_issued)
  double io_wait_s = 0;         // compute thread blocked on reads
  double compute_s = 0;         // gate/up/SwiGLU/down, gather included
  double gather_s = 0;          // assembling the down matrix from bundles
  uint64_t layers_run = 0;
};

class FlashFfn {
 public:
  // Validates the layout against the model's shapes and the file; RESIDENT reads everything here.
  FlashFfn(const FlashFfnConfig& cfg, int n_layer, int d_model, int d_ff);
  ~FlashFfn();
  FlashFfn(const FlashFfn&) = delete;
  FlashFfn& operator=(const FlashFfn&) = delete;

  // y (n x d_model) = down(silu(gate x) * up x) for layer `layer`; `in` holds x (n x d_model) and
  // is shared with nothing else afterwards. ff_a, ff_b: scratch of n x d_ff floats each.
  // Serialised internally (one staging area per model).
  void forward(int layer, LinearInput& in, float* ff_a, float* ff_b, float* y, ThreadPool& pool);

  FlashMode mode() const { return cfg_.mode; }
  IoBackend io_backend() const { return reader_->backend(); }
  // Bytes this executor keeps allocated (staging / resident bundles + the down gather buffer).
  uint64_t memory_bytes() const;
  uint64_t layer_bytes(int layer) const;
  FlashStats stats() const;
  void reset_stats();

 private:
  int bundle_count() const;
  int64_t bundle_size(int j) const;
  size_t gate_bytes(int layer, int64_t n) const;
  size_t down_bytes(int layer, int64_t n) const;
  // The layer's bundles in memory (waits for / issues its read) and starts the next layer's read.
  const uint8_t* stage(int layer);
  void compute(int layer, const uint8_t* bundles, LinearInput& in, float* ff_a, float* ff_b, float* y,
               ThreadPool& pool);

  FlashFfnConfig cfg_;
  std::unique_ptr<FlashReader> reader_;
  std::mutex mu_;
  // RESIDENT: one buffer with every layer; DENSE_STREAM: two slots
  AlignedBuffer all_;
  std::vector<uint64_t> all_offset_;
  AlignedBuffer slot_[2];
  int slot_layer_[2] = {-1, -1};
  ReadTicket slot_ticket_[2];
  std::vector<uint8_t> down_;  // gathered (d_model x d_ff) LUT matrix of the current layer
  LinearInput down_in_;
  FlashStats stats_;
  uint64_t bytes_at_reset_ = 0;
};

}  // namespace lutllm
