// Linear layers y = W x: picks the kernel family for a weight once (T-MAC table lookup for <= 4-bit
// types, int8-activation dot products, float, or a dequantize fallback) and splits rows across the
// thread pool. Mapped weights are used in place; only a LUT path repacked at load owns a copy.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "lutllm/kernels.h"
#include "thread_pool.h"
#include "weights.h"

namespace lutllm {

// One input matrix (n rows of k floats) plus its int8-quantized form and its LUT activation tables,
// each built at most once so that layers reading the same input (q/k/v, gate/up) share them.
class LinearInput {
 public:
  void set(const float* x, int64_t n, int64_t k) { x_ = x; n_ = n; k_ = k; q8_ready_ = false; lut_ag_ = 0; }
  const float* x() const { return x_; }
  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  const ActQ8* q8(ThreadPool& pool);  // quantizes on first use
  // n LutAct descriptors (one per row) with tables for activation groups of `ag`; built on first use.
  const LutAct* lut(ThreadPool& pool, int32_t ag);

 private:
  const float* x_ = nullptr;
  int64_t n_ = 0, k_ = 0;
  bool q8_ready_ = false;
  int32_t lut_ag_ = 0;  // 0: tables not built for the current input
  std::vector<ActQ8> q8_;
  std::vector<int8_t> lut_tab_;
  std::vector<float> lut_scale_, lut_sum16_;
  std::vector<LutAct> lut_act_;
};

class Linear {
 public:
  enum class Path { NONE, LUT, Q8, F32, DEQUANT };
  Linear() = default;
  // Binds a weight; with allow_lut, types that repack exactly to the LUT layout (Q4_0, Q4_1, Q4_K,
  // Q2_K, TQ1_0, TQ2_0) are repacked once here, in row chunks spread over `pool` when given. A weight
  // already packed in the file (w->packed()) always takes the LUT path, zero copy. Throws Error when
  // no kernel can run this type.
  explicit Linear(const WeightTensor* w, bool allow_lut = false, ThreadPool* pool = nullptr);
  bool empty() const { return w_ == nullptr; }
  int64_t in_features() const { return w_->cols(); }
  int64_t out_features() const { return w_->rows(); }
  const WeightTensor& weight() const { return *w_; }
  Path path() const { return path_; }
  // y[t * out_features + r] = dot(W[r], x[t]) for t < in.n()
  void forward(LinearInput& in, float* y, ThreadPool& pool) const;
  // Called with a row range [r0, r1) once those rows of every layer's output are computed.
  using RowEpilogue = std::function<void(int64_t r0, int64_t r1)>;
  // The same for `count` layers reading one input (q/k/v, gate/up) in a single pool loop: one
  // hand-off to the workers instead of `count`, and the short tails of small matrices overlap.
  // With an epilogue (layers of equal output size, e.g. gate/up), each task computes the same rows
  // of every layer and then runs the epilogue on them, in parallel and while those rows are in cache.
  static void forward_many(const Linear* const* layers, float* const* ys, int count, LinearInput& in, ThreadPool& pool,
                           const RowEpilogue* epilogue = nullptr);

 private:
  struct Plan;  // one layer's share of a pool loop (linear.cc)
  void plan(LinearInput& in, float* y, ThreadPool& pool, Plan* p) const;
  void run_task(const Plan& p, int64_t task) const;

  const WeightTensor* w_ = nullptr;
  Path path_ = Path::NONE;
  std::shared_ptr<std::vector<uint8_t>> lut_packed_;  // LUT path only: the repacked weights
  LutWeights lut_{};
};

}  // namespace lutllm
