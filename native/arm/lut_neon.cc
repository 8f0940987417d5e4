// NEON LUT kernels (table build, GEMV, GEMM) over the packed layout of lut.h: one tile per vector,
// vqtbl1q_s8 lookups. Bit-exact twins of native/ref/lut_ref.cc. Baseline aarch64; no STL here. The
// loop around row_block is lut_driver.h's.
#include <arm_neon.h>

#include <cstring>

#include "lutllm/kernel_decls.h"
#include "lutllm/lut.h"
#include "lutllm/lut_driver.h"

namespace lutllm {
namespace {


// ---- table build ----------------------------------------------------------------------------

void build_neon(const float* x, int64_t k, int32_t ag, int64_t ag_begin, int64_t ag_end, int8_t* tab, float* scale,
                float* sum16) {
  // sign masks for entries idx = 4h .. 4h+3: negate x_j where bit j of idx is 0
  uint32x4_t neg[4][4];
  for (int h = 0; h < 4; ++h)
    for (int j = 0; j < 4; ++j) {
      uint32_t m[4];
      for (int l = 0; l < 4; ++l) m[l] = (((4 * h + l) >> j) & 1) ? 0u : 0x80000000u;
      neg[h][j] = vld1q_u32(m);
    }
  for (int64_t a = ag_begin; a < ag_end; ++a) {
    const float* xa = x + a * ag;
    float32x4_t vmax = vdupq_n_f32(0.0f);
    for (int q = 0; q < ag / 4; q += 2) {
      const float32x4_t p = vpaddq_f32(vabsq_f32(vld1q_f32(xa + 4 * q)), vabsq_f32(vld1q_f32(xa + 4 * q + 4)));
      vmax = vmaxq_f32(vmax, vpaddq_f32(p, p));  // (|x0|+|x1|) + (|x2|+|x3|) per quad
    }
    const float mx = vmaxvq_f32(vmax);
    const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    scale[a] = mx / 127.0f;
    const float32x4_t vinv = vdupq_n_f32(inv);
    for (int q = 0; q < ag / 4; ++q) {
      const float* v = xa + 4 * q;
      const uint32x4_t x0 = vreinterpretq_u32_f32(vdupq_n_f32(v[0])), x1 = vreinterpretq_u32_f32(vdupq_n_f32(v[1])),
                       x2 = vreinterpretq_u32_f32(vdupq_n_f32(v[2])), x3 = vreinterpretq_u32_f32(vdupq_n_f32(v[3]));
      int16x4_t h16[4];
      for (int h = 0; h < 4; ++h) {
        float32x4_t e = vreinterpretq_f32_u32(veorq_u32(x0, neg[h][0]));
        e = vaddq_f32(e, vreinterpretq_f32_u32(veorq_u32(x1, neg[h][1])));
        e = vaddq_f32(e, vreinterpretq_f32_u32(veorq_u32(x2, neg[h][2])));
        e = vaddq_f32(e, vreinterpretq_f32_u32(veorq_u32(x3, neg[h][3])));
        h16[h] = vqmovn_s32(vcvtq_s32_f32(vrndnq_f32(vmulq_f32(e, vinv))));
      }
      const int8x16_t t = vcombine_s8(vqmovn_s16(vcombine_s16(h16[0], h16[1])), vqmovn_s16(vcombine_s16(h16[2], h16[3])));
      vst1q_s8(tab + (a * ag / 4 + q) * 16, t);
    }
    for (int i = 0; i < ag / 16; ++i) {
      const float* v = xa + 16 * i;
      const float32x4_t c = vaddq_f32(vaddq_f32(vld1q_f32(v), vld1q_f32(v + 8)), vaddq_f32(vld1q_f32(v + 4), vld1q_f32(v + 12)));
      const float32x2_t d = vadd_f32(vget_low_f32(c), vget_high_f32(c));
      sum16[a * ag / 16 + i] = vget_lane_f32(d, 0) + vget_lane_f32(d, 1);
    }
  }
}

// ---- GEMV / GEMM ----------------------------------------------------------------------------
//
// PT tile: L = tbl(T_q, nibbles); byte pair (2i, 2i+1) = row i, planes (2pp, 2pp+1).
//   padal: P += L[2i] + L[2i+1];  sra: S += L[2i+1] (high byte of the int16 view, shifted down)
//   so the row's pair value L0 + 2 L1 = P + S (ternary: L0 + L1 = P alone).
// ST tile: rows j in bytes j of two lookups (quads i and i + 4): X += widen(La) + widen(Lb).
// int16 bounds over one group (G <= 128, 32 quads): |P| <= 254 * 32 = 8128, |S| <= 4064,
// |X| <= 254 * 16 = 4064; P + S <= 12192. Weighting by 4^pp and 2^(n-1) happens in int32.

inline float32x4_t load_scales4(const uint8_t* p, int scale_bytes) {
  if (scale_bytes == 2) return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p)));
  return vreinterpretq_f32_u8(vld1q_u8(p));
}

