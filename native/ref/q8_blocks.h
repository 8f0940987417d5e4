// Scalar decoding of one 32-element weight block into the integer form used by the Q8 matmuls, and the
// K-quant scale unpacking; shared by native/ref and the ISA files. Not a dequantizer (see dequant.cc).
#pragma once
#include <cstdint>
#include <cstring>

#include "lutllm/ggml_types.h"

namespace lutllm {
namespace q8dot {

// The integer form of one 32-element block b of a weight row (element e = 0..31):
//   weight[e] = D * mult[e / 16] * c[e]  - (the offset term, carried by M)
// The matmul computes, per block, the exact integer  P = sum_e mult[e/16] * c[e] * xq[e]  and then
// only the float operations written in matmul_q8.cc. M is the per-block term multiplied with the
// activation block's s = dx * sum(xq): +m for Q4_1/Q5_1, -(dmin*m_j) for the K-quants, 0 otherwise.
struct Block {
  int8_t c[QK32];   // integer codes, signed (Q4_0: nibble - 8, Q6_K: q6 - 32, Q8_0: as stored)
  int16_t mult[2];  // integer sub-scales for elements 0..15 and 16..31 (1 for the legacy types)
  float D;          // float scale (legacy: the block's d; K-quants: the super-block's d)
  float M;          // offset term (see above)
};

// 6-bit scale / min of sub-block j (0..7) of a Q4_K / Q5_K super-block, from its packed scales[12]:
//   j < 4: sc = s[j] & 63,                          m = s[j + 4] & 63
//   j >= 4: sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4,  m = (s[j + 4] >> 4) | (s[j] >> 6) << 4
inline void kquant_scale_min(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Decode block b (32 elements) of one weight row of type T into `out`.
template <GgmlType T>
inline void decode_block(const uint8_t* row, int64_t b, Block* out);

template <>
inline void decode_block<GgmlType::Q4_0>(const uint8_t* row, int64_t b, Block* o) {
  block_q4_0 blk;
  std::memcpy(&blk, row + b * sizeof(block_q4_0), sizeof blk);
  for (int j = 0; j < 16; ++j) {
    o->c[j] = int8_t((blk.qs[j] & 0x0F) - 8);
    o->c[j + 16] = int8_t((blk.qs[j] >> 4) - 8);
  }
  o->mult[0] = o->mult[1] = 1;
  o->D = fp16_to_f32(blk.d);
  o->M = 0.0f;
}

template <>
inline void decode_block<GgmlType::Q4_1>(const uint8_t* row, int64_t b, Block* o) {
  block_q4_1 blk;
  std::memcpy(&blk, row + b * sizeof(block_q4_1), sizeof blk);
  for (int j = 0; j < 16; ++j) {
    o->c[j] = int8_t(blk.qs[j] & 0x0F);
    o->c[j + 16] = int8_t(blk.qs[j] >> 4);
  }
  o->mult[0] = o->mult[1] = 1;
  o->D = fp16_to_f32(blk.d);
  o->M = fp16_to_f32(blk.m);
}

template <>
inline void decode_block<GgmlType::Q5_0>(const uint8_t* row, int64_t b, Block* o) {
  block_q5_0 blk;
  std::memcpy(&blk, row + b * sizeof(block_q5_0), sizeof blk);
  const uint32_t qh = uint32_t(blk.qh[0]) | uint32_t(blk.qh[1]) << 8 | uint32_t(blk.qh[2]) << 16 |
                      uint32_t(blk.qh[3]) << 24;
  for (int j = 0; j < 16; ++j) {
    o->c[j] = int8_t(int((blk.qs[j] & 0x0F) | ((qh >> j) & 1) << 4) - 16);
    o->c[j + 16] = int8_t(int((blk.qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4) - 16);
  }
  o->mult[0] = o->mult[1] = 1;
  o->D = fp16_to_f32(blk.d);
  o->M = 0.0f;
}

template <>
inline void decode_block<GgmlType::Q5_1>(const uint8_t* row, int64_t b, Block* o) {
  block_q5_1 blk;
  std::memcpy(&blk, row + b * sizeof(block_q5_1), sizeof blk);
  const uint32_t qh = uint32_t(blk.qh[0]) | uint32_t(blk.qh[1]) << 8 | uint32_t(blk.qh[2]) << 16 |
                      uint32_t(blk.qh[3]) << 24;
  for (int j = 0; j < 16; ++j) {
    o->c[j] = int8_t((blk.qs[j] & 0x0F) | ((qh >> j) & 1) << 4);
    o->c[j + 16] = int8_t((blk.qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
  }
  o->mult[0] = o->mult[1] = 1;
  o->D = fp16_to_f32(blk.d);
  o->M = fp16_to_f32(blk.m);
}

template <>
inline void decode_block<GgmlType::Q8_0>(const uint8_t* row, int64_t b, Block* o) {
  block_q8_0 blk;
  std::memcpy(&blk, row + b * sizeof(block_q8_0), sizeof blk);
  for (int j = 0; j < QK32; ++j) o->c[j] = blk.qs[j];
  o->mult[0] = o->mult[1] = 1;
  o->D = fp16_to_f32(blk.d);
  o->M = 0.0f;
}

// K-quants: block b is sub-block j = b % 8 of super-block b / 8.
template <>
inline void decode_block<GgmlType::Q4_K>(const uint8_t* row, int64_t b, Block* o) {
  block_q4_K copy;  // memcpy: rows may be misaligned
  std::memcpy(&copy, row + (b / 8) * sizeof(block_q4_K), sizeof copy);
  const block_q4_K* blk = &copy;
  const int j = int(b % 8);
  int sc, m;
  kquant_scale_min(blk->scales, j, &sc, &m);
  // sub-block j: bytes 32*(j/2) .. +31 of qs, low nibble for even j, high nibble for odd j
  const uint8_t* q = blk->qs + 32 * (j / 2);
  for (int e = 0; e < QK32; ++e) o->c[e] = int8_t((j & 1) ? (q[e] >> 4) : (q[e] & 0x0F));
  o->mult[0] = o->mult[1] = int16_t(sc);
  o->D = fp16_to_f32(blk->d);
  o->M = -(fp16_to_f32(blk->dmin) * float(m));
}

template <>
inline void decode_block<GgmlType::Q5_K>(const uint8_t* row, int64_t b, Block* o) {
  block_q5_K copy;  // memcpy: rows may be misaligned
  std::memcpy(&copy, row + (b / 8) * sizeof(block_q5_K), sizeof copy);
  const block_q5_K* blk = &copy;
  const int j = int(b % 8);
  int sc, m;
  kquant_scale_min(blk->scales, j, &sc, &m);
  const uint8_t* q = blk->qs + 32 * (j / 2);
  for (int e = 0; e < QK32; ++e) {
    const int lo = (j & 1) ? (q[e] >> 4) : (q[e] & 0x0F);
    o->c[e] = int8_t(lo | ((blk->qh[e] >> j) & 1) << 4);  // fifth bit: bit j of qh[e]
  }
  o->mult[0] = o->mult[1] = int16_t(sc);
  o->D = fp16_to_f32(blk->d);
  o->M = -(fp16_to_f32(blk->dmin) * float(m));
}

template <>
inline void decode_block<GgmlType::Q6_K>(const uint8_t* row, int64_t b, Block* o) {
  block_q6_K copy;  // memcpy: rows may be misaligned
  std::memcpy(&copy, row + (b / 8) * sizeof(block_q6_K), sizeof copy);
  const block_q6_K* blk = &copy;
  const int j = int(b % 8), h = j / 4, q = j % 4;
  // element 32*j + e: low 4 bits from ql[64*h + 32*(q%2) + e] (nibble q/2), high 2 bits from
  // qh[32*h + e] >> 2q; the 16-element scales are scales[2j] and scales[2j + 1]
  const uint8_t* ql = blk->ql + 64 * h + 32 * (q % 2);
  const uint8_t* qh = blk->qh + 32 * h;
  for (int e = 0; e < QK32; ++e) {
    const int lo = (q / 2) ? (ql[e] >> 4) : (ql[e] & 0x0F);
    o->c[e] = int8_t((lo | ((qh[e] >> (2 * q)) & 3) << 4) - 32);
  }
  o->mult[0] = blk->scales[2 * j];
  o->mult[1] = blk->scales[2 * j + 1];
  o->D = fp16_to_f32(blk->d);
  o->M = 0.0f;
}

}  // namespace q8dot
}  // namespace lutllm
