// AVX2 LUT kernels (table build, GEMV, GEMM) over the packed layout of lut.h; bit-exact twins of
// native/ref/lut_ref.cc. Compiled with -mavx2 -mfma -mf16c only; uses no STL and no shared inline code
// (the loop around row_block comes from lut_driver.h, compiled here as this file's own copy).
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "lutllm/kernel_decls.h"
#include "lutllm/lut.h"
#include "lutllm/lut_driver.h"
#include "lut_kq_x86.h"

namespace lutllm {
namespace {

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

// Scale s and offset o (o only with has_offset) of the 16 rows of group g of row block blk, loaded
// (fp16 / fp32; k-quant sub-scales take the super-block epilogue in row_block instead).
inline void load_group_scales(const uint8_t* blk, const LutGroupAddr& ga, int sb, bool has_offset, int64_t g, __m256 s[2],
                              __m256 o[2]) {
  const uint8_t* sp = blk + lut_group_at(ga, g) + ga.tile_bytes;
  s[0] = load_scales8(sp, sb);
  s[1] = load_scales8(sp + 8 * sb, sb);
  if (has_offset) {
    o[0] = load_scales8(sp + 16 * sb, sb);
    o[1] = load_scales8(sp + 24 * sb, sb);
  }
}

// The two int16 lanes of acc (8 rows each) -> int32 sums of rows 0..7; fold16: they add up exactly in
// int16 (the group's whole-sum bound fits), so one widening instead of two.
inline __m256i widen_rows(__m256i acc, bool fold16) {
  if (fold16) return _mm256_cvtepi16_epi32(_mm_add_epi16(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1)));
  return _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc)),
                          _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc, 1)));
}

// Running sums of one row block (16 rows) for one token.
struct Rows16 {
  __m256 v[2];
};

// The float step after the last group of a k-quant span (lut.h): y += d * ts/32 * J - dmin * ts/16 * M
// per row (rows 0..7 in [0], 8..15 in [1]); hp = the span's super-block header, kpos = the position in
// K of one of its activations (which table scale); J and M restart at zero.
template <int NT>
inline void kq_span_step(const uint8_t* hp, const LutAct* act, int64_t kpos, bool has_off, __m256i J[][2],
                         __m256i M[][2], Rows16* yv) {
  __m256 d[2], nd[2] = {};
  for (int h = 0; h < 2; ++h) {
    d[h] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hp + 16 * h)));
    if (has_off)
      nd[h] = _mm256_xor_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hp + 32 + 16 * h))),
                            _mm256_set1_ps(-0.0f));
  }
  for (int t = 0; t < NT; ++t) {
    const float ts = act[t].scale[kpos / act[t].ag];
    const __m256 tsh = _mm256_set1_ps(ts * 0.03125f), tsv = _mm256_set1_ps(ts * 0.0625f);
    for (int h = 0; h < 2; ++h) {
      yv[t].v[h] = _mm256_fmadd_ps(_mm256_mul_ps(d[h], tsh), _mm256_cvtepi32_ps(J[t][h]), yv[t].v[h]);
      if (has_off) yv[t].v[h] = _mm256_fmadd_ps(_mm256_mul_ps(nd[h], tsv), _mm256_cvtepi32_ps(M[t][h]), yv[t].v[h]);
      J[t][h] = M[t][h] = _mm256_setzero_si256();
    }
  }
}

// The same after J, M were summed in pmaddwd's unpack order (rows 0-3|8-11, 4-7|12-15): back to row order first.
template <int NT>
inline void kq_span_step_unpacked(const uint8_t* hp, const LutAct* act, int64_t kpos, bool has_off, __m256i J[][2],
                                  __m256i M[][2], Rows16* yv) {
  for (int t = 0; t < NT; ++t) {
    const __m256i j0 = J[t][0], j1 = J[t][1], m0 = M[t][0], m1 = M[t][1];
    J[t][0] = _mm256_permute2x128_si256(j0, j1, 0x20);
    J[t][1] = _mm256_permute2x128_si256(j0, j1, 0x31);
    M[t][0] = _mm256_permute2x128_si256(m0, m1, 0x20);
    M[t][1] = _mm256_permute2x128_si256(m0, m1, 0x31);
  }
  kq_span_step<NT>(hp, act, kpos, has_off, J, M, yv);
}

