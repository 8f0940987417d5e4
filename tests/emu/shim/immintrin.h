// Test-only stand-in for <immintrin.h>: routes the x86 intrinsics of native/x86/*_avx512.cc through
// SIMDe's portable AVX-512 so tests/emu can run them on machines without AVX-512. Never used by the build.
// Adds what SIMDe 0.7.4 lacks and replaces what it gets wrong (each marked below); every replacement is
// written as the plain per-lane IEEE operation the instruction performs.
#pragma once
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace lutllm_emu {
// fp16 -> fp32 by bit manipulation (exact for every input, NaN payloads kept like vcvtph2ps).
static inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {
      int e = -1;
      do { ++e; man <<= 1; } while ((man & 0x400) == 0);
      bits = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3FF) << 13;
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | man << 13 | (man ? 0x00400000u : 0u);  // quiet NaN, as the hardware does
  } else {
    bits = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
}  // namespace lutllm_emu

// ---- missing in SIMDe 0.7.4 ----------------------------------------------------------------------
#undef _cvtsh_ss
static inline float _cvtsh_ss(unsigned short h) { return lutllm_emu::half_to_float(h); }
typedef simde__mmask16 __mmask16;
typedef simde__mmask8 __mmask8;
#ifndef _MM_FROUND_NO_EXC
#define _MM_FROUND_NO_EXC SIMDE_MM_FROUND_NO_EXC
#endif

// SIMDe 0.7.4's native alias of this name takes the masked form's four arguments
#undef _mm512_madd_epi16
#define _mm512_madd_epi16(a, b) simde_mm512_madd_epi16(a, b)

#undef _mm512_cvtepi32_ps
static inline simde__m512 _mm512_cvtepi32_ps(simde__m512i v) {
  int32_t a[16];
  float f[16];
  std::memcpy(a, &v, 64);
  for (int i = 0; i < 16; ++i) f[i] = float(a[i]);  // round to nearest even, like vcvtdq2ps
  simde__m512 r;
  std::memcpy(&r, f, 64);
  return r;
}
#undef _mm512_cvttps_epi32
static inline simde__m512i _mm512_cvttps_epi32(simde__m512 v) {
  float f[16];
  int32_t a[16];
  std::memcpy(f, &v, 64);
  for (int i = 0; i < 16; ++i)  // out of range or NaN -> 0x80000000 (integer indefinite)
    a[i] = (f[i] >= -2147483648.0f && f[i] < 2147483648.0f) ? int32_t(f[i]) : INT32_MIN;
  simde__m512i r;
  std::memcpy(&r, a, 64);
  return r;
}
#undef _mm512_cvtph_ps
static inline simde__m512 _mm512_cvtph_ps(simde__m256i v) {
  uint16_t h[16];
  float f[16];
  std::memcpy(h, &v, 32);
  for (int i = 0; i < 16; ++i) f[i] = lutllm_emu::half_to_float(h[i]);
  simde__m512 r;
  std::memcpy(&r, f, 64);
  return r;
}
namespace lutllm_emu {
// 16 integers of type T at the start of v, each widened (sign- or zero-extended) to int32 lanes.
template <class T, class V>
static inline simde__m512i widen_to_i32(const V& v) {
  T b[16];
  int32_t a[16];
  std::memcpy(b, &v, sizeof b);
  for (int i = 0; i < 16; ++i) a[i] = b[i];
  simde__m512i r;
  std::memcpy(&r, a, 64);
  return r;
}
}  // namespace lutllm_emu
#undef _mm512_cvtepi16_epi32
static inline simde__m512i _mm512_cvtepi16_epi32(simde__m256i v) { return lutllm_emu::widen_to_i32<int16_t>(v); }
// Missing in SIMDe 0.7.4: zero- / sign-extend 16 bytes to 16 int32 lanes.
#undef _mm512_cvtepu8_epi32
static inline simde__m512i _mm512_cvtepu8_epi32(simde__m128i v) { return lutllm_emu::widen_to_i32<uint8_t>(v); }
#undef _mm512_cvtepi8_epi32
static inline simde__m512i _mm512_cvtepi8_epi32(simde__m128i v) { return lutllm_emu::widen_to_i32<int8_t>(v); }
// Masked loads / stores touch only the selected lanes (the others may lie outside the buffer).
#undef _mm512_maskz_loadu_ps
static inline simde__m512 _mm512_maskz_loadu_ps(simde__mmask16 m, const void* p) {
  float f[16] = {0};
  for (int i = 0; i < 16; ++i)
    if (m >> i & 1) std::memcpy(&f[i], static_cast<const char*>(p) + 4 * i, 4);
  simde__m512 r;
  std::memcpy(&r, f, 64);
  return r;
}
#undef _mm512_mask_storeu_ps
static inline void _mm512_mask_storeu_ps(void* p, simde__mmask16 m, simde__m512 v) {
  float f[16];
  std::memcpy(f, &v, 64);
  for (int i = 0; i < 16; ++i)
    if (m >> i & 1) std::memcpy(static_cast<char*>(p) + 4 * i, &f[i], 4);
}
#undef _mm256_mask_storeu_ps
static inline void _mm256_mask_storeu_ps(void* p, simde__mmask8 m, simde__m256 v) {
  float f[8];
  std::memcpy(f, &v, 32);
  for (int i = 0; i < 8; ++i)
    if (m >> i & 1) std::memcpy(static_cast<char*>(p) + 4 * i, &f[i], 4);
}
// Reductions: only the result matters for max and integer add (order-independent).
#undef _mm512_reduce_max_ps
static inline float _mm512_reduce_max_ps(simde__m512 v) {
  float f[16];
  std::memcpy(f, &v, 64);
  float m = f[0];
  for (int i = 1; i < 16; ++i) m = f[i] > m ? f[i] : m;
  return m;
}
#undef _mm512_reduce_add_epi32
static inline int _mm512_reduce_add_epi32(simde__m512i v) {
  uint32_t a[16];
  std::memcpy(a, &v, 64);
  uint32_t s = 0;  // wraps like vpaddd
  for (int i = 0; i < 16; ++i) s += a[i];
  return int(s);
}

