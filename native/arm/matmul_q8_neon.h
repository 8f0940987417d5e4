// NEON int8 matmuls of GGUF weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) against ActQ8
// activations: the skeleton shared by matmul_q8_neon.cc (baseline: smull + sadalp) and
// matmul_q8_dotprod.cc (sdot). Each includes it with its own target flags; everything here has
// internal linkage. Bit-exact twins of native/ref/matmul_q8.cc ("THE ORDER" there):
//   lanes = 4 weight rows; per 32-element block b the exact integers p0 (elements 0..15) and p1
//   (16..31) of each row, P = mult0 * p0 + mult1 * p1 (int32), S = D * x[b].d (one float multiply),
//   acc = fma(float(P), S, acc); y = acc. Codes are decoded once per block of 4 rows and used by up to
//   4 tokens (the GEMM tile); a super-block's shared parts (Q6_K: d and the 16 sub-scales of the 4
//   rows, transposed to lanes = rows) are read once, and its 8 blocks unroll with fixed bit positions.
#pragma once
#include <arm_neon.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "lutllm/ggml_types.h"
#include "lutllm/kernels.h"

namespace lutllm {
namespace {

// The fp16 scale at byte `at` of the current block of each of the 4 rows, as float lanes (fcvtl:
// exact, as fp16_to_f32, for every value but signalling NaNs, which it quiets).
inline float32x4_t load_d4(const uint8_t* const sp[4], size_t at) {
  uint64_t packed = 0;
  for (int r = 0; r < 4; ++r) {
    uint16_t h;
    std::memcpy(&h, sp[r] + at, sizeof h);
    packed |= uint64_t(h) << (16 * r);
  }
  return vcvt_f32_f16(vreinterpret_f16_u64(vcreate_u64(packed)));
}

// A decoder walks super-blocks of kSub 32-element blocks (kBytes per row); per super-block load()
// reads what the 4 rows share (D, sub-scales as int32 lanes = rows, offset terms M), codes<J>()
// decodes block J of one row into int8 (elements 0..15, 16..31). kMult: how many integer sub-scales
// a block has (0: mult0 = mult1 = 1; 1: mult0 = mult1 = m[J]; 2: m[2J], m[2J + 1]); kHasMin: the
// offset term summ = fma(M[J], x.s, summ) of the ref, added to acc at the end.
// The 32-element types: fp16 d at byte 0, then (Q4_1 / Q5_1) fp16 m, (Q5_*) the fifth bits qh[4],
// then the codes: Q8_0 32 int8; Q4_* / Q5_* 16 bytes of nibbles (element e low, e + 16 high).
// Codes as the ref: Q4_0 nibble - 8, Q5_0 (nibble | bit << 4) - 16, Q4_1 / Q5_1 unsigned, with
// M = m (the offset term); Q8_0 as stored.
template <GgmlType T>
struct DecLegacy {
  static constexpr bool kFive = T == GgmlType::Q5_0 || T == GgmlType::Q5_1;
  static constexpr bool kHasMin = T == GgmlType::Q4_1 || T == GgmlType::Q5_1;
  static constexpr int kSub = 1;
  static constexpr int kMult = 0;
  static constexpr size_t kBytes = T == GgmlType::Q8_0   ? sizeof(block_q8_0)
                                   : T == GgmlType::Q4_0 ? sizeof(block_q4_0)
                                   : T == GgmlType::Q4_1 ? sizeof(block_q4_1)
                                   : T == GgmlType::Q5_0 ? sizeof(block_q5_0)
                                                         : sizeof(block_q5_1);
  static constexpr size_t kQh = kHasMin ? 4 : 2;             // Q5_*: qh[4] after d (and m)
  static constexpr size_t kQs = kQh + (kFive ? 4 : 0);       // the codes after them
  static constexpr uint8_t kBias = T == GgmlType::Q4_0 ? 8 : T == GgmlType::Q5_0 ? 16 : 0;
  struct Super {
    float32x4_t D;
    float32x4_t M[1];
  };
  static void load(const uint8_t* const sp[4], Super* s) {
    s->D = load_d4(sp, 0);
    if (kHasMin) s->M[0] = load_d4(sp, 2);
  }
  template <int J>
  static void codes(const uint8_t* p, int8x16_t* c0, int8x16_t* c1) {
    if constexpr (T == GgmlType::Q8_0) {
      *c0 = vld1q_s8(reinterpret_cast<const int8_t*>(p + kQs));
      *c1 = vld1q_s8(reinterpret_cast<const int8_t*>(p + kQs + 16));
    } else {
      const uint8x16_t qs = vld1q_u8(p + kQs), m4 = vdupq_n_u8(0x0F);
      uint8x16_t u0 = vandq_u8(qs, m4), u1 = vshrq_n_u8(qs, 4);
      if constexpr (kFive) {
        // bit e of the little-endian qh word is element e's fifth bit: bytes qh[0..1] cover elements
        // 0..15, qh[2..3] 16..31; each byte is spread over 8 lanes and tested against 1, 2, .. 128
        static const uint8_t kBits[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
        static const uint8_t kSpread[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
        const uint8x16_t bits = vld1q_u8(kBits), bit4 = vdupq_n_u8(0x10);
        uint32_t qh;
        std::memcpy(&qh, p + kQh, 4);
        const uint8x16_t hw = vreinterpretq_u8_u32(vdupq_n_u32(qh));
        const uint8x16_t h0 = vqtbl1q_u8(hw, vld1q_u8(kSpread)), h1 = vqtbl1q_u8(hw, vld1q_u8(kSpread + 16));
        u0 = vorrq_u8(u0, vandq_u8(vtstq_u8(h0, bits), bit4));
        u1 = vorrq_u8(u1, vandq_u8(vtstq_u8(h1, bits), bit4));
      }
      if constexpr (kBias != 0) {
        u0 = vsubq_u8(u0, vdupq_n_u8(kBias));
        u1 = vsubq_u8(u1, vdupq_n_u8(kBias));
      }
      *c0 = vreinterpretq_s8_u8(u0);
      *c1 = vreinterpretq_s8_u8(u1);
    }
  }
};

struct DecQ6_K {
  static constexpr int kSub = 8;
  static constexpr size_t kBytes = sizeof(block_q6_K);
  static constexpr int kMult = 2;
  static constexpr bool kHasMin = false;
  struct Super {
    float32x4_t D;
    int32x4_t m[16];  // scales[i] of the 4 rows
  };
  // D from byte 208; the 16 int8 scales (bytes 192..207) of 4 rows transposed to lanes = rows
  static void load(const uint8_t* const sp[4], Super* s) {
    s->D = load_d4(sp, 208);
    int8x16_t r[4];
    for (int i = 0; i < 4; ++i) r[i] = vld1q_s8(reinterpret_cast<const int8_t*>(sp[i] + 192));
    const int8x16_t a = vzip1q_s8(r[0], r[1]), b = vzip2q_s8(r[0], r[1]), c = vzip1q_s8(r[2], r[3]),
                    d = vzip2q_s8(r[2], r[3]);
    const int8x16_t e[4] = {vreinterpretq_s8_s16(vzip1q_s16(vreinterpretq_s16_s8(a), vreinterpretq_s16_s8(c))),
                            vreinterpretq_s8_s16(vzip2q_s16(vreinterpretq_s16_s8(a), vreinterpretq_s16_s8(c))),
                            vreinterpretq_s8_s16(vzip1q_s16(vreinterpretq_s16_s8(b), vreinterpretq_s16_s8(d))),
                            vreinterpretq_s8_s16(vzip2q_s16(vreinterpretq_s16_s8(b), vreinterpretq_s16_s8(d)))};
    for (int i = 0; i < 4; ++i) {  // e[i]: scales 4i .. 4i+3, 4 rows each
      const int16x8_t lo = vmovl_s8(vget_low_s8(e[i])), hi = vmovl_high_s8(e[i]);
      s->m[4 * i] = vmovl_s16(vget_low_s16(lo));
      s->m[4 * i + 1] = vmovl_high_s16(lo);
      s->m[4 * i + 2] = vmovl_s16(vget_low_s16(hi));
      s->m[4 * i + 3] = vmovl_high_s16(hi);
    }
  }
  // block J: low 4 bits from ql[64h + 32(q % 2) + e] (nibble q / 2), high 2 bits from qh[32h + e] >> 2q
  // (h = J / 4, q = J % 4); c = q6 - 32
  template <int J>
  static void codes(const uint8_t* p, int8x16_t* c0, int8x16_t* c1) {
    constexpr int h = J / 4, q = J % 4;
    const uint8_t* ql = p + 64 * h + 32 * (q % 2);
    const uint8_t* qh = p + 128 + 32 * h;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(3), c32 = vdupq_n_u8(32);
    uint8x16_t lo[2] = {vld1q_u8(ql), vld1q_u8(ql + 16)}, hi[2] = {vld1q_u8(qh), vld1q_u8(qh + 16)};
    for (int i = 0; i < 2; ++i) {
      lo[i] = (q / 2) ? vshrq_n_u8(lo[i], 4) : vandq_u8(lo[i], m4);
      if (q) hi[i] = vshrq_n_u8(hi[i], q ? 2 * q : 1);
      lo[i] = vsliq_n_u8(lo[i], vandq_u8(hi[i], m3), 4);
    }
    *c0 = vreinterpretq_s8_u8(vsubq_u8(lo[0], c32));
    *c1 = vreinterpretq_s8_u8(vsubq_u8(lo[1], c32));
  }
};

// Scale and min of sub-block j of a Q4_K / Q5_K super-block from its packed scales[12], as
// kquant_scale_min in native/ref/q8_blocks.h (not included: its inline code has external linkage and
// would be shared with files built for other targets; everything here is internal).
inline void scale_min6(const uint8_t* s, int j, int32_t* sc, int32_t* m) {
  *sc = j < 4 ? s[j] & 63 : (s[j + 4] & 0x0F) | (s[j - 4] >> 6) << 4;
  *m = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | (s[j] >> 6) << 4;
}

// Q4_K / Q5_K: 8 sub-blocks of 32 with a 6-bit scale sc and min m each (scale_min6); block J
// = sub-block J: codes = nibble J % 2 of qs[32 (J / 2) + e] (Q5_K: | bit J of qh[e] << 4), mult = sc,
// M = -(dmin * m) as the ref forms it.
template <bool kFive>
struct DecQxK {
  static constexpr int kSub = 8;
  static constexpr size_t kBytes = kFive ? sizeof(block_q5_K) : sizeof(block_q4_K);
  static constexpr size_t kQs = kFive ? 48 : 16;  // qs offset (Q5_K: after qh[32] at 16)
  static constexpr int kMult = 1;
  static constexpr bool kHasMin = true;
  struct Super {
    float32x4_t D;
    int32x4_t m[8];     // sc of sub-block j, 4 rows
    float32x4_t M[8];   // -(dmin * m) of sub-block j, 4 rows
  };
  static void load(const uint8_t* const sp[4], Super* s) {
    s->D = load_d4(sp, 0);
    const float32x4_t dmin = load_d4(sp, 2);
    int32_t sc[8][4], mn[8][4];
    for (int r = 0; r < 4; ++r)
      for (int j = 0; j < 8; ++j) scale_min6(sp[r] + 4, j, &sc[j][r], &mn[j][r]);
    for (int j = 0; j < 8; ++j) {
      s->m[j] = vld1q_s32(sc[j]);
      s->M[j] = vnegq_f32(vmulq_f32(dmin, vcvtq_f32_s32(vld1q_s32(mn[j]))));
    }
  }
  template <int J>
  static void codes(const uint8_t* p, int8x16_t* c0, int8x16_t* c1) {
    const uint8_t* q = p + kQs + 32 * (J / 2);
    uint8x16_t u[2] = {vld1q_u8(q), vld1q_u8(q + 16)};
    for (int i = 0; i < 2; ++i) {
      u[i] = (J & 1) ? vshrq_n_u8(u[i], 4) : vandq_u8(u[i], vdupq_n_u8(0x0F));
      if (kFive) {  // bit J of qh[e] to bit 4
        const uint8x16_t h = vld1q_u8(p + 16 + 16 * i);
        u[i] = vorrq_u8(u[i], vandq_u8(J >= 4 ? vshrq_n_u8(h, J >= 4 ? J - 4 : 1) : vshlq_n_u8(h, J < 4 ? 4 - J : 1),
                                       vdupq_n_u8(0x10)));
      }
    }
    *c0 = vreinterpretq_s8_u8(u[0]);
    *c1 = vreinterpretq_s8_u8(u[1]);
  }
};

// one int32 lane per row from four rows' partial sums
inline int32x4_t reduce4(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
  return vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d));
}

// Block J of the current super-block (block index b) for the 4 rows and NT tokens.
template <class Dec, class Dot, int NT, int J>
inline void block_step(const uint8_t* const sp[4], const typename Dec::Super& s, const ActQ8* x, int64_t x_stride,
                       int64_t b, float32x4_t acc[NT], float32x4_t summ[NT]) {
  int8x16_t c0[4], c1[4];
  for (int r = 0; r < 4; ++r) Dec::template codes<J>(sp[r], &c0[r], &c1[r]);
  for (int t = 0; t < NT; ++t) {
    const ActQ8& xb = x[t * x_stride + b];
    const int8x16_t x0 = vld1q_s8(xb.qs), x1 = vld1q_s8(xb.qs + 16);
    int32x4_t P;
    if constexpr (Dec::kMult < 2) {  // P = p0 + p1, or mult * (p0 + p1): the same integers as the ref's
      P = reduce4(Dot::dot2(c0[0], x0, c1[0], x1), Dot::dot2(c0[1], x0, c1[1], x1), Dot::dot2(c0[2], x0, c1[2], x1),
                  Dot::dot2(c0[3], x0, c1[3], x1));
      if constexpr (Dec::kMult == 1) P = vmulq_s32(s.m[J], P);
    } else {
      const int32x4_t p0 = reduce4(Dot::dot(c0[0], x0), Dot::dot(c0[1], x0), Dot::dot(c0[2], x0), Dot::dot(c0[3], x0));
      const int32x4_t p1 = reduce4(Dot::dot(c1[0], x1), Dot::dot(c1[1], x1), Dot::dot(c1[2], x1), Dot::dot(c1[3], x1));
      P = vmlaq_s32(vmulq_s32(s.m[2 * J], p0), s.m[2 * J + 1], p1);
    }
    acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(P), vmulq_f32(s.D, vdupq_n_f32(xb.d)));
    if constexpr (Dec::kHasMin) summ[t] = vfmaq_f32(summ[t], s.M[J], vdupq_n_f32(xb.s));
  }
}

// The same, kept out of line: the 8 blocks of a Q6_K super-block unrolled for a 4-token tile
// exceed the 32 registers and spill (qemu counts per weight and token: 0.68 inlined, 0.44 outlined
// with sdot); one token, or one block per super-block, is faster inlined.
template <class Dec, class Dot, int NT, int J>
__attribute__((noinline)) void block_step_outlined(const uint8_t* const sp[4], const typename Dec::Super& s,
                                                   const ActQ8* x, int64_t x_stride, int64_t b, float32x4_t acc[NT],
                                                   float32x4_t summ[NT]) {
  block_step<Dec, Dot, NT, J>(sp, s, x, x_stride, b, acc, summ);
}

template <class Dec, class Dot, int NT, int... J>
inline void super_step(std::integer_sequence<int, J...>, const uint8_t* const sp[4], const typename Dec::Super& s,
                       const ActQ8* x, int64_t x_stride, int64_t b0, float32x4_t acc[NT], float32x4_t summ[NT]) {
  if constexpr (NT > 1 && Dec::kSub > 1)
    (block_step_outlined<Dec, Dot, NT, J>(sp, s, x, x_stride, b0 + J, acc, summ), ...);
  else
    (block_step<Dec, Dot, NT, J>(sp, s, x, x_stride, b0 + J, acc, summ), ...);
}

// y[t][r0 + i] (i < nr) for rows r0 .. r0 + nr - 1 (nr <= 4; missing rows repeat row r0) and NT tokens.
template <class Dec, class Dot, int NT>
void rows4_tokens(const uint8_t* w0, size_t row_bytes, int nr, int64_t nb, const ActQ8* x, int64_t x_stride,
                  float* y, int64_t y_stride) {
  const uint8_t* sp[4];
  for (int r = 0; r < 4; ++r) sp[r] = w0 + size_t(r < nr ? r : 0) * row_bytes;
  float32x4_t acc[NT], summ[NT];
  for (int t = 0; t < NT; ++t) acc[t] = summ[t] = vdupq_n_f32(0.0f);
  for (int64_t b0 = 0; b0 < nb; b0 += Dec::kSub) {
    typename Dec::Super s;
    Dec::load(sp, &s);
    super_step<Dec, Dot, NT>(std::make_integer_sequence<int, Dec::kSub>{}, sp, s, x, x_stride, b0, acc, summ);
    for (int r = 0; r < 4; ++r) sp[r] += Dec::kBytes;
  }
  for (int t = 0; t < NT; ++t) {
    float out[4];
    vst1q_f32(out, Dec::kHasMin ? vaddq_f32(acc[t], summ[t]) : acc[t]);
    for (int i = 0; i < nr; ++i) y[t * y_stride + i] = out[i];
  }
}

template <class Dec, class Dot>
void matmul_q8_neon(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const ActQ8* x, int64_t x_stride,
                    int64_t n_tok, float* y, int64_t y_stride) {
  const int64_t nb = k / QK32;
  if (nb == 0) return;
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const int nr = int(rows - r0 < 4 ? rows - r0 : 4);
    const uint8_t* w0 = w + size_t(r0) * row_bytes;
    int64_t t = 0;
    for (; t + 4 <= n_tok; t += 4)
      rows4_tokens<Dec, Dot, 4>(w0, row_bytes, nr, nb, x + t * x_stride, x_stride, y + t * y_stride + r0, y_stride);
    for (; t < n_tok; ++t)
      rows4_tokens<Dec, Dot, 1>(w0, row_bytes, nr, nb, x + t * x_stride, x_stride, y + t * y_stride + r0, y_stride);
  }
}

}  // namespace
}  // namespace lutllm