// Constants of the table lookups for n planes (ternary: 2 planes of weight 1).
struct LookupConsts {
  __m256i m4, mul01, mul23, mulS;
  LookupConsts(int n, bool tern)
      : m4(_mm256_set1_epi8(0x0F)),
        mul01(_mm256_set1_epi16(tern ? 0x0101 : 0x0201)),  // bytes (plane 2pp, 2pp+1) = (1, 2)
        mul23(_mm256_set1_epi16(0x0804)),                   // (4, 8)
        mulS(_mm256_set1_epi8(char(1 << (n - 1)))) {}
};

// The table lookups of one group block's tiles at p (G weights per row; GC = G when fixed at compile
// time) for NT tokens, tq[t] = the tables of the group's first quad: int16 sums per row and lane
// (lane = quad parity), accA rows 0..7, accB rows 8..15. Returns the address after the tiles.
template <int n, int NT, int GC>
inline const uint8_t* group_lookups(const uint8_t* p, int G, const int8_t* const* tq, const LookupConsts& c,
                                    __m256i accA[NT], __m256i accB[NT]) {
  if (GC) G = GC;
  for (int t = 0; t < NT; ++t) accA[t] = accB[t] = _mm256_setzero_si256();
  for (int pp = 0; pp < n / 2; ++pp) {
    const __m256i mul = pp == 0 ? c.mul01 : c.mul23;
    for (int qd = 0; qd < G / 4; qd += 2, p += 32) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m256i lo = _mm256_and_si256(wv, c.m4), hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), c.m4);
      for (int t = 0; t < NT; ++t) {
        const __m256i T = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tq[t] + qd * 16));
        accA[t] = _mm256_add_epi16(accA[t], _mm256_maddubs_epi16(mul, _mm256_shuffle_epi8(T, lo)));
        accB[t] = _mm256_add_epi16(accB[t], _mm256_maddubs_epi16(mul, _mm256_shuffle_epi8(T, hi)));
      }
    }
  }
  if (n & 1) {
    const int C = lut_st_chunk_quads(G), H = C / 2;  // two STs per load: quads C*c + i, +1 and those + H
    for (int ch = 0; ch < G / 4 / C; ++ch)
      for (int i = 0; i < H; i += 2, p += 32) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        const __m256i lo = _mm256_and_si256(wv, c.m4), hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), c.m4);
        for (int t = 0; t < NT; ++t) {
          const __m256i Tl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tq[t] + (C * ch + i) * 16));
          const __m256i Th = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tq[t] + (C * ch + i + H) * 16));
          const __m256i La = _mm256_shuffle_epi8(Tl, lo), Lb = _mm256_shuffle_epi8(Th, hi);
          accA[t] = _mm256_add_epi16(accA[t], _mm256_maddubs_epi16(c.mulS, _mm256_unpacklo_epi8(La, Lb)));
          accB[t] = _mm256_add_epi16(accB[t], _mm256_maddubs_epi16(c.mulS, _mm256_unpackhi_epi8(La, Lb)));
        }
      }
  }
  return p;
}

// A group's lookup sums with the two quad parities (lanes) added: int16 I of rows 0-7 | 8-15.
inline __m256i group_rows_i16(__m256i accA, __m256i accB) {
  return _mm256_add_epi16(_mm256_permute2x128_si256(accA, accB, 0x20), _mm256_permute2x128_si256(accA, accB, 0x31));
}

