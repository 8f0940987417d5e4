// GGUF/ggml tensor type ids and the on-disk block layouts lutllm reads (same bytes as llama.cpp).
// Only layouts and fp16/bf16 conversions live here; decoding and arithmetic live in native/ref and ISA files.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace lutllm {

// Type ids as stored in GGUF tensor infos (ggml_type). Values are part of the file format.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  BF16 = 30, TQ1_0 = 34, TQ2_0 = 35,
};
constexpr int kGgmlTypeCount = 40;  // table size for per-type arrays (ids < 40)

constexpr int QK32 = 32;   // elements per block of the "legacy" quants
constexpr int QK_K = 256;  // elements per super-block of the k-quants

using fp16_t = uint16_t;  // IEEE half, stored raw
using bf16_t = uint16_t;  // bfloat16, stored raw

// ---- legacy 32-element blocks -------------------------------------------------------------
// value[j] = (nibble - 8) * d;  qs[j] low nibble -> element j, high nibble -> element j + 16
struct block_q4_0 { fp16_t d; uint8_t qs[QK32 / 2]; };
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");
// value[j] = nibble * d + m
struct block_q4_1 { fp16_t d; fp16_t m; uint8_t qs[QK32 / 2]; };
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");
// value[j] = (nibble | bit(qh, j) << 4) - 16) * d; qh bit j for element j (j < 32)
struct block_q5_0 { fp16_t d; uint8_t qh[4]; uint8_t qs[QK32 / 2]; };
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");
// value[j] = (nibble | bit(qh, j) << 4) * d + m
struct block_q5_1 { fp16_t d; fp16_t m; uint8_t qh[4]; uint8_t qs[QK32 / 2]; };
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");
// value[j] = qs[j] * d
struct block_q8_0 { fp16_t d; int8_t qs[QK32]; };
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");

// ---- k-quants: 256-element super-blocks ---------------------------------------------------
// 16 sub-blocks of 16: value = d * (scales[i] & 0xF) * q2 - dmin * (scales[i] >> 4)
struct block_q2_K { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; fp16_t d; fp16_t dmin; };
static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");
// 16 sub-blocks of 16: 3-bit q (2 low bits in qs, high bit in hmask), 6-bit signed scales
struct block_q3_K { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; fp16_t d; };
static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");
// 8 sub-blocks of 32, 6-bit scale and min packed in scales[12]: value = d*sc*q - dmin*m
struct block_q4_K { fp16_t d; fp16_t dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; };
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");
// as q4_K with a fifth bit per element in qh
struct block_q5_K { fp16_t d; fp16_t dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");
// 16 sub-blocks of 16: value = d * scales[i] * (q6 - 32); low 4 bits in ql, high 2 in qh
struct block_q6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; fp16_t d; };
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");
// ternary: 5 trits per byte (base-3) in qs, 4 per byte in qh; value = d * (t - 1)
struct block_tq1_0 { uint8_t qs[(QK_K - 4 * QK_K / 64) / 5]; uint8_t qh[QK_K / 64]; fp16_t d; };
static_assert(sizeof(block_tq1_0) == 54, "block_tq1_0 size");
// ternary: 2 bits per element; value = d * (q2 - 1)
struct block_tq2_0 { uint8_t qs[QK_K / 4]; fp16_t d; };
static_assert(sizeof(block_tq2_0) == 66, "block_tq2_0 size");

// ---- fp16 / bf16 conversions (exact, no hardware needed) ----------------------------------
inline float fp16_to_f32(fp16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { ++e; man <<= 1; } while ((man & 0x400) == 0);
      bits = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3FF) << 13;
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | man << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round-to-nearest-even float -> half (overflow to inf, NaN kept NaN).
inline fp16_t f32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t absx = x & 0x7FFFFFFF;
  if (absx > 0x7F800000) return fp16_t(sign | 0x7E00);                 // NaN
  if (absx >= 0x477FF000) return fp16_t(sign | 0x7C00);                // overflow -> inf
  if (absx < 0x38800000) {                                             // subnormal half
    if (absx < 0x33000000) return fp16_t(sign);                        // underflow
    const uint32_t e = absx >> 23, m = (absx & 0x7FFFFF) | 0x800000;
    const uint32_t shift = 126 - e;                                    // 14..24
    uint32_t half = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return fp16_t(sign | half);
  }
  uint32_t half = ((absx >> 13) - ((127 - 15) << 10));
  const uint32_t rem = absx & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) ++half;
  return fp16_t(sign | half);
}

inline float bf16_to_f32(bf16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Size facts per type; block_bytes == 0 marks a type lutllm cannot decode.
struct TypeTraits {
  const char* name;
  int block_elems;
  int block_bytes;
};
const TypeTraits& type_traits(GgmlType t);
inline const TypeTraits& type_traits(uint32_t t) { return type_traits(GgmlType(t)); }
bool type_known(uint32_t t);

}  // namespace lutllm