// ---- wrong in SIMDe 0.7.4 (without native FMA it computes a*b+c with two roundings) -------------
#define LUTLLM_EMU_FMA(NAME, VT, N, EXPR)                                                    \
  static inline VT NAME(VT a, VT b, VT c) {                                                 \
    float x[N], y[N], z[N];                                                                 \
    std::memcpy(x, &a, sizeof x);                                                           \
    std::memcpy(y, &b, sizeof y);                                                           \
    std::memcpy(z, &c, sizeof z);                                                           \
    for (int i = 0; i < N; ++i) x[i] = EXPR;                                                \
    std::memcpy(&a, x, sizeof x);                                                           \
    return a;                                                                               \
  }
#undef _mm_fmadd_ps
#undef _mm_fmsub_ps
#undef _mm_fnmadd_ps
#undef _mm_fnmsub_ps
#undef _mm256_fmadd_ps
#undef _mm256_fmsub_ps
#undef _mm256_fnmadd_ps
#undef _mm256_fnmsub_ps
#undef _mm512_fmadd_ps
#undef _mm512_fmsub_ps
#undef _mm512_fnmadd_ps
#undef _mm512_fnmsub_ps
LUTLLM_EMU_FMA(_mm_fmadd_ps, simde__m128, 4, std::fma(x[i], y[i], z[i]))
LUTLLM_EMU_FMA(_mm_fmsub_ps, simde__m128, 4, std::fma(x[i], y[i], -z[i]))
LUTLLM_EMU_FMA(_mm_fnmadd_ps, simde__m128, 4, std::fma(-x[i], y[i], z[i]))
LUTLLM_EMU_FMA(_mm_fnmsub_ps, simde__m128, 4, std::fma(-x[i], y[i], -z[i]))
LUTLLM_EMU_FMA(_mm256_fmadd_ps, simde__m256, 8, std::fma(x[i], y[i], z[i]))
LUTLLM_EMU_FMA(_mm256_fmsub_ps, simde__m256, 8, std::fma(x[i], y[i], -z[i]))
LUTLLM_EMU_FMA(_mm256_fnmadd_ps, simde__m256, 8, std::fma(-x[i], y[i], z[i]))
LUTLLM_EMU_FMA(_mm256_fnmsub_ps, simde__m256, 8, std::fma(-x[i], y[i], -z[i]))
LUTLLM_EMU_FMA(_mm512_fmadd_ps, simde__m512, 16, std::fma(x[i], y[i], z[i]))
LUTLLM_EMU_FMA(_mm512_fmsub_ps, simde__m512, 16, std::fma(x[i], y[i], -z[i]))
LUTLLM_EMU_FMA(_mm512_fnmadd_ps, simde__m512, 16, std::fma(-x[i], y[i], z[i]))
LUTLLM_EMU_FMA(_mm512_fnmsub_ps, simde__m512, 16, std::fma(-x[i], y[i], -z[i]))
#undef LUTLLM_EMU_FMA

// ---- wrong in SIMDe 0.7.4: _mm512_roundscale_ps with scale M = 0 ----------------------------------
// imm bits 1:0 = rounding mode (bit 2 set: current mode, i.e. nearest even here), bits 7:4 = M.
#undef _mm512_roundscale_ps
static inline simde__m512 _mm512_roundscale_ps(simde__m512 a, int imm) {
  float x[16];
  std::memcpy(x, &a, 64);
  const int mode = (imm & 4) ? 0 : (imm & 3), m = (imm >> 4) & 15;
  for (int i = 0; i < 16; ++i) {
    const float s = std::ldexp(x[i], m);  // exact (power of two), barring overflow
    float r;
    switch (mode) {
      case 0: r = std::nearbyint(s); break;
      case 1: r = std::floor(s); break;
      case 2: r = std::ceil(s); break;
      default: r = std::trunc(s); break;
    }
    x[i] = std::isfinite(s) ? std::ldexp(r, -m) : x[i];
  }
  simde__m512 r;
  std::memcpy(&r, x, 64);
  return r;
}
