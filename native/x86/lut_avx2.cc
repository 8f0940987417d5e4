// AVX2 LUT kernels (table build, GEMV, GEMM) over the packed layout of lut.h; bit-exact twins of
// native/ref/lut_ref.cc. Compiled with -mavx2 -mfma -mf16c only; uses no STL and no shared inline code.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "lutllm/kernel_decls.h"
#include "lutllm/lut.h"

namespace lutllm {
namespace {

constexpr int64_t kSxBuf = 4096;  // floats of precomputed group sums per K block
// Bytes of weights prefetched ahead of the group block in use. The hardware prefetcher alone left a
// 1-thread GEMV at ~75% of the read-bandwidth probe; 2-8 KB ahead measured best (4 KB chosen).
constexpr size_t kPrefetchAhead = 4096;

// ---- table build ----------------------------------------------------------------------------

// Sign masks: lane idx of the low (idx 0..7) / high (8..15) entry vector negates x_j where bit j
// of idx is 0 (xor of the sign bit is an exact negation, as -x is in the scalar twin).
struct BuildConsts {
  __m256 neg[2][4];
  BuildConsts() {
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 4; ++j) {
        alignas(32) float m[8];
        for (int l = 0; l < 8; ++l) m[l] = (((h * 8 + l) >> j) & 1) ? 0.0f : -0.0f;
        neg[h][j] = _mm256_load_ps(m);
      }
  }
};

void build_avx2(const float* x, int64_t k, int32_t ag, int64_t ag_begin, int64_t ag_end, int8_t* tab, float* scale,
                float* sum16) {
  const BuildConsts bc;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t a = ag_begin; a < ag_end; ++a) {
    const float* xa = x + a * ag;
    // mx = max over quads of (|x0|+|x1|) + (|x2|+|x3|): two hadds give exactly that pairing.
    __m256 vmax = _mm256_setzero_ps();
    for (int q = 0; q < ag / 4; q += 4) {  // 4 quads (16 floats) per step; ag % 16 == 0
      const __m256 v0 = _mm256_and_ps(_mm256_loadu_ps(xa + 4 * q), absmask);
      const __m256 v1 = _mm256_and_ps(_mm256_loadu_ps(xa + 4 * q + 8), absmask);
      const __m256 h1 = _mm256_hadd_ps(v0, v1);  // per lane: pair sums
      const __m256 h2 = _mm256_hadd_ps(h1, h1);  // per lane: quad sums (pair + pair)
      vmax = _mm256_max_ps(vmax, h2);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    const float mx = _mm_cvtss_f32(m4);
    const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    scale[a] = mx / 127.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    for (int q = 0; q < ag / 4; ++q) {
      const float* v = xa + 4 * q;
      const __m256 x0 = _mm256_set1_ps(v[0]), x1 = _mm256_set1_ps(v[1]), x2 = _mm256_set1_ps(v[2]),
                   x3 = _mm256_set1_ps(v[3]);
      __m128i half[2];
      for (int h = 0; h < 2; ++h) {
        __m256 e = _mm256_xor_ps(x0, bc.neg[h][0]);
        e = _mm256_add_ps(e, _mm256_xor_ps(x1, bc.neg[h][1]));
        e = _mm256_add_ps(e, _mm256_xor_ps(x2, bc.neg[h][2]));
        e = _mm256_add_ps(e, _mm256_xor_ps(x3, bc.neg[h][3]));
        const __m256 r = _mm256_round_ps(_mm256_mul_ps(e, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256i i = _mm256_cvtps_epi32(r);
        half[h] = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(tab + (a * ag / 4 + q) * 16), _mm_packs_epi16(half[0], half[1]));
    }
    for (int i = 0; i < ag / 16; ++i) {
      __m256 s = _mm256_add_ps(_mm256_loadu_ps(xa + 16 * i), _mm256_loadu_ps(xa + 16 * i + 8));
      __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
      s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
      s4 = _mm_add_ss(s4, _mm_shuffle_ps(s4, s4, 1));
      sum16[a * ag / 16 + i] = _mm_cvtss_f32(s4);
    }
  }
}

// ---- GEMV / GEMM ----------------------------------------------------------------------------
//
// One 32-byte load = two tiles = two quads (PT) or two STs; lanes 0/1 use the tables of those
// quads, loaded as one 32-byte vector. pmaddubsw folds each row's two planes (PT) or two quads (ST,
// after an unpack) into int16; accA holds rows 0..7, accB rows 8..15, per lane.
// int16 bound: each lane sees G/8 quads; per quad and row at most 127 * (2^n - 1) (ternary 127 * 2),
// so |acc| <= 127 * 15 * 128/8 = 30480 < 32767 for 4-bit G = 128. The lanes are summed in int32.

inline float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

inline __m256 load_scales8(const uint8_t* p, int scale_bytes) {
  if (scale_bytes == 2) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
}

// fp32 d and -dmin of the 16 rows of the k-quant super-block last used (converted once per super-block)
struct KqHeader {
  int64_t super = -1;
  __m256 d[2]{}, nd[2]{};
};

// Scale s and offset o (o only with has_offset) of the 16 rows of group g of row block blk, as
// lut_group_scales computes them: loaded (fp16 / fp32), or for k-quant sub-scales formed exactly as
// s = float(d) * float(sc), o = (-float(dmin)) * float(m) (== -(dmin * m) bit for bit: exact products).
inline void load_group_scales(const uint8_t* blk, const LutGroupAddr& ga, int sb, bool has_offset, int64_t g, KqHeader& hc,
                              __m256 s[2], __m256 o[2]) {
  const uint8_t* sp = blk + lut_group_at(ga, g) + ga.tile_bytes;
  if (ga.kq) {
    const int64_t super = g >> ga.shift;
    if (super != hc.super) {
      const uint8_t* hp = blk + lut_header_at(ga, g);
      const __m256 sign = _mm256_set1_ps(-0.0f);
      for (int h = 0; h < 2; ++h) {
        hc.d[h] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hp + 16 * h)));
        hc.nd[h] = _mm256_xor_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hp + 32 + 16 * h))), sign);
      }
      hc.super = super;
    }
    const __m128i scb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sp));
    const __m128i mb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + kLutRows));
    s[0] = _mm256_mul_ps(hc.d[0], _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scb)));
    s[1] = _mm256_mul_ps(hc.d[1], _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scb, 8))));
    o[0] = _mm256_mul_ps(hc.nd[0], _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mb)));
    o[1] = _mm256_mul_ps(hc.nd[1], _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(mb, 8))));
    return;
  }
  s[0] = load_scales8(sp, sb);
  s[1] = load_scales8(sp + 8 * sb, sb);
  if (has_offset) {
    o[0] = load_scales8(sp + 16 * sb, sb);
    o[1] = load_scales8(sp + 24 * sb, sb);
  }
}

