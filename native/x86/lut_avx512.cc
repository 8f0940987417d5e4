// AVX-512 (BW) LUT GEMV / GEMM over the packed layout of lut.h: one 64-byte load = four tiles with
// four quads' tables in one register. Bit-exact twin of native/ref/lut_ref.cc; the table build is
// the AVX2 one. No STL, no shared inline code (this file has -mavx512* flags; lut_driver.h's loop is
// this file's own internal copy).
#if defined(LUTLLM_SIMDE_AVX512)  // tests/cpp only: the same code on SIMDe's portable AVX-512
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#else
#include <immintrin.h>
#endif
// GCC 12 warns inside its own avx512 headers (_mm512_undefined_* in extract/convert helpers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cstring>

#include "lutllm/kernel_decls.h"
#include "lutllm/lut.h"
#include "lutllm/lut_driver.h"
#include "lut_kq_x86.h"

namespace lutllm {
namespace {

inline __m512 load_scales16(const uint8_t* p, int scale_bytes) {
#if defined(LUTLLM_SIMDE_AVX512)  // SIMDe 0.7 has no 512-bit cvtph: two exact 256-bit F16C conversions
  if (scale_bytes == 2) {
    const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256 b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(a)), _mm256_castps_pd(b), 1));
  }
#else
  if (scale_bytes == 2) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#endif
  return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
}

inline __m512 cvt_i32_f32(__m512i v) {
#if defined(LUTLLM_SIMDE_AVX512)
  const __m256 a = _mm256_cvtepi32_ps(_mm512_castsi512_si256(v)), b = _mm256_cvtepi32_ps(_mm512_extracti64x4_epi64(v, 1));
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(a)), _mm256_castps_pd(b), 1));
#else
  return _mm512_cvtepi32_ps(v);
#endif
}

inline __m512i madd16(__m512i a, __m512i b) {
#if defined(LUTLLM_SIMDE_AVX512)  // SIMDe 0.7's native alias of this name takes the masked form's 4 arguments
  return simde_mm512_madd_epi16(a, b);
#else
  return _mm512_madd_epi16(a, b);  // (tests/emu's stand-in header maps the name to the 2-argument form)
#endif
}

// 16 unsigned (or, with sgn, signed) bytes -> 16 int32
inline __m512i bytes_to_i32(__m128i b, bool sgn) {
#if defined(LUTLLM_SIMDE_AVX512)  // SIMDe 0.7 lacks the 512-bit forms
  const __m128i b2 = _mm_srli_si128(b, 8);
  return sgn ? _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_cvtepi8_epi32(b)), _mm256_cvtepi8_epi32(b2), 1)
             : _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_cvtepu8_epi32(b)), _mm256_cvtepu8_epi32(b2), 1);
#else
  return sgn ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
#endif
}

// Scale s and offset o (o only with has_offset) of the 16 rows of group g of row block blk, loaded
// (fp16 / fp32; k-quant sub-scales take the super-block epilogue in row_block instead).
inline void load_group_scales(const uint8_t* blk, const LutGroupAddr& ga, int sb, bool has_offset, int64_t g, __m512* s,
                              __m512* o) {
  const uint8_t* sp = blk + lut_group_at(ga, g) + ga.tile_bytes;
  *s = load_scales16(sp, sb);
  if (has_offset) *o = load_scales16(sp + 16 * sb, sb);
}

inline __m512 load_rows16(const float* y, __mmask16 mk) {
#if defined(LUTLLM_SIMDE_AVX512)
  alignas(64) float tmp[16] = {0};
  for (int r = 0; r < 16; ++r)
    if (mk >> r & 1) tmp[r] = y[r];
  return _mm512_load_ps(tmp);
#else
  return _mm512_maskz_loadu_ps(mk, y);
#endif
}

inline void store_rows16(float* y, __mmask16 mk, __m512 v) {
#if defined(LUTLLM_SIMDE_AVX512)
  alignas(64) float tmp[16];
  _mm512_store_ps(tmp, v);
  for (int r = 0; r < 16; ++r)
    if (mk >> r & 1) y[r] = tmp[r];
#else
  _mm512_mask_storeu_ps(y, mk, v);
#endif
}

inline __m512i widen16(__m256i v) {
#if defined(LUTLLM_SIMDE_AVX512)  // SIMDe 0.7 lacks the 512-bit form
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(v))),
                            _mm256_cvtepi16_epi32(_mm256_extracti128_si256(v, 1)), 1);
#else
  return _mm512_cvtepi16_epi32(v);
#endif
}

// int16 lanes of acc: 4 x (rows 0..7) -> int32 rows 0..7. fold16: the lanes add up exactly in int16
// (the group's whole-sum bound fits, see row_block), so they are summed before one widening.
inline __m256i fold_lanes(__m512i acc, bool fold16) {
  if (fold16) {
    const __m256i a = _mm256_add_epi16(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
    return _mm256_cvtepi16_epi32(_mm_add_epi16(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1)));
  }
  const __m512i a = widen16(_mm512_castsi512_si256(acc));        // lanes 0,1
  const __m512i b = widen16(_mm512_extracti64x4_epi64(acc, 1));  // lanes 2,3
  const __m512i s = _mm512_add_epi32(a, b);
  return _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
}

