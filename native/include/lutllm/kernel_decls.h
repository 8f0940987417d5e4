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
#define LUTLLM_LUT_BUILD(fn, isa)                                                             \
  void fn(const float* x, int64_t k, int32_t ag, int64_t ag_begin, int64_t ag_end, int8_t* tab, \
          float* scale, float* sum16);
#define LUTLLM_LUT_GEMV(kind, fn, isa) \
  void fn(const LutWeights* w, const LutAct* a, int64_t row_begin, int64_t row_end, float* y);
#define LUTLLM_LUT_GEMM(kind, fn, isa)                                                        \
  void fn(const LutWeights* w, const LutAct* a, int64_t n_tok, int64_t row_begin, int64_t row_end, \
          float* y, int64_t y_stride);
#define LUTLLM_ATTN_HEAD(fn, isa)                                                             \
  void fn(const float* q, const fp16_t* k, const fp16_t* v, int64_t len, int64_t kv_stride, int hd, float scale, \
          float* scores, float* out);
#define LUTLLM_SILU_MUL(fn, isa) void fn(float* a, const float* b, int64_t n);
#include "../../kernels.inc"
}  // namespace lutllm
