// The k-quant sub-scale bytes of one LUT group block (lut.h) as two 16-byte vectors, shared by
// lut_avx2.cc and lut_avx512.cc. Include after the intrinsics header (<immintrin.h> or SIMDe's).
// Internal linkage: each ISA file compiles its own copy with its own flags.
#pragma once
#include <cstdint>

#include "lutllm/lut.h"

namespace lutllm {
namespace {

// Rows 0..15's sub-scale bytes at sp into *sc and sub-min bytes into *m, per encoding (LutKq):
// uint8 sc then uint8 m; int8 sc alone (*m unused); one byte sc | m << 4 per row.
inline void kq_subscale_bytes(const uint8_t* sp, int32_t kq, __m128i* sc, __m128i* m) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sp));
  if (kq == kLutKqNibble) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    *sc = _mm_and_si128(b, m4);
    *m = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    return;
  }
  *sc = b;
  *m = kq == kLutKqU8 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + kLutRows)) : b;
}

}  // namespace
}  // namespace lutllm