// (Qf_g, Qf_g+1) of two consecutive groups as int16 in every 32-bit lane (pmaddwd pairs).
inline __m256i qf_pair(const int32_t* q) {
  return _mm256_set1_epi32(int32_t((uint32_t(q[0]) & 0xFFFFu) | uint32_t(q[1]) << 16));
}

// k-quant group epilogue when I and Qf fit int16: J += 16 sc I + cq sc Qf as one pmaddwd over
// (I, Qf) x (16 sc, cq sc) pairs, M += m Qf from the same pairs x (0, m); sp = the group's sub-scale
// bytes, q[t] = Qf_g of token t. J, M stay in the unpack order (kq_span_step_unpacked).
template <int NT>
inline void kq_group_madd(const uint8_t* sp, int32_t kq, bool has_off, int32_t cq, const __m256i accA[NT],
                          const __m256i accB[NT], const int32_t* q, __m256i J[][2], __m256i M[][2]) {
  __m128i scb, mb;
  kq_subscale_bytes(sp, kq, &scb, &mb);
  const __m256i sc16 = kq == kLutKqS8 ? _mm256_cvtepi8_epi16(scb) : _mm256_cvtepu8_epi16(scb);
  const __m256i s16 = _mm256_slli_epi16(sc16, 4), scq = _mm256_mullo_epi16(sc16, _mm256_set1_epi16(int16_t(cq)));
  const __m256i W[2] = {_mm256_unpacklo_epi16(s16, scq), _mm256_unpackhi_epi16(s16, scq)};
  __m256i mw[2] = {};
  if (has_off) {
    const __m256i m16 = _mm256_cvtepu8_epi16(mb);
    mw[0] = _mm256_unpacklo_epi16(_mm256_setzero_si256(), m16);  // (0, m) pairs: m Qf from the same (I, Qf)
    mw[1] = _mm256_unpackhi_epi16(_mm256_setzero_si256(), m16);
  }
  for (int t = 0; t < NT; ++t) {
    const __m256i I16 = group_rows_i16(accA[t], accB[t]);
    const __m256i q16v = _mm256_set1_epi16(int16_t(q[t]));
    const __m256i X[2] = {_mm256_unpacklo_epi16(I16, q16v), _mm256_unpackhi_epi16(I16, q16v)};
    for (int h = 0; h < 2; ++h) {
      J[t][h] = _mm256_add_epi32(J[t][h], _mm256_madd_epi16(X[h], W[h]));
      if (has_off) M[t][h] = _mm256_add_epi32(M[t][h], _mm256_madd_epi16(X[h], mw[h]));
    }
  }
}

// Sub-scales of two consecutive groups (sub-scale bytes at sp0, sp1) as int16 (group 0, group 1) pairs
// per row, in pmaddwd's unpack order ([0]: rows 0-3 | 8-11, [1]: rows 4-7 | 12-15): ws the scales, wm
// the mins (KQ with offsets only).
template <int KQ>
inline void kq_pair_subscales(const uint8_t* sp0, const uint8_t* sp1, __m256i ws[2], __m256i wm[2]) {
  // lane 0: the byte pairs of rows 0-7, lane 1: rows 8-15
  auto pair_bytes = [](const uint8_t* x0, const uint8_t* x1) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x0));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x1));
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi8(a, b)), _mm_unpackhi_epi8(a, b), 1);
  };
  const __m256i z = _mm256_setzero_si256(), b = pair_bytes(sp0, sp1);
  if (KQ == kLutKqNibble) {  // sc | m << 4
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i sc = _mm256_and_si256(b, m4), m = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
    ws[0] = _mm256_unpacklo_epi8(sc, z);
    ws[1] = _mm256_unpackhi_epi8(sc, z);
    wm[0] = _mm256_unpacklo_epi8(m, z);
    wm[1] = _mm256_unpackhi_epi8(m, z);
  } else if (KQ == kLutKqS8) {  // sign-extended: the byte in the high half, shifted down
    ws[0] = _mm256_srai_epi16(_mm256_unpacklo_epi8(z, b), 8);
    ws[1] = _mm256_srai_epi16(_mm256_unpackhi_epi8(z, b), 8);
  } else {  // uint8 sc, then uint8 m
    const __m256i m = pair_bytes(sp0 + kLutRows, sp1 + kLutRows);
    ws[0] = _mm256_unpacklo_epi8(b, z);
    ws[1] = _mm256_unpackhi_epi8(b, z);
    wm[0] = _mm256_unpacklo_epi8(m, z);
    wm[1] = _mm256_unpackhi_epi8(m, z);
  }
}