// The registry entry points of one Dot flavour: matmul_{q4_0,q4_1,q5_0,q5_1,q8_0,q4_K,q5_K,q6_K}_q8__SUFFIX.
#define LUTLLM_Q8_NEON_ENTRY(DEC, DOT, NAME)                                                                   \
  void NAME(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const ActQ8* x, int64_t x_stride,   \
            int64_t n_tok, float* y, int64_t y_stride) {                                                       \
    matmul_q8_neon<DEC, DOT>(w, row_bytes, rows, k, x, x_stride, n_tok, y, y_stride);                          \
  }
#define LUTLLM_Q8_NEON_ENTRY_POINTS(DOT, SUFFIX)                                        \
  LUTLLM_Q8_NEON_ENTRY(DecLegacy<GgmlType::Q4_0>, DOT, matmul_q4_0_q8__##SUFFIX)      \
  LUTLLM_Q8_NEON_ENTRY(DecLegacy<GgmlType::Q4_1>, DOT, matmul_q4_1_q8__##SUFFIX)      \
  LUTLLM_Q8_NEON_ENTRY(DecLegacy<GgmlType::Q5_0>, DOT, matmul_q5_0_q8__##SUFFIX)      \
  LUTLLM_Q8_NEON_ENTRY(DecLegacy<GgmlType::Q5_1>, DOT, matmul_q5_1_q8__##SUFFIX)      \
  LUTLLM_Q8_NEON_ENTRY(DecLegacy<GgmlType::Q8_0>, DOT, matmul_q8_0_q8__##SUFFIX)      \
  LUTLLM_Q8_NEON_ENTRY(DecQxK<false>, DOT, matmul_q4_K_q8__##SUFFIX)                  \
  LUTLLM_Q8_NEON_ENTRY(DecQxK<true>, DOT, matmul_q5_K_q8__##SUFFIX)                   \
  LUTLLM_Q8_NEON_ENTRY(DecQ6_K, DOT, matmul_q6_K_q8__##SUFFIX)