// Sum of the group's sum16 entries, left to right (as lut_group_sum, compiled here).
inline float group_sum(const float* sum16, int64_t g, int group) {
  const int64_t i0 = g * (group / 16);
  float s = sum16[i0];
  for (int i = 1; i < group / 16; ++i) s = s + sum16[i0 + i];
  return s;
}

// Rows of one row block for NT activation vectors, groups [g0, g1); yv holds the running sums.
template <int KIND, int NT>
void row_block(const uint8_t* blk, const LutFormat& f, const LutAct* act, const float* const* sxg, int64_t g0, int64_t g1,
               __m256 yv[NT][2], size_t pf) {
  constexpr bool kTern = KIND == int(LutKind::TERNARY);
  constexpr int n = kTern ? 2 : KIND;
  const int G = f.group, sb = f.scale_bytes;
  const bool has_off = f.has_offset != 0;
  const LutGroupAddr ga = lut_group_addr(f);
  KqHeader hc;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i mul01 = _mm256_set1_epi16(kTern ? 0x0101 : 0x0201);  // bytes (plane 2pp, 2pp+1) = (1, 2)
  const __m256i mul23 = _mm256_set1_epi16(0x0804);                    // (4, 8)
  const __m256i mulS = _mm256_set1_epi8(char(1 << (n - 1)));
  const __m256 vcn = _mm256_set1_ps(float((1 << n) - 1) * 0.5f), vmhalf = _mm256_set1_ps(-0.5f);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* p = blk + lut_group_at(ga, g);
    // the bytes pf ahead of this group block (later groups, then the next row blocks); the extent
    // also covers a k-quant super-block header, so the prefetched windows leave no gaps
    if (pf)
      for (size_t l = 0; l < ga.group_bytes + ga.header_bytes; l += 64) _mm_prefetch(reinterpret_cast<const char*>(p + pf + l), _MM_HINT_T0);
    const int8_t* tq[NT];
    __m256i accA[NT], accB[NT];
    for (int t = 0; t < NT; ++t) {
      tq[t] = act[t].tab + g * G / 4 * 16;
      accA[t] = accB[t] = _mm256_setzero_si256();
    }
    for (int pp = 0; pp < n / 2; ++pp) {
      const __m256i mul = pp == 0 ? mul01 : mul23;
      for (int qd = 0; qd < G / 4; qd += 2, p += 32) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        const __m256i lo = _mm256_and_si256(wv, m4), hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m4);
        for (int t = 0; t < NT; ++t) {
          const __m256i T = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tq[t] + qd * 16));
          accA[t] = _mm256_add_epi16(accA[t], _mm256_maddubs_epi16(mul, _mm256_shuffle_epi8(T, lo)));
          accB[t] = _mm256_add_epi16(accB[t], _mm256_maddubs_epi16(mul, _mm256_shuffle_epi8(T, hi)));
        }
      }
    }
    if (n & 1) {
      for (int c = 0; c < G / 32; ++c)
        for (int i = 0; i < 4; i += 2, p += 32) {
          const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
          const __m256i lo = _mm256_and_si256(wv, m4), hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m4);
          for (int t = 0; t < NT; ++t) {
            const __m256i Tl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tq[t] + (8 * c + i) * 16));
            const __m256i Th = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tq[t] + (8 * c + i + 4) * 16));
            const __m256i La = _mm256_shuffle_epi8(Tl, lo), Lb = _mm256_shuffle_epi8(Th, hi);
            accA[t] = _mm256_add_epi16(accA[t], _mm256_maddubs_epi16(mulS, _mm256_unpacklo_epi8(La, Lb)));
            accB[t] = _mm256_add_epi16(accB[t], _mm256_maddubs_epi16(mulS, _mm256_unpackhi_epi8(La, Lb)));
          }
        }
    }
    // epilogue: y = fma(s * tsh, I, y); y = fma(c, Sx, y)  (same operations as the scalar twin)
    __m256 sv[2], ov[2];
    load_group_scales(blk, ga, sb, has_off, g, hc, sv, ov);
    const __m256 s0 = sv[0], s1 = sv[1];
    __m256 c0 = s0, c1 = s1;
    if (!kTern) {
      if (has_off) {
        c0 = _mm256_fmadd_ps(s0, vcn, ov[0]);
        c1 = _mm256_fmadd_ps(s1, vcn, ov[1]);
      } else {
        c0 = _mm256_mul_ps(s0, vmhalf);
        c1 = _mm256_mul_ps(s1, vmhalf);
      }
    }
    for (int t = 0; t < NT; ++t) {
      const __m256i I0 = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(accA[t])),
                                          _mm256_cvtepi16_epi32(_mm256_extracti128_si256(accA[t], 1)));
      const __m256i I1 = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(accB[t])),
                                          _mm256_cvtepi16_epi32(_mm256_extracti128_si256(accB[t], 1)));
      const __m256 tsh = _mm256_set1_ps(0.5f * act[t].scale[g * G / act[t].ag]);
      yv[t][0] = _mm256_fmadd_ps(_mm256_mul_ps(s0, tsh), _mm256_cvtepi32_ps(I0), yv[t][0]);
      yv[t][1] = _mm256_fmadd_ps(_mm256_mul_ps(s1, tsh), _mm256_cvtepi32_ps(I1), yv[t][1]);
      if (!kTern) {
        const __m256 sx = _mm256_set1_ps(sxg[t][g - g0]);
        yv[t][0] = _mm256_fmadd_ps(c0, sx, yv[t][0]);
        yv[t][1] = _mm256_fmadd_ps(c1, sx, yv[t][1]);
      }
    }
  }
}