// GEMV of one row block over whole k-quant super-blocks, spans = super-blocks (ag a multiple of 256):
// Q2_K's W2 g16 + 4-bit sub-scales with offset (KQ = kLutKqNibble, OFF), Q3_K's W3 g16 + int8
// sub-scales (kLutKqS8, symmetric) and Q4_K's W4 g32 + uint8 sub-scales with offset (kLutKqU8, OFF).
// The operations of row_block's k-quant path, with the format fixed at compile time, the group blocks
// walked by pointer and a fixed number of prefetches per group block: the general loop's address
// arithmetic, prefetch cursor and format branches were about half of its instructions (perf annotate
// of Q2_K), and these loops are compute-bound.
// The epilogue takes groups two at a time: J = sum sc (16 I + cq Qf) as 16 J1 + cq J2 with
// J1 = sum sc I and J2 = sum sc Qf, each pmaddwd covering a row's two groups ((I_g, I_g+1) x (sc_g,
// sc_g+1), (Qf_g, Qf_g+1) x (sc_g, sc_g+1), and (Qf_g, Qf_g+1) x (m_g, m_g+1) for M): the same integers
// as kq_group_madd's, in about two thirds of its instructions (bounds: lut.h; |J1|, |J2| < 2^31 for
// every k-quant format).
template <int KIND, int kG, int KQ, bool OFF>
void row_block_kq_gemv(const uint8_t* blk, const LutGroupAddr& ga, const LutAct* act, const int32_t* qg,
                       int64_t g0, int64_t g1, Rows16* yv, size_t pf) {
  constexpr int kGroups = 256 / kG;
  static_assert(kGroups % 2 == 0, "groups go in pairs");
  constexpr size_t kTiles = 2 * kG * KIND, kGroupBytes = kTiles + kLutRows * (KQ == kLutKqU8 ? 2 : 1);
  constexpr size_t kHeader = OFF ? 64 : 32;
  constexpr int32_t cq = OFF ? (1 << KIND) - 1 : -1;
  static_assert(127 * ((1 << KIND) - 1) * (kG / 4) <= 32767 && 16 * 127 * (kG / 4) <= 32767, "I, Qf fit int16");
  const LookupConsts c(KIND, false);
  const uint8_t* sb = blk + lut_header_at(ga, g0);
  const int8_t* tq = act->tab + g0 * (kG / 4) * 16;
  const int32_t* q = qg;
  PrefetchCursor pfc{sb + pf};
  for (int64_t g = g0; g < g1; g += kGroups, sb += kHeader + kGroups * kGroupBytes) {
    __m256i J1[2] = {}, J2[2] = {}, M[1][2] = {};
    const uint8_t* p = sb + kHeader;
    for (int i = 0; i < kGroups; i += 2, q += 2) {
      __m256i I[2];
      for (int u = 0; u < 2; ++u, p += kGroupBytes, tq += (kG / 4) * 16) {
        if (pf) {
          if (kG == 16)  // 80 / 112-byte blocks: two lines from p + pf cover this one and the gap to the next
            for (int l = 0; l < 2; ++l) __builtin_prefetch(p + pf + 64 * l, 0, 3);
          else  // 288-byte blocks: each line once (five per block would repeat one; 10% slower at 2 threads)
            pfc.upto(p + pf + kGroupBytes + kHeader);
        }
        __m256i accA[1], accB[1];
        group_lookups<KIND, 1, kG>(p, kG, &tq, c, accA, accB);
        I[u] = group_rows_i16(accA[0], accB[0]);
      }
      __m256i ws[2], wm[2];
      kq_pair_subscales<KQ>(p - 2 * kGroupBytes + kTiles, p - kGroupBytes + kTiles, ws, wm);
      const __m256i qpair = qf_pair(q);
      const __m256i X[2] = {_mm256_unpacklo_epi16(I[0], I[1]), _mm256_unpackhi_epi16(I[0], I[1])};
      for (int h = 0; h < 2; ++h) {
        J1[h] = _mm256_add_epi32(J1[h], _mm256_madd_epi16(X[h], ws[h]));
        J2[h] = _mm256_add_epi32(J2[h], _mm256_madd_epi16(qpair, ws[h]));
        if (OFF) M[0][h] = _mm256_add_epi32(M[0][h], _mm256_madd_epi16(qpair, wm[h]));
      }
    }
    __m256i J[1][2];
    for (int h = 0; h < 2; ++h)
      J[0][h] = _mm256_add_epi32(_mm256_slli_epi32(J1[h], 4), _mm256_mullo_epi32(J2[h], _mm256_set1_epi32(cq)));
    kq_span_step_unpacked<1>(sb, act, g * kG, OFF, J, M, yv);
  }
}

