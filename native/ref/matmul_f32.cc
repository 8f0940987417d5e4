// Scalar reference matmuls of float weights (F32 / F16 / BF16) with float32 activations: a plain
// sequential float dot per (row, token). Not bit-exact with SIMD twins (those sum in another order).
#include <cstring>

#include "lutllm/kernel_decls.h"

namespace lutllm {

namespace {

struct LoadF32 {
  static float at(const uint8_t* row, int64_t i) {
    float v;
    std::memcpy(&v, row + 4 * i, 4);
    return v;
  }
};
struct LoadF16 {
  static float at(const uint8_t* row, int64_t i) {
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    return fp16_to_f32(h);
  }
};
struct LoadBF16 {
  static float at(const uint8_t* row, int64_t i) {
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    return bf16_to_f32(h);
  }
};

// y[t][r] = sum_i w[r][i] * x[t][i], products rounded, summed left to right (error <= gamma_k sum|w x|)
template <typename L>
void matmul_float_ref(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const float* x,
                      int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w + size_t(r) * row_bytes;
    for (int64_t t = 0; t < n_tok; ++t) {
      const float* xt = x + t * x_stride;
      float acc = 0.0f;
      for (int64_t i = 0; i < k; ++i) acc += L::at(row, i) * xt[i];
      y[t * y_stride + r] = acc;
    }
  }
}

}  // namespace

void matmul_f32_f32__ref(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const float* x,
                         int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  matmul_float_ref<LoadF32>(w, row_bytes, rows, k, x, x_stride, n_tok, y, y_stride);
}
void matmul_f16_f32__ref(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const float* x,
                         int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  matmul_float_ref<LoadF16>(w, row_bytes, rows, k, x, x_stride, n_tok, y, y_stride);
}
void matmul_bf16_f32__ref(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const float* x,
                          int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  matmul_float_ref<LoadBF16>(w, row_bytes, rows, k, x, x_stride, n_tok, y, y_stride);
}

}  // namespace lutllm