// Write 16 rows of one block, clipped to [lo, hi) (row numbers relative to the block).
inline void store_rows(float* y, const __m256 v[2], int lo, int hi) {
  if (lo == 0 && hi == kLutRows) {
    _mm256_storeu_ps(y, v[0]);
    _mm256_storeu_ps(y + 8, v[1]);
    return;
  }
  alignas(32) float tmp[kLutRows];
  _mm256_store_ps(tmp, v[0]);
  _mm256_store_ps(tmp + 8, v[1]);
  for (int r = lo; r < hi; ++r) y[r] = tmp[r];
}

inline void load_rows(const float* y, __m256 v[2], int lo, int hi) {
  if (lo == 0 && hi == kLutRows) {
    v[0] = _mm256_loadu_ps(y);
    v[1] = _mm256_loadu_ps(y + 8);
    return;
  }
  alignas(32) float tmp[kLutRows] = {0};
  for (int r = lo; r < hi; ++r) tmp[r] = y[r];
  v[0] = _mm256_load_ps(tmp);
  v[1] = _mm256_load_ps(tmp + 8);
}

// Token tile NT; the K range is walked in blocks so a block's tables (all tokens) stay in cache
// while every row block streams past. y carries the partial sums between K blocks, so the
// operation order per output is unchanged (bit-exact with one pass).
template <int KIND, int NT>
void gemm_tile(const LutWeights* w, const LutAct* a, int64_t n_tok, int64_t row_begin, int64_t row_end, float* y,
               int64_t y_stride, int64_t kb_groups) {
  const LutFormat& f = w->fmt;
  const int64_t ngroups = w->k / f.group;
  const size_t rbb = lut_row_block_bytes(f, w->k);
  const int64_t end = row_end < w->rows ? row_end : w->rows;
  // Software prefetch only when K is walked in one pass (GEMV): the weights are then read front to back.
  const size_t pf = kb_groups >= ngroups ? kPrefetchAhead : 0;
  for (int64_t g0 = 0; g0 < ngroups; g0 += kb_groups) {
    const int64_t g1 = g0 + kb_groups < ngroups ? g0 + kb_groups : ngroups;
    // Sx per (token, group) once per K block, not once per row block (callers bound n_tok * kb)
    float sxbuf[kSxBuf];
    for (int64_t t = 0; t < n_tok; ++t)
      for (int64_t g = g0; g < g1; ++g) sxbuf[t * (g1 - g0) + (g - g0)] = group_sum(a[t].sum16, g, f.group);
    for (int64_t rb = row_begin / kLutRows; rb * kLutRows < end; ++rb) {
      const int64_t r0 = rb * kLutRows;
      const int lo = int((row_begin > r0 ? row_begin : r0) - r0);
      const int hi = int((end < r0 + kLutRows ? end : r0 + kLutRows) - r0);
      const uint8_t* blk = w->data + size_t(rb) * rbb;
      int64_t t = 0;
      for (; t + NT <= n_tok; t += NT) {
        __m256 yv[NT][2];
        for (int u = 0; u < NT; ++u) {
          if (g0 == 0) yv[u][0] = yv[u][1] = _mm256_setzero_ps();
          else load_rows(y + (t + u) * y_stride + r0, yv[u], lo, hi);
        }
        const float* sxp[NT];
        for (int u = 0; u < NT; ++u) sxp[u] = sxbuf + (t + u) * (g1 - g0);
        row_block<KIND, NT>(blk, f, a + t, sxp, g0, g1, yv, pf);
        for (int u = 0; u < NT; ++u) store_rows(y + (t + u) * y_stride + r0, yv[u], lo, hi);
      }
      for (; t < n_tok; ++t) {
        __m256 yv[1][2];
        if (g0 == 0) yv[0][0] = yv[0][1] = _mm256_setzero_ps();
        else load_rows(y + t * y_stride + r0, yv[0], lo, hi);
        const float* sxp[1] = {sxbuf + t * (g1 - g0)};
        row_block<KIND, 1>(blk, f, a + t, sxp, g0, g1, yv, pf);
        store_rows(y + t * y_stride + r0, yv[0], lo, hi);
      }
    }
  }
}