// GEMM (NT tokens) of one row block over k-quant groups [g0, g1), g0 and g1 even and spans of an even
// number of groups: the epilogue of row_block_kq_gemv, groups in pairs, with J kept whole (J += (I_g,
// I_g+1) x 16 (sc_g, sc_g+1) + (Qf_g, Qf_g+1) x cq (sc_g, sc_g+1)) so each token needs no more
// accumulators than the per-group loop: the sub-scale work is shared by the NT tokens and each token
// does half the lane interleaves and pmaddwd of kq_group_madd. Same integers, bit-exact.
template <int KIND, int NT, int kG, int KQ, bool OFF>
void row_block_kq_pairs(const uint8_t* blk, const LutGroupAddr& ga, const LutAct* act, const int32_t* const* qg,
                        int64_t g0, int64_t g1, int64_t smask, Rows16 yv[NT], size_t pf) {
  constexpr int32_t cq = OFF ? (1 << KIND) - 1 : -1;
  static_assert(127 * ((1 << KIND) - 1) * (kG / 4) <= 32767 && 16 * 127 * (kG / 4) <= 32767, "I, Qf fit int16");
  const LookupConsts c(KIND, false);
  __m256i J[NT][2], M[NT][2];
  for (int t = 0; t < NT; ++t) J[t][0] = J[t][1] = M[t][0] = M[t][1] = _mm256_setzero_si256();
  PrefetchCursor pfc{blk + lut_group_at(ga, g0) + pf};
  for (int64_t g = g0; g < g1; g += 2) {
    const uint8_t* p[2] = {blk + lut_group_at(ga, g), blk + lut_group_at(ga, g + 1)};
    if (pf) pfc.upto(p[1] + pf + ga.group_bytes + ga.header_bytes);
    __m256i I[2][NT];
    for (int u = 0; u < 2; ++u) {
      const int8_t* tq[NT];
      __m256i accA[NT], accB[NT];
      for (int t = 0; t < NT; ++t) tq[t] = act[t].tab + (g + u) * (kG / 4) * 16;
      group_lookups<KIND, NT, kG>(p[u], kG, tq, c, accA, accB);
      for (int t = 0; t < NT; ++t)
        I[u][t] = group_rows_i16(accA[t], accB[t]);
    }
    __m256i ws[2], wm[2];
    kq_pair_subscales<KQ>(p[0] + ga.tile_bytes, p[1] + ga.tile_bytes, ws, wm);
    const __m256i ws16[2] = {_mm256_slli_epi16(ws[0], 4), _mm256_slli_epi16(ws[1], 4)};
    const __m256i wsq[2] = {_mm256_mullo_epi16(ws[0], _mm256_set1_epi16(int16_t(cq))),
                            _mm256_mullo_epi16(ws[1], _mm256_set1_epi16(int16_t(cq)))};
    for (int t = 0; t < NT; ++t) {
      const __m256i qpair = qf_pair(qg[t] + (g - g0));
      const __m256i X[2] = {_mm256_unpacklo_epi16(I[0][t], I[1][t]), _mm256_unpackhi_epi16(I[0][t], I[1][t])};
      for (int h = 0; h < 2; ++h) {
        J[t][h] = _mm256_add_epi32(J[t][h], _mm256_add_epi32(_mm256_madd_epi16(X[h], ws16[h]), _mm256_madd_epi16(qpair, wsq[h])));
        if (OFF) M[t][h] = _mm256_add_epi32(M[t][h], _mm256_madd_epi16(qpair, wm[h]));
      }
    }
    if (((g + 1) & smask) == smask) kq_span_step_unpacked<NT>(blk + lut_header_at(ga, g + 1), act, (g + 1) * kG, OFF, J, M, yv);
  }
}