// Scale s and offset o (o only with has_offset) of the 16 rows of group g of row block blk (four
// vectors of 4 rows), loaded (fp16 / fp32; k-quant sub-scales take the super-block epilogue in
// row_block instead).
inline void load_group_scales(const uint8_t* blk, const LutGroupAddr& ga, int sb, bool has_offset, int64_t g,
                              float32x4_t s[4], float32x4_t o[4]) {
  const uint8_t* sp = blk + lut_group_at(ga, g) + ga.tile_bytes;
  for (int q = 0; q < 4; ++q) {
    s[q] = load_scales4(sp + 4 * q * sb, sb);
    if (has_offset) o[q] = load_scales4(sp + (16 + 4 * q) * sb, sb);
  }
}

// k-quant sub-scale bytes of a group block (sc, m per row; lut.h) -> int32 rows 0..3, 4..7, 8..11, 12..15:
// uint8 sc then uint8 m; int8 sc alone (m = 0); or one byte sc | m << 4 per row.
inline void kq_subscales(const uint8_t* sp, int32_t kq, int32x4_t sc[4], int32x4_t m[4]) {
  uint8x16_t scb = vld1q_u8(sp), mb = vdupq_n_u8(0);
  if (kq == kLutKqNibble) {
    mb = vshrq_n_u8(scb, 4);
    scb = vandq_u8(scb, vdupq_n_u8(0x0F));
  } else if (kq == kLutKqU8) {
    mb = vld1q_u8(sp + kLutRows);
  }
  int16x8_t sc16[2];
  if (kq == kLutKqS8) {
    const int8x16_t sb8 = vreinterpretq_s8_u8(scb);
    sc16[0] = vmovl_s8(vget_low_s8(sb8));
    sc16[1] = vmovl_high_s8(sb8);
  } else {
    sc16[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(scb)));
    sc16[1] = vreinterpretq_s16_u16(vmovl_high_u8(scb));
  }
  const int16x8_t m16[2] = {vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mb))), vreinterpretq_s16_u16(vmovl_high_u8(mb))};
  for (int q = 0; q < 4; ++q) {
    sc[q] = (q & 1) ? vmovl_high_s16(sc16[q >> 1]) : vmovl_s16(vget_low_s16(sc16[q >> 1]));
    m[q] = (q & 1) ? vmovl_high_s16(m16[q >> 1]) : vmovl_s16(vget_low_s16(m16[q >> 1]));
  }
}

template <int SH>
inline int32x4_t widen_shift_lo(int16x8_t v) {
  if constexpr (SH == 0) return vmovl_s16(vget_low_s16(v));
  else return vshll_n_s16(vget_low_s16(v), SH);
}
template <int SH>
inline int32x4_t widen_shift_hi(int16x8_t v) {
  if constexpr (SH == 0) return vmovl_high_s16(v);
  else return vshll_high_n_s16(v, SH);
}

// Running sums of one row block for one token: rows 0..3, 4..7, 8..11, 12..15.
struct Rows16 {
  float32x4_t v[4];
};

