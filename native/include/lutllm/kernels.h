// The kernel API: function-pointer types, the ISA levels, and the table dispatch fills from kernels.inc.
// Kernels are plain functions over raw buffers; they know nothing about models, threads or files.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "lutllm/ggml_types.h"
#include "lutllm/lut.h"

namespace lutllm {

// ISA levels a kernel may require. A machine supports a set of them; LUTLLM_ISA caps the choice.
enum class Isa : int { REF = 0, AVX2 = 1, AVX512 = 2, NEON = 3, NEON_DOTPROD = 4 };
constexpr int kIsaCount = 5;
const char* isa_name(Isa isa);
bool isa_from_name(const std::string& name, Isa* out);
bool isa_supported(Isa isa);             // by this CPU (cpuid / getauxval, read once)
std::vector<Isa> available_isas();       // supported ones, REF first

// Activations quantized for integer dot products: 32 values per block, q = round(x / d),
// d = max|x| / 127, s = d * sum(q) (used by weight types with a min / offset term).
struct ActQ8 {
  float d;
  float s;
  int8_t qs[QK32];
};
static_assert(sizeof(ActQ8) == 40, "ActQ8 size");

// dst[0..n) = decoded src; n is a multiple of the type's block_elems.
using DequantRowFn = void (*)(const void* src, float* dst, int64_t n);
// x[0..k) -> k/32 ActQ8 blocks; k is a multiple of 32.
using QuantizeActFn = void (*)(const float* x, ActQ8* y, int64_t k);
// Y[t * y_stride + r] = dot(W row r, X row t) for r < rows, t < n_tok.
//   w: rows x row_bytes bytes of blocks; x: n_tok rows of k/32 ActQ8 blocks (x_stride blocks apart).
using MatmulQ8Fn = void (*)(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k,
                            const ActQ8* x, int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride);
// Same product for float weight types (F32 / F16 / BF16) against float activations.
using MatmulF32Fn = void (*)(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k,
                             const float* x, int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride);

// Attention of one query head over `len` cached positions (K and V cache rows in fp16, kv_stride
// elements apart): scores[j] = scale * dot(q, k_j), p = softmax(scores), out[0..hd) = sum_j p_j v_j.
// scores is caller scratch of len floats. Every ISA gives the same bits, by this fixed order:
//   dot: 8 lanes, lane l sums q[i]*k[i] for i = l, l+8, ... (float multiply, then add; no fma), in
//        order of i; then r_j = lane_j + lane_{j+4} (j < 4), s_j = r_j + r_{j+2} (j < 2), dot = s_0 + s_1.
//   softmax: mx = max_j scores; e_j = exp_fixed(scores_j - mx) (the exp sequence of SiluMulFn below, so
//            no libm difference can reach it); sum of e_j in double, in order of j; p_j = e_j * float(1 / sum).
//   out[i] = (((p_0 v_0[i]) + p_1 v_1[i]) + ...) in order of j, multiply then add, starting from 0.
using AttnHeadFn = void (*)(const float* q, const fp16_t* k, const fp16_t* v, int64_t len, int64_t kv_stride, int hd,
                            float scale, float* scores, float* out);
// The softmax step above, shared by every attn_head kernel (baseline code in native/ref/attention.cc):
// scores[j] becomes p_j; exp_row is the calling ISA's exp_row (x[i] = exp_fixed(x[i]), below).
using ExpRowFn = void (*)(float* x, int64_t n);
void attn_softmax(float* scores, int64_t len, ExpRowFn exp_row);

// SwiGLU's gate: a[i] = silu(a[i]) * b[i] = a[i] / (1 + e_i) * b[i] for i < n, with e_i = exp(-a[i]) formed by
// one fixed sequence that every ISA repeats bit for bit (IEEE fma, division and multiply; no other rounding):
//   t  = -a; t = (t < 88) ? t : 88; t = (t > -87) ? t : -87      (NaN a -> t = 88; the NaN survives in a / ...)
//   k  = nearbyint(t * 1.44269504f)  (ties to even), integer in [-126, 127]
//   r  = fma(k, -0.693359375f, t); r = fma(k, 2.12194440e-4f, r)           (t - k ln2, two-part ln2)
//   p  = 1.9875691500e-4f; p = fma(p, r, c) for c in 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f,
//        1.6666665459e-1f, 5.0000001201e-1f;  y = fma(p, r * r, r) + 1     (degree-7 polynomial of exp(r))
//   e  = y * 2^k  (2^k built from the exponent bits);  result = (a / (1 + e)) * b
// Within 2 ulp of exp in [-87, 88]; the clamp only changes results whose silu is below 1e-36 in size.
using SiluMulFn = void (*)(float* a, const float* b, int64_t n);
// e = exp_fixed(t): the clamp .. e steps above for an argument t (scalar, baseline code in
// native/ref/activation.cc); exp_row__<isa>: x[i] = exp_fixed(x[i]), the same bits on every ISA
// (helpers of the attention kernels, not registry entries; each defined in its ISA's activation file).
float exp_fixed(float t);
void exp_row__ref(float* x, int64_t n);
void exp_row__avx2(float* x, int64_t n);
void exp_row__neon(float* x, int64_t n);

enum class KernelOp : int { DEQUANT = 0, QUANT_ACT = 1, MATMUL_Q8 = 2, MATMUL_F32 = 3, LUT_BUILD = 4, LUT_GEMV = 5, LUT_GEMM = 6,
                            ATTN_HEAD = 7, SILU_MUL = 8 };
const char* op_name(KernelOp op);

// One row of the registry (kernels.inc), as seen by tests and benchmarks.
struct KernelInfo {
  KernelOp op;
  int wtype;          // GgmlType id (LUT_GEMV/LUT_GEMM: LutKind), or -1 where the op has no weight type
  const char* name;   // e.g. "matmul_q4_1_q8__avx2"
  Isa isa;
  void* fn;
};
const std::vector<KernelInfo>& kernel_registry();
const KernelInfo* find_kernel(const std::string& name);

// The selected kernel per op and weight type; null where none exists.
struct KernelTable {
  Isa isa_cap;
  DequantRowFn dequant[kGgmlTypeCount];
  QuantizeActFn quantize_act;
  MatmulQ8Fn matmul_q8[kGgmlTypeCount];
  MatmulF32Fn matmul_f32[kGgmlTypeCount];
  LutBuildFn lut_build;                 // LUT kernels (lut.h), indexed by LutKind
  LutGemvFn lut_gemv[kLutKindCount];
  LutGemmFn lut_gemm[kLutKindCount];
  AttnHeadFn attn_head;
  SiluMulFn silu_mul;
};
// Filled once on first use from kernels.inc: best supported ISA not above LUTLLM_ISA (if set).
const KernelTable& kernels();
// Re-select with a different cap (tests, benchmarks). Not thread-safe against running kernels.
void select_isa(Isa cap);

}  // namespace lutllm