// Rows of one row block for NT activation vectors, groups [g0, g1); yv holds the running sums.
// GC: the group size when fixed at compile time (the k-quant sizes), 0 = f.group at run time.
template <int KIND, int NT, int GC>
void row_block(const uint8_t* blk, const LutFormat& f, const LutAct* act, const float* const* sxg,
               const int32_t* const* qg, int64_t g0, int64_t g1, Rows16 yv[NT], size_t pf) {
  constexpr bool kTern = KIND == int(LutKind::TERNARY);
  constexpr int n = kTern ? 2 : KIND;
  const int G = GC ? GC : f.group, sb = f.scale_bytes;
  const bool has_off = f.has_offset != 0;
  const LutGroupAddr ga = lut_group_addr(f);
  const LookupConsts c(n, kTern);
  const __m256 vcn = _mm256_set1_ps(float((1 << n) - 1) * 0.5f), vmhalf = _mm256_set1_ps(-0.5f);
  // the group's int16 lane sums add up exactly in int16 when the whole-group bound fits (lut.h:
  // |I| <= 127 * (2^n - 1) * G/4; ternary 127 * 2 * G/4): then one widening per row half, not two
  const bool fold16 = 127 * (kTern ? 2 : (1 << n) - 1) * (G / 4) <= 32767;
  // k-quant super-block epilogue (lut.h): int32 J, M per token and row half; m * Qf as one pmaddwd
  // when |Qf| <= 16 * 127 * G/4 fits int16 (m sits in the low 16 bits of its lane, high 0)
  const int32_t cq = has_off ? (1 << n) - 1 : -1;
  const int64_t smask = lut_kq_span_mask(f, act[0].ag);  // all tokens share ag
  const bool q16 = 16 * 127 * (G / 4) <= 32767;
  __m256i J[NT][2], M[NT][2];
  for (int t = 0; t < NT; ++t) J[t][0] = J[t][1] = M[t][0] = M[t][1] = _mm256_setzero_si256();
  PrefetchCursor pfc{blk + lut_group_at(ga, g0) + pf};
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* p = blk + lut_group_at(ga, g);
    // the bytes pf ahead of this group block (later groups, then the next row blocks); the extent
    // also covers a k-quant super-block header, so the prefetched windows leave no gaps
    if (pf) pfc.upto(p + pf + ga.group_bytes + ga.header_bytes);
    const int8_t* tq[NT];
    __m256i accA[NT], accB[NT];
    for (int t = 0; t < NT; ++t) tq[t] = act[t].tab + g * G / 4 * 16;
    group_lookups<n, NT, GC>(p, G, tq, c, accA, accB);
    if (!kTern && ga.kq && fold16 && q16) {
      int32_t q[NT];
      for (int t = 0; t < NT; ++t) q[t] = qg[t][g - g0];
      kq_group_madd<NT>(p + ga.tile_bytes, ga.kq, has_off, cq, accA, accB, q, J, M);
      if ((g & smask) == smask) kq_span_step_unpacked<NT>(blk + lut_header_at(ga, g), act, g * G, has_off, J, M, yv);
      continue;
    }
    if (!kTern && ga.kq) {
      __m128i scb, mb;
      kq_subscale_bytes(p + ga.tile_bytes, ga.kq, &scb, &mb);
      __m256i sc32[2], m32[2];
      for (int h = 0; h < 2; ++h) {
        const __m128i b = h ? _mm_srli_si128(scb, 8) : scb;
        sc32[h] = ga.kq == kLutKqS8 ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
        m32[h] = _mm256_cvtepu8_epi32(h ? _mm_srli_si128(mb, 8) : mb);
      }
      for (int t = 0; t < NT; ++t) {
        const __m256i I[2] = {widen_rows(accA[t], fold16), widen_rows(accB[t], fold16)};
        const int32_t q = qg[t][g - g0];
        const __m256i cqq = _mm256_set1_epi32(cq * q), qv = _mm256_set1_epi32(q);
        for (int h = 0; h < 2; ++h) {
          const __m256i K = _mm256_add_epi32(_mm256_slli_epi32(I[h], 4), cqq);
          J[t][h] = _mm256_add_epi32(J[t][h], _mm256_mullo_epi32(K, sc32[h]));
          if (has_off)
            M[t][h] = _mm256_add_epi32(M[t][h], q16 ? _mm256_madd_epi16(m32[h], qv) : _mm256_mullo_epi32(m32[h], qv));
        }
      }
      // last group of the span
      if ((g & smask) == smask) kq_span_step<NT>(blk + lut_header_at(ga, g), act, g * G, has_off, J, M, yv);
      continue;
    }
    // epilogue: y = fma(s * tsh, I, y); y = fma(c, Sx, y)  (same operations as the scalar twin)
    __m256 sv[2], ov[2];
    load_group_scales(blk, ga, sb, has_off, g, sv, ov);
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
      const __m256i I0 = widen_rows(accA[t], fold16), I1 = widen_rows(accB[t], fold16);
      const __m256 tsh = _mm256_set1_ps(0.5f * act[t].scale[g * G / act[t].ag]);
      yv[t].v[0] = _mm256_fmadd_ps(_mm256_mul_ps(s0, tsh), _mm256_cvtepi32_ps(I0), yv[t].v[0]);
      yv[t].v[1] = _mm256_fmadd_ps(_mm256_mul_ps(s1, tsh), _mm256_cvtepi32_ps(I1), yv[t].v[1]);
      if (!kTern) {
        const __m256 sx = _mm256_set1_ps(sxg[t][g - g0]);
        yv[t].v[0] = _mm256_fmadd_ps(c0, sx, yv[t].v[0]);
        yv[t].v[1] = _mm256_fmadd_ps(c1, sx, yv[t].v[1]);
      }
    }
  }
}