template <int KIND, int NT, int kGC>
void row_block(const uint8_t* blk, const LutFormat& f, const LutAct* act, const float* const* sxg,
               const int32_t* const* qg, int64_t g0, int64_t g1, Rows16 yv[NT], size_t pf) {
  constexpr bool kTern = KIND == int(LutKind::TERNARY);
  constexpr int n = kTern ? 2 : KIND;
  constexpr int npp = n / 2;
  const int G = kGC ? kGC : f.group, sb = f.scale_bytes;
  const bool has_off = f.has_offset != 0;
  const LutGroupAddr ga = lut_group_addr(f);
  const uint8x16_t m4 = vdupq_n_u8(0x0F);
  const float32x4_t vcn = vdupq_n_f32(float((1 << n) - 1) * 0.5f), vmhalf = vdupq_n_f32(-0.5f);
  // k-quant super-block epilogue (lut.h): int32 J, M per token and 4 rows
  const int32_t cq = has_off ? (1 << n) - 1 : -1;
  const int64_t smask = lut_kq_span_mask(f, act[0].ag);  // all tokens share ag
  int32x4_t J[NT][4], M[NT][4];
  for (int t = 0; t < NT; ++t)
    for (int q = 0; q < 4; ++q) J[t][q] = M[t][q] = vdupq_n_s32(0);
  PrefetchCursor pfc{blk + lut_group_at(ga, g0) + pf};
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* p = blk + lut_group_at(ga, g);
    // the bytes pf ahead of this group block (later groups, then the next row blocks); the extent
    // also covers a k-quant super-block header, so the prefetched windows leave no gaps
    if (pf) pfc.upto(p + pf + ga.group_bytes + ga.header_bytes);
    const int8_t* tq[NT];
    // [token][pp][half]: P and S accumulators; X for the single plane
    int16x8_t P[NT][2][2], S[NT][2][2], X[NT][2];
    for (int t = 0; t < NT; ++t) {
      tq[t] = act[t].tab + g * G / 4 * 16;
      for (int h = 0; h < 2; ++h) {
        P[t][0][h] = P[t][1][h] = S[t][0][h] = S[t][1][h] = X[t][h] = vdupq_n_s16(0);
      }
    }
    for (int pp = 0; pp < npp; ++pp)
      for (int qd = 0; qd < G / 4; ++qd, p += 16) {
        const uint8x16_t wv = vld1q_u8(p);
        const uint8x16_t lo = vandq_u8(wv, m4), hi = vshrq_n_u8(wv, 4);
        for (int t = 0; t < NT; ++t) {
          const int8x16_t T = vld1q_s8(tq[t] + qd * 16);
          const int8x16_t La = vqtbl1q_s8(T, lo), Lb = vqtbl1q_s8(T, hi);
          P[t][pp][0] = vpadalq_s8(P[t][pp][0], La);
          P[t][pp][1] = vpadalq_s8(P[t][pp][1], Lb);
          if (!kTern) {
            S[t][pp][0] = vsraq_n_s16(S[t][pp][0], vreinterpretq_s16_s8(La), 8);
            S[t][pp][1] = vsraq_n_s16(S[t][pp][1], vreinterpretq_s16_s8(Lb), 8);
          }
        }
      }
    if (n & 1)
      for (int c = 0, C = lut_st_chunk_quads(G); c < G / 4 / C; ++c)  // ST(c, i): quads C*c + i, C*c + i + C/2
        for (int i = 0; i < C / 2; ++i, p += 16) {
          const uint8x16_t wv = vld1q_u8(p);
          const uint8x16_t lo = vandq_u8(wv, m4), hi = vshrq_n_u8(wv, 4);
          for (int t = 0; t < NT; ++t) {
            const int8x16_t La = vqtbl1q_s8(vld1q_s8(tq[t] + (C * c + i) * 16), lo);
            const int8x16_t Lb = vqtbl1q_s8(vld1q_s8(tq[t] + (C * c + i + C / 2) * 16), hi);
            X[t][0] = vaddq_s16(X[t][0], vaddl_s8(vget_low_s8(La), vget_low_s8(Lb)));
            X[t][1] = vaddq_s16(X[t][1], vaddl_high_s8(La, Lb));
          }
        }
    const bool kq = !kTern && ga.kq;
    float32x4_t s[4], o[4], cc[4];
    int32x4_t sc32[4], m32[4];
    if (kq) {
      kq_subscales(blk + lut_group_at(ga, g) + ga.tile_bytes, ga.kq, sc32, m32);
    } else {
      load_group_scales(blk, ga, sb, has_off, g, s, o);
      for (int q = 0; q < 4; ++q) {
        cc[q] = s[q];
        if (!kTern) cc[q] = has_off ? vfmaq_f32(o[q], s[q], vcn) : vmulq_f32(s[q], vmhalf);
      }
    }
    for (int t = 0; t < NT; ++t) {
      int32x4_t I[4];
      for (int h = 0; h < 2; ++h) {
        const int16x8_t v0 = kTern ? P[t][0][h] : vaddq_s16(P[t][0][h], S[t][0][h]);
        I[2 * h] = vmovl_s16(vget_low_s16(v0));
        I[2 * h + 1] = vmovl_high_s16(v0);
        if (npp == 2) {
          const int16x8_t v1 = vaddq_s16(P[t][1][h], S[t][1][h]);
          I[2 * h] = vaddq_s32(I[2 * h], widen_shift_lo<2>(v1));
          I[2 * h + 1] = vaddq_s32(I[2 * h + 1], widen_shift_hi<2>(v1));
        }
        if (n & 1) {
          I[2 * h] = vaddq_s32(I[2 * h], widen_shift_lo<(n & 1) ? n - 1 : 0>(X[t][h]));
          I[2 * h + 1] = vaddq_s32(I[2 * h + 1], widen_shift_hi<(n & 1) ? n - 1 : 0>(X[t][h]));
        }
      }
      if (kq) {
        const int32_t qv = qg[t][g - g0];
        const int32x4_t cqq = vdupq_n_s32(cq * qv);
        for (int q = 0; q < 4; ++q) {
          J[t][q] = vmlaq_s32(J[t][q], vaddq_s32(vshlq_n_s32(I[q], 4), cqq), sc32[q]);
          if (has_off) M[t][q] = vmlaq_n_s32(M[t][q], m32[q], qv);
        }
        continue;
      }
      const float32x4_t tsh = vdupq_n_f32(0.5f * act[t].scale[g * G / act[t].ag]);
      const float32x4_t sx = vdupq_n_f32(kTern ? 0.0f : sxg[t][g - g0]);
      for (int q = 0; q < 4; ++q) {
        yv[t].v[q] = vfmaq_f32(yv[t].v[q], vmulq_f32(s[q], tsh), vcvtq_f32_s32(I[q]));
        if (!kTern) yv[t].v[q] = vfmaq_f32(yv[t].v[q], cc[q], sx);
      }
    }
    if (kq && (g & smask) == smask) {  // last group of the span: one float step per row
      const uint8_t* hp = blk + lut_header_at(ga, g);
      float32x4_t d[4], nd[4];
      for (int q = 0; q < 4; ++q) {
        d[q] = load_scales4(hp + 8 * q, 2);
        nd[q] = has_off ? vnegq_f32(load_scales4(hp + 32 + 8 * q, 2)) : d[q];
      }
      for (int t = 0; t < NT; ++t) {
        const float ts = act[t].scale[g * G / act[t].ag];
        const float32x4_t tsh = vdupq_n_f32(ts * 0.03125f), tsv = vdupq_n_f32(ts * 0.0625f);
        for (int q = 0; q < 4; ++q) {
          yv[t].v[q] = vfmaq_f32(yv[t].v[q], vmulq_f32(d[q], tsh), vcvtq_f32_s32(J[t][q]));
          if (has_off) yv[t].v[q] = vfmaq_f32(yv[t].v[q], vmulq_f32(nd[q], tsv), vcvtq_f32_s32(M[t][q]));
          J[t][q] = M[t][q] = vdupq_n_s32(0);
        }
      }
    }
  }
}

