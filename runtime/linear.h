// Linear layers y = W x: picks the kernel for a weight once (int8-activation, float, or dequantize
// fallback) and splits rows across the thread pool. Holds no weights of its own (views into the store).
#pragma once
#include <cstdint>
#include <vector>

#include "lutllm/kernels.h"
#include "thread_pool.h"
#include "weights.h"

namespace lutllm {

// One input matrix (n rows of k floats) plus its int8 quantized form, built at most once so that
// several layers reading the same input (q/k/v, gate/up) share the quantization.
class LinearInput {
 public:
  void set(const float* x, int64_t n, int64_t k) { x_ = x; n_ = n; k_ = k; q8_ready_ = false; }
  const float* x() const { return x_; }
  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  const ActQ8* q8(ThreadPool& pool);  // quantizes on first use

 private:
  const float* x_ = nullptr;
  int64_t n_ = 0, k_ = 0;
  bool q8_ready_ = false;
  std::vector<ActQ8> q8_;
};

class Linear {
 public:
  enum class Path { NONE, Q8, F32, DEQUANT };
  Linear() = default;
  explicit Linear(const WeightTensor* w);  // throws Error when no kernel can run this type
  bool empty() const { return w_ == nullptr; }
  int64_t in_features() const { return w_->cols(); }
  int64_t out_features() const { return w_->rows(); }
  const WeightTensor& weight() const { return *w_; }
  Path path() const { return path_; }
  // y[t * out_features + r] = dot(W[r], x[t]) for t < in.n()
  void forward(LinearInput& in, float* y, ThreadPool& pool) const;

 private:
  const WeightTensor* w_ = nullptr;
  Path path_ = Path::NONE;
};

}  // namespace lutllm