// Write / read rows [lo, hi) of one block (row numbers relative to the block).
struct Avx2 {
  using Tile = Rows16;
  static Tile zero() { return {{_mm256_setzero_ps(), _mm256_setzero_ps()}}; }
  static void store_rows(float* y, const Tile& t, int lo, int hi) {
    if (lo == 0 && hi == kLutRows) {
      _mm256_storeu_ps(y, t.v[0]);
      _mm256_storeu_ps(y + 8, t.v[1]);
      return;
    }
    alignas(32) float tmp[kLutRows];
    _mm256_store_ps(tmp, t.v[0]);
    _mm256_store_ps(tmp + 8, t.v[1]);
    for (int r = lo; r < hi; ++r) y[r] = tmp[r];
  }
  static Tile load_rows(const float* y, int lo, int hi) {
    if (lo == 0 && hi == kLutRows) return {{_mm256_loadu_ps(y), _mm256_loadu_ps(y + 8)}};
    alignas(32) float tmp[kLutRows] = {0};
    for (int r = lo; r < hi; ++r) tmp[r] = y[r];
    return {{_mm256_load_ps(tmp), _mm256_load_ps(tmp + 8)}};
  }
  template <int KIND, int NT>
  static void row_block(const uint8_t* blk, const LutFormat& f, const LutAct* act, const float* const* sxg,
                        const int32_t* const* qg, int64_t g0, int64_t g1, Tile yv[NT], size_t pf) {
    // one token over whole super-blocks that are also the table-scale spans: the fixed-format loops
    // (Q2_K, Q3_K, Q4_K); else fully unrolled copies: g16 always, g32 for GEMV only (slower for NT = 8)
    // several tokens, k-quant groups in pairs (spans and [g0, g1) of whole pairs)
    if (NT > 1 && lut_is_kq(f)) {
      const LutGroupAddr ga = lut_group_addr(f);
      const int64_t smask = lut_kq_span_mask(f, act[0].ag);
      if (smask >= 1 && (smask & 1) && g0 % 2 == 0 && g1 % 2 == 0) {
        if (KIND == 2 && f.group == 16 && ga.kq == kLutKqNibble && f.has_offset)
          return row_block_kq_pairs<2, NT, 16, kLutKqNibble, true>(blk, ga, act, qg, g0, g1, smask, yv, pf);
        if (KIND == 3 && f.group == 16 && ga.kq == kLutKqS8 && !f.has_offset)
          return row_block_kq_pairs<3, NT, 16, kLutKqS8, false>(blk, ga, act, qg, g0, g1, smask, yv, pf);
        if (KIND == 4 && f.group == 32 && ga.kq == kLutKqU8 && f.has_offset)
          return row_block_kq_pairs<4, NT, 32, kLutKqU8, true>(blk, ga, act, qg, g0, g1, smask, yv, pf);
      }
    }
    if (f.group == 16) {
      if (NT == 1 && lut_kq_span_mask(f, act[0].ag) == 256 / 16 - 1 && g0 % 16 == 0 && g1 % 16 == 0) {
        const LutGroupAddr ga = lut_group_addr(f);
        if (KIND == 2 && ga.kq == kLutKqNibble && f.has_offset)
          return row_block_kq_gemv<2, 16, kLutKqNibble, true>(blk, ga, act, qg[0], g0, g1, yv, pf);
        if (KIND == 3 && ga.kq == kLutKqS8 && !f.has_offset)
          return row_block_kq_gemv<3, 16, kLutKqS8, false>(blk, ga, act, qg[0], g0, g1, yv, pf);
      }
      return lutllm::row_block<KIND, NT, 16>(blk, f, act, sxg, qg, g0, g1, yv, pf);
    }
    if (NT == 1 && f.group == 32) {
      if (KIND == 4 && f.scale_bytes == kLutScaleKQ && f.has_offset && lut_kq_span_mask(f, act[0].ag) == 256 / 32 - 1 &&
          g0 % 8 == 0 && g1 % 8 == 0)
        return row_block_kq_gemv<4, 32, kLutKqU8, true>(blk, lut_group_addr(f), act, qg[0], g0, g1, yv, pf);
      return lutllm::row_block<KIND, NT, 32>(blk, f, act, sxg, qg, g0, g1, yv, pf);
    }
    lutllm::row_block<KIND, NT, 0>(blk, f, act, sxg, qg, g0, g1, yv, pf);
  }
};
}  // namespace

void lut_build_g4__avx2(const float* x, int64_t k, int32_t ag, int64_t ag_begin, int64_t ag_end, int8_t* tab,
                        float* scale, float* sum16) {
  build_avx2(x, k, ag, ag_begin, ag_end, tab, scale, sum16);
}

LUTLLM_LUT_ENTRY_POINTS(Avx2, avx2, 4)

}  // namespace lutllm