// ---- fixed-format loops (one or two tokens) ---------------------------------------------------
// row_block's general loop keeps its accumulators in arrays indexed at run time (on the stack), walks
// groups through lut_group_at and widens every group's sums to int32. The loops below fix the format
// and the token count at compile time: group blocks are walked by pointer, the quad loops unroll and
// the accumulators stay in registers; NT = 2 (the GEMM tile) shares each weight load and nibble split
// between the tokens. Instructions per weight of a 64x2048 GEMV (bench/neon_icount.py, qemu):
// Q2_K 0.63 -> 0.36, Q3_K 0.93 -> 0.40, Q4_K 0.79 -> 0.47, Q4_0 / Q4_1 0.75 -> 0.52, TQ2_0 0.24 -> 0.16;
// per weight and token of a 16-token GEMM: Q2_K 0.42 -> 0.32, Q3_K 0.53 -> 0.35, Q4_K 0.54 -> 0.44.
// Same operations on the same integers and the same float steps in the same order as row_block:
// bit-identical (tests/cpp/lut_check.cc).

// One plane pair's tiles of a group (kQuads PTs from p; token t's tables from tq[t]): v[t][h] = P + S
// of rows 8h .. 8h+7 in int16 (ternary: P alone), as row_block's v0; p moves past the tiles.
template <int NT, int kQuads, bool kTern>
inline void pair_tiles(const uint8_t*& p, const int8_t* const* tq, uint8x16_t m4, int16x8_t v[NT][2]) {
  int16x8_t P[NT][2], S[NT][2];
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) P[t][0] = P[t][1] = S[t][0] = S[t][1] = vdupq_n_s16(0);
#pragma GCC unroll 32
  for (int qd = 0; qd < kQuads; ++qd, p += 16) {
    const uint8x16_t wv = vld1q_u8(p);
    const uint8x16_t lo = vandq_u8(wv, m4), hi = vshrq_n_u8(wv, 4);
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      const int8x16_t T = vld1q_s8(tq[t] + qd * 16);
      const int8x16_t La = vqtbl1q_s8(T, lo), Lb = vqtbl1q_s8(T, hi);
      P[t][0] = vpadalq_s8(P[t][0], La);
      P[t][1] = vpadalq_s8(P[t][1], Lb);
      if (!kTern) {
        S[t][0] = vsraq_n_s16(S[t][0], vreinterpretq_s16_s8(La), 8);
        S[t][1] = vsraq_n_s16(S[t][1], vreinterpretq_s16_s8(Lb), 8);
      }
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) {
    v[t][0] = kTern ? P[t][0] : vaddq_s16(P[t][0], S[t][0]);
    v[t][1] = kTern ? P[t][1] : vaddq_s16(P[t][1], S[t][1]);
  }
}