// Bounds the per-K-block Sx buffer (n_tok * groups in the block <= kSxBuf): a few tokens walk K in
// one pass (up to kSxBuf / NT groups); more tokens walk it in 512-activation blocks so that block's
// tables (2 KB per token) stay in cache, in chunks of tokens.
template <int KIND, int NT>
void gemm_driver(const LutWeights* w, const LutAct* a, int64_t n_tok, int64_t row_begin, int64_t row_end, float* y,
                 int64_t y_stride) {
  const int64_t ng = w->k / w->fmt.group;
  if (n_tok <= NT) {
    const int64_t kb = ng < kSxBuf / NT ? ng : kSxBuf / NT;
    gemm_tile<KIND, NT>(w, a, n_tok, row_begin, row_end, y, y_stride, kb);
    return;
  }
  const int64_t kb = ng < 512 / w->fmt.group ? ng : 512 / w->fmt.group;
  const int64_t chunk = kSxBuf / kb;
  for (int64_t t0 = 0; t0 < n_tok; t0 += chunk)
    gemm_tile<KIND, NT>(w, a + t0, n_tok - t0 < chunk ? n_tok - t0 : chunk, row_begin, row_end, y + t0 * y_stride,
                        y_stride, kb);
}
}  // namespace

void lut_build_g4__avx2(const float* x, int64_t k, int32_t ag, int64_t ag_begin, int64_t ag_end, int8_t* tab,
                        float* scale, float* sum16) {
  build_avx2(x, k, ag, ag_begin, ag_end, tab, scale, sum16);
}

#define LUTLLM_LUT_AVX2(KIND, SUFFIX)                                                                          \
  void lut_gemv_##SUFFIX##_g4__avx2(const LutWeights* w, const LutAct* a, int64_t row_begin, int64_t row_end,  \
                                    float* y) {                                                                \
    gemm_driver<KIND, 1>(w, a, 1, row_begin, row_end, y, 0);                                                              \
  }                                                                                                            \
  void lut_gemm_##SUFFIX##_g4__avx2(const LutWeights* w, const LutAct* a, int64_t n_tok, int64_t row_begin,    \
                                    int64_t row_end, float* y, int64_t y_stride) {                             \
    gemm_driver<KIND, 4>(w, a, n_tok, row_begin, row_end, y, y_stride);                                             \
  }
LUTLLM_LUT_AVX2(1, w1)
LUTLLM_LUT_AVX2(2, w2)
LUTLLM_LUT_AVX2(3, w3)
LUTLLM_LUT_AVX2(4, w4)
LUTLLM_LUT_AVX2(5, wt)
#undef LUTLLM_LUT_AVX2

}  // namespace lutllm