// int16 bound: each of the 4 lanes sees G/16 quads, at most 127 * 15 per quad and row (4-bit):
// 127 * 15 * 8 = 15240 for G = 128.
// Running sums of one row block (16 rows) for one token.
struct Rows16 {
  __m512 v;
};

template <int KIND, int NT>
void row_block(const uint8_t* blk, const LutFormat& f, const LutAct* act, const float* const* sxg,
               const int32_t* const* qg, int64_t g0, int64_t g1, Rows16 yv[NT], size_t pf) {
  constexpr bool kTern = KIND == int(LutKind::TERNARY);
  constexpr int n = kTern ? 2 : KIND;
  const int G = f.group, sb = f.scale_bytes;
  const bool has_off = f.has_offset != 0;
  const LutGroupAddr ga = lut_group_addr(f);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i mul01 = _mm512_set1_epi16(kTern ? 0x0101 : 0x0201);
  const __m512i mul23 = _mm512_set1_epi16(0x0804);
  const __m512i mulS = _mm512_set1_epi8(char(1 << (n - 1)));
  const __m512 vcn = _mm512_set1_ps(float((1 << n) - 1) * 0.5f), vmhalf = _mm512_set1_ps(-0.5f);
  // |I| <= 127 * (2^n - 1) * G/4 (ternary 127 * 2 * G/4) for the whole group (lut.h)
  const bool fold16 = 127 * (kTern ? 2 : (1 << n) - 1) * (G / 4) <= 32767;
  // k-quant super-block epilogue (lut.h): int32 J, M per token; m * Qf as one pmaddwd when
  // |Qf| <= 16 * 127 * G/4 fits int16 (m in the low 16 bits of its lane, high 0)
  const int32_t cq = has_off ? (1 << n) - 1 : -1;
  const int64_t smask = lut_kq_span_mask(f, act[0].ag);  // all tokens share ag
  const bool q16 = 16 * 127 * (G / 4) <= 32767;
  __m512i J[NT], M[NT];
  for (int t = 0; t < NT; ++t) J[t] = M[t] = _mm512_setzero_si512();
  PrefetchCursor pfc{blk + lut_group_at(ga, g0) + pf};
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* p = blk + lut_group_at(ga, g);
    // the bytes pf ahead of this group block (later groups, then the next row blocks); the extent
    // also covers a k-quant super-block header, so the prefetched windows leave no gaps
    if (pf) pfc.upto(p + pf + ga.group_bytes + ga.header_bytes);
    const int8_t* tq[NT];
    __m512i accA[NT], accB[NT];
    for (int t = 0; t < NT; ++t) {
      tq[t] = act[t].tab + g * G / 4 * 16;
      accA[t] = accB[t] = _mm512_setzero_si512();
    }
    for (int pp = 0; pp < n / 2; ++pp) {
      const __m512i mul = pp == 0 ? mul01 : mul23;
      for (int qd = 0; qd < G / 4; qd += 4, p += 64) {
        const __m512i wv = _mm512_loadu_si512(p);
        const __m512i lo = _mm512_and_si512(wv, m4), hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), m4);
        for (int t = 0; t < NT; ++t) {
          const __m512i T = _mm512_loadu_si512(tq[t] + qd * 16);
          accA[t] = _mm512_add_epi16(accA[t], _mm512_maddubs_epi16(mul, _mm512_shuffle_epi8(T, lo)));
          accB[t] = _mm512_add_epi16(accB[t], _mm512_maddubs_epi16(mul, _mm512_shuffle_epi8(T, hi)));
        }
      }
    }
    if ((n & 1) && G == 16) {  // two STs (32 bytes): quads 0, 1 (low nibbles) and 2, 3 (high), in lanes 0, 1
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m256i m4h = _mm256_set1_epi8(0x0F), mulSh = _mm256_set1_epi8(char(1 << (n - 1)));
      const __m256i lo = _mm256_and_si256(wv, m4h), hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m4h);
      for (int t = 0; t < NT; ++t) {
        const __m256i La = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(tq[t])), lo);
        const __m256i Lb = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(tq[t] + 32)), hi);
        const __m256i a = _mm256_maddubs_epi16(mulSh, _mm256_unpacklo_epi8(La, Lb));
        const __m256i b = _mm256_maddubs_epi16(mulSh, _mm256_unpackhi_epi8(La, Lb));
        accA[t] = _mm512_add_epi16(accA[t], _mm512_inserti64x4(_mm512_setzero_si512(), a, 0));
        accB[t] = _mm512_add_epi16(accB[t], _mm512_inserti64x4(_mm512_setzero_si512(), b, 0));
      }
    } else if (n & 1) {
      for (int c = 0; c < G / 32; ++c, p += 64) {
        const __m512i wv = _mm512_loadu_si512(p);
        const __m512i lo = _mm512_and_si512(wv, m4), hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), m4);
        for (int t = 0; t < NT; ++t) {
          const __m512i Tl = _mm512_loadu_si512(tq[t] + (8 * c) * 16);
          const __m512i Th = _mm512_loadu_si512(tq[t] + (8 * c + 4) * 16);
          const __m512i La = _mm512_shuffle_epi8(Tl, lo), Lb = _mm512_shuffle_epi8(Th, hi);
          accA[t] = _mm512_add_epi16(accA[t], _mm512_maddubs_epi16(mulS, _mm512_unpacklo_epi8(La, Lb)));
          accB[t] = _mm512_add_epi16(accB[t], _mm512_maddubs_epi16(mulS, _mm512_unpackhi_epi8(La, Lb)));
        }
      }
    }
    if (!kTern && ga.kq) {
      __m128i scb, mb;
      kq_subscale_bytes(blk + lut_group_at(ga, g) + ga.tile_bytes, ga.kq, &scb, &mb);
      const __m512i sc32 = bytes_to_i32(scb, ga.kq == kLutKqS8);
      const __m512i m32 = bytes_to_i32(mb, false);
      for (int t = 0; t < NT; ++t) {
        const __m512i I =
            _mm512_inserti64x4(_mm512_castsi256_si512(fold_lanes(accA[t], fold16)), fold_lanes(accB[t], fold16), 1);
        const int32_t q = qg[t][g - g0];
        const __m512i K = _mm512_add_epi32(_mm512_slli_epi32(I, 4), _mm512_set1_epi32(cq * q));
        J[t] = _mm512_add_epi32(J[t], _mm512_mullo_epi32(K, sc32));
        if (has_off) {
          const __m512i qv = _mm512_set1_epi32(q);
          M[t] = _mm512_add_epi32(M[t], q16 ? madd16(m32, qv) : _mm512_mullo_epi32(m32, qv));
        }
      }
      if ((g & smask) == smask) {  // last group of the span: one float step per row
        const uint8_t* hp = blk + lut_header_at(ga, g);
        const __m512 d = load_scales16(hp, 2);
        __m512 nd = d;
        if (has_off)
          nd = _mm512_castsi512_ps(
              _mm512_xor_si512(_mm512_castps_si512(load_scales16(hp + 32, 2)), _mm512_set1_epi32(int(0x80000000u))));
        for (int t = 0; t < NT; ++t) {
          const float ts = act[t].scale[g * G / act[t].ag];
          yv[t].v = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(ts * 0.03125f)), cvt_i32_f32(J[t]), yv[t].v);
          if (has_off)
            yv[t].v = _mm512_fmadd_ps(_mm512_mul_ps(nd, _mm512_set1_ps(ts * 0.0625f)), cvt_i32_f32(M[t]), yv[t].v);
          J[t] = M[t] = _mm512_setzero_si512();
        }
      }
      continue;
    }
    __m512 s, o;
    load_group_scales(blk, ga, sb, has_off, g, &s, &o);
    __m512 cc = s;
    if (!kTern) cc = has_off ? _mm512_fmadd_ps(s, vcn, o) : _mm512_mul_ps(s, vmhalf);
    for (int t = 0; t < NT; ++t) {
      const __m512i I =
          _mm512_inserti64x4(_mm512_castsi256_si512(fold_lanes(accA[t], fold16)), fold_lanes(accB[t], fold16), 1);
      const __m512 tsh = _mm512_set1_ps(0.5f * act[t].scale[g * G / act[t].ag]);
      yv[t].v = _mm512_fmadd_ps(_mm512_mul_ps(s, tsh), cvt_i32_f32(I), yv[t].v);
      if (!kTern) yv[t].v = _mm512_fmadd_ps(cc, _mm512_set1_ps(sxg[t][g - g0]), yv[t].v);
    }
  }
}

inline __mmask16 row_mask(int lo, int hi) { return __mmask16(((1u << hi) - 1) & ~((1u << lo) - 1)); }

struct Avx512 {
  using Tile = Rows16;
  static Tile zero() { return {_mm512_setzero_ps()}; }
  static Tile load_rows(const float* y, int lo, int hi) { return {load_rows16(y, row_mask(lo, hi))}; }
  static void store_rows(float* y, const Tile& t, int lo, int hi) { store_rows16(y, row_mask(lo, hi), t.v); }
  template <int KIND, int NT>
  static void row_block(const uint8_t* blk, const LutFormat& f, const LutAct* act, const float* const* sxg,
                        const int32_t* const* qg, int64_t g0, int64_t g1, Tile yv[NT], size_t pf) {
    lutllm::row_block<KIND, NT>(blk, f, act, sxg, qg, g0, g1, yv, pf);
  }
};
}  // namespace

LUTLLM_LUT_ENTRY_POINTS(Avx512, avx512, 4)

}  // namespace lutllm