// The single tiles of the odd plane (n = 1, 3): X[t][h] of rows 8h .. 8h+7; p moves past them.
template <int NT, int kQuads>
inline void single_tiles(const uint8_t*& p, const int8_t* const* tq, uint8x16_t m4, int16x8_t X[NT][2]) {
  constexpr int C = kQuads < 8 ? kQuads : 8;  // lut_st_chunk_quads
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) X[t][0] = X[t][1] = vdupq_n_s16(0);
#pragma GCC unroll 8
  for (int c = 0; c < kQuads / C; ++c)  // ST(c, i): quads C*c + i, C*c + i + C/2
#pragma GCC unroll 8
    for (int i = 0; i < C / 2; ++i, p += 16) {
      const uint8x16_t wv = vld1q_u8(p);
      const uint8x16_t lo = vandq_u8(wv, m4), hi = vshrq_n_u8(wv, 4);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        const int8x16_t La = vqtbl1q_s8(vld1q_s8(tq[t] + (C * c + i) * 16), lo);
        const int8x16_t Lb = vqtbl1q_s8(vld1q_s8(tq[t] + (C * c + i + C / 2) * 16), hi);
        X[t][0] = vaddq_s16(X[t][0], vaddl_s8(vget_low_s8(La), vget_low_s8(Lb)));
        X[t][1] = vaddq_s16(X[t][1], vaddl_high_s8(La, Lb));
      }
    }
}

