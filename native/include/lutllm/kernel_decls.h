// Declarations of every kernel listed in native/kernels.inc (generated from it by the preprocessor).
// Not an API for model code: runtime code calls kernels through lutllm::kernels().
#pragma once
#include "lutllm/kernels.h"

namespace lutllm {
#define LUTLLM_DEQUANT(type, fn, isa) void fn(const void* src, float* dst, int64_t n);
#define LUTLLM_QUANT_ACT(fn, isa) void fn(const float* x, ActQ8* y, int64_t k);
#define LUTLLM_MATMUL_Q8(type, fn, isa)                                                       \
  void fn(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const ActQ8* x,        \
          int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride);
#define LUTLLM_MATMUL_F32(type, fn, isa)                                                      \
  void fn(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const float* x,        \
          int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride);
#include "../../kernels.inc"
}  // namespace lutllm