// K-quant homes of GGUF Q2_K (W2 g16 KQ4), Q3_K (W3 g16 KQ sym) and Q4_K (W4 g32 KQ u8), over whole
// super-blocks that are also the table-scale spans (ag = 256, what the runtime builds for them):
//   I_g = v0 + v1 << 2 + X << (n - 1) in int16 (|I_g| <= 127 (2^n - 1) G/4),
//   J = sum_g sc_g (16 I_g + cq Qf_g) = 16 sum_g sc_g I_g + cq sum_g sc_g Qf_g, both sums widening
//       multiply-accumulates of int16 (|Qf_g| <= 16 * 127 G/4), exact in int32; M = sum_g m_g Qf_g.
template <int KIND, int NT, int kG, int KQ, bool OFF>
void row_block_kq(const uint8_t* blk, const LutGroupAddr& ga, const LutAct* act, const int32_t* const* qg, int64_t g0,
                  int64_t g1, Rows16 yv[NT], size_t pf) {
  constexpr int n = KIND, kGroups = kLutSuperK / kG, kQuads = kG / 4;
  constexpr size_t kTiles = size_t(2) * kG * KIND, kGroupBytes = kTiles + kLutRows * (KQ == kLutKqU8 ? 2 : 1);
  constexpr size_t kHeader = OFF ? 64 : 32;
  constexpr int32_t cq = OFF ? (1 << n) - 1 : -1;
  static_assert(127 * ((1 << KIND) - 1) * (kG / 4) <= 32767 && 16 * 127 * (kG / 4) <= 32767, "I, Qf fit int16");
  const uint8x16_t m4 = vdupq_n_u8(0x0F);
  const uint8_t* sb = blk + lut_header_at(ga, g0);
  const int8_t* tq[NT];
  const int32_t* q[NT];
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) {
    tq[t] = act[t].tab + g0 * kQuads * 16;
    q[t] = qg[t];
  }
  PrefetchCursor pfc{sb + pf};
  for (int64_t g = g0; g < g1; g += kGroups, sb += kHeader + kGroups * kGroupBytes) {
    int32x4_t J1[NT][4], J2[NT][4], M[NT][4];
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) J1[t][r] = J2[t][r] = M[t][r] = vdupq_n_s32(0);
    const uint8_t* p = sb + kHeader;
    for (int i = 0; i < kGroups; ++i) {
      if (pf) pfc.upto(p + pf + kGroupBytes + kHeader);
      int16x8_t I16[NT][2], v[NT][2];
      pair_tiles<NT, kQuads, false>(p, tq, m4, I16);
      if (n >= 4) {
        pair_tiles<NT, kQuads, false>(p, tq, m4, v);
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
          for (int h = 0; h < 2; ++h) I16[t][h] = vaddq_s16(I16[t][h], vshlq_n_s16(v[t][h], 2));
      }
      if (n & 1) {
        single_tiles<NT, kQuads>(p, tq, m4, v);
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
          for (int h = 0; h < 2; ++h) I16[t][h] = vaddq_s16(I16[t][h], vshlq_n_s16(v[t][h], (n & 1) ? n - 1 : 0));
      }
      int16x8_t sc[2], m[2];  // sub-scales of rows 0..7, 8..15 as int16
      if (KQ == kLutKqS8) {
        const int8x16_t b = vld1q_s8(reinterpret_cast<const int8_t*>(p));
        sc[0] = vmovl_s8(vget_low_s8(b));
        sc[1] = vmovl_high_s8(b);
      } else {
        const uint8x16_t b = vld1q_u8(p);
        const uint8x16_t s8 = KQ == kLutKqNibble ? vandq_u8(b, m4) : b;
        const uint8x16_t m8 = KQ == kLutKqNibble ? vshrq_n_u8(b, 4) : vld1q_u8(p + kLutRows);
        sc[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(s8)));
        sc[1] = vreinterpretq_s16_u16(vmovl_high_u8(s8));
        m[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m8)));
        m[1] = vreinterpretq_s16_u16(vmovl_high_u8(m8));
      }
      p += kGroupBytes - kTiles;
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        const int16_t qv = int16_t(*q[t]++);
        tq[t] += kQuads * 16;
#pragma GCC unroll 4
        for (int h = 0; h < 2; ++h) {
          J1[t][2 * h] = vmlal_s16(J1[t][2 * h], vget_low_s16(I16[t][h]), vget_low_s16(sc[h]));
          J1[t][2 * h + 1] = vmlal_high_s16(J1[t][2 * h + 1], I16[t][h], sc[h]);
          J2[t][2 * h] = vmlal_n_s16(J2[t][2 * h], vget_low_s16(sc[h]), qv);
          J2[t][2 * h + 1] = vmlal_high_n_s16(J2[t][2 * h + 1], sc[h], qv);
          if (OFF) {
            M[t][2 * h] = vmlal_n_s16(M[t][2 * h], vget_low_s16(m[h]), qv);
            M[t][2 * h + 1] = vmlal_high_n_s16(M[t][2 * h + 1], m[h], qv);
          }
        }
      }
    }
    // the super-block's float step, as row_block's
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      const float ts = act[t].scale[g * kG / act[t].ag];
      const float32x4_t tsh = vdupq_n_f32(ts * 0.03125f), tsv = vdupq_n_f32(ts * 0.0625f);
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {
        const int32x4_t J = vmlaq_n_s32(vshlq_n_s32(J1[t][r], 4), J2[t][r], cq);
        yv[t].v[r] = vfmaq_f32(yv[t].v[r], vmulq_f32(load_scales4(sb + 8 * r, 2), tsh), vcvtq_f32_s32(J));
        if (OFF)
          yv[t].v[r] = vfmaq_f32(yv[t].v[r], vmulq_f32(vnegq_f32(load_scales4(sb + 32 + 8 * r, 2)), tsv),
                                 vcvtq_f32_s32(M[t][r]));
      }
    }
  }
}

// fp16 / fp32 group scales (Q4_0, Q4_1, TQ1_0 / TQ2_0 repacks, `lutllm quantize` files), G = 32..128:
// contiguous group blocks, row_block's per-group float step y += (s ts/2) I + cc Sx.
template <int KIND, int NT, int kG>
void row_block_group(const uint8_t* blk, const LutFormat& f, const LutAct* act, const float* const* sxg, int64_t g0,
                     int64_t g1, Rows16 yv[NT], size_t pf) {
  constexpr bool kTern = KIND == int(LutKind::TERNARY);
  constexpr int n = kTern ? 2 : KIND, kQuads = kG / 4;
  const int sb = f.scale_bytes;
  const bool has_off = f.has_offset != 0;
  const size_t scale_bytes = lut_scale_block_bytes(f), group_bytes = size_t(2) * kG * n + scale_bytes;
  const uint8x16_t m4 = vdupq_n_u8(0x0F);
  const float32x4_t vcn = vdupq_n_f32(float((1 << n) - 1) * 0.5f), vmhalf = vdupq_n_f32(-0.5f);
  const uint8_t* p = blk + size_t(g0) * group_bytes;
  const int8_t* tq[NT];
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) tq[t] = act[t].tab + g0 * kQuads * 16;
  PrefetchCursor pfc{p + pf};
  for (int64_t g = g0; g < g1; ++g, p += scale_bytes) {
    if (pf) pfc.upto(p + pf + group_bytes);
    int16x8_t v[NT][2];
    int32x4_t I[NT][4];
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) v[t][0] = v[t][1] = vdupq_n_s16(0);
    if (n >= 2) pair_tiles<NT, kQuads, kTern>(p, tq, m4, v);  // W1 has only the single tiles
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
      for (int h = 0; h < 2; ++h) {
        I[t][2 * h] = vmovl_s16(vget_low_s16(v[t][h]));
        I[t][2 * h + 1] = vmovl_high_s16(v[t][h]);
      }
    if (n >= 4) {  // (P + S) << 2 may pass int16 at G = 128: widened first, as row_block
      pair_tiles<NT, kQuads, false>(p, tq, m4, v);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
        for (int h = 0; h < 2; ++h) {
          I[t][2 * h] = vaddq_s32(I[t][2 * h], widen_shift_lo<2>(v[t][h]));
          I[t][2 * h + 1] = vaddq_s32(I[t][2 * h + 1], widen_shift_hi<2>(v[t][h]));
        }
    }
    if (n & 1) {
      single_tiles<NT, kQuads>(p, tq, m4, v);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
        for (int h = 0; h < 2; ++h) {
          I[t][2 * h] = vaddq_s32(I[t][2 * h], widen_shift_lo<(n & 1) ? n - 1 : 0>(v[t][h]));
          I[t][2 * h + 1] = vaddq_s32(I[t][2 * h + 1], widen_shift_hi<(n & 1) ? n - 1 : 0>(v[t][h]));
        }
    }
    float32x4_t s[4], cc[4];
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      s[q] = load_scales4(p + 4 * q * sb, sb);
      cc[q] = s[q];
      if (!kTern) cc[q] = has_off ? vfmaq_f32(load_scales4(p + (16 + 4 * q) * sb, sb), s[q], vcn) : vmulq_f32(s[q], vmhalf);
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      tq[t] += kQuads * 16;
      const float32x4_t tsh = vdupq_n_f32(0.5f * act[t].scale[g * kG / act[t].ag]);
      const float32x4_t sx = vdupq_n_f32(kTern ? 0.0f : sxg[t][g - g0]);
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        yv[t].v[q] = vfmaq_f32(yv[t].v[q], vmulq_f32(s[q], tsh), vcvtq_f32_s32(I[t][q]));
        if (!kTern) yv[t].v[q] = vfmaq_f32(yv[t].v[q], cc[q], sx);
      }
    }
  }
}

struct Neon {
  using Tile = Rows16;
  static Tile zero() {
    const float32x4_t z = vdupq_n_f32(0.0f);
    return {{z, z, z, z}};
  }
  static void store_rows(float* y, const Tile& t, int lo, int hi) {
    float tmp[kLutRows];
    for (int q = 0; q < 4; ++q) vst1q_f32(tmp + 4 * q, t.v[q]);
    for (int r = lo; r < hi; ++r) y[r] = tmp[r];
  }
  static Tile load_rows(const float* y, int lo, int hi) {
    float tmp[kLutRows] = {0};
    for (int r = lo; r < hi; ++r) tmp[r] = y[r];
    return {{vld1q_f32(tmp), vld1q_f32(tmp + 4), vld1q_f32(tmp + 8), vld1q_f32(tmp + 12)}};
  }
  // The fixed-format loops for NT tokens (k-quant homes over whole super-blocks that are also the
  // table-scale spans; per-group scales with G = 32..128); false where none applies.
  template <int KIND, int NT>
  static bool fixed_loop(const uint8_t* blk, const LutFormat& f, const LutAct* act, const float* const* sxg,
                         const int32_t* const* qg, int64_t g0, int64_t g1, Tile yv[NT], size_t pf) {
    if (lut_is_kq(f)) {
      const int64_t per_super = kLutSuperK / f.group;
      if (lut_kq_span_mask(f, act[0].ag) != per_super - 1 || g0 % per_super || g1 % per_super) return false;
      const LutGroupAddr ga = lut_group_addr(f);
      if constexpr (KIND == 2)
        if (f.group == 16 && ga.kq == kLutKqNibble) return row_block_kq<2, NT, 16, kLutKqNibble, true>(blk, ga, act, qg, g0, g1, yv, pf), true;
      if constexpr (KIND == 3)
        if (f.group == 16 && ga.kq == kLutKqS8) return row_block_kq<3, NT, 16, kLutKqS8, false>(blk, ga, act, qg, g0, g1, yv, pf), true;
      if constexpr (KIND == 4)
        if (f.group == 32 && ga.kq == kLutKqU8) return row_block_kq<4, NT, 32, kLutKqU8, true>(blk, ga, act, qg, g0, g1, yv, pf), true;
      return false;
    }
    if (f.group == 32) return row_block_group<KIND, NT, 32>(blk, f, act, sxg, g0, g1, yv, pf), true;
    if (f.group == 64) return row_block_group<KIND, NT, 64>(blk, f, act, sxg, g0, g1, yv, pf), true;
    if (f.group == 128) return row_block_group<KIND, NT, 128>(blk, f, act, sxg, g0, g1, yv, pf), true;
    return false;
  }
  template <int KIND, int NT>
  static void row_block(const uint8_t* blk, const LutFormat& f, const LutAct* act, const float* const* sxg,
                        const int32_t* const* qg, int64_t g0, int64_t g1, Tile yv[NT], size_t pf) {
    if constexpr (NT == 1 || KIND == 1 || KIND == 2 || KIND == int(LutKind::TERNARY)) {
      if (fixed_loop<KIND, NT>(blk, f, act, sxg, qg, g0, g1, yv, pf)) return;
    } else if (fixed_loop<KIND, 1>(blk, f, act, sxg, qg, g0, g1, yv, pf)) {
      // 3 and 4 bits: a two-token loop needs more accumulators than NEON has registers and executed
      // more instructions than two one-token loops (bench/neon_icount.py --n 2)
      for (int t = 1; t < NT; ++t) fixed_loop<KIND, 1>(blk, f, act + t, sxg + t, qg + t, g0, g1, yv + t, pf);
      return;
    }
    if (f.group == 16) return lutllm::row_block<KIND, NT, 16>(blk, f, act, sxg, qg, g0, g1, yv, pf);
    if (f.group == 32) return lutllm::row_block<KIND, NT, 32>(blk, f, act, sxg, qg, g0, g1, yv, pf);
    lutllm::row_block<KIND, NT, 0>(blk, f, act, sxg, qg, g0, g1, yv, pf);
  }
};

}  // namespace

void lut_build_g4__neon(const float* x, int64_t k, int32_t ag, int64_t ag_begin, int64_t ag_end, int8_t* tab,
                        float* scale, float* sum16) {
  build_neon(x, k, ag, ag_begin, ag_end, tab, scale, sum16);
}

LUTLLM_LUT_ENTRY_POINTS(Neon, neon, 2)

}  // namespace lutllm
