// Scalar reference dequantizers: one row of blocks -> float32, bit-exact with gguf.quants.dequantize
// (same float operations in the same order). Not tuned for speed; SIMD dequant would be a separate file.
#include <cstring>

#include "lutllm/kernel_decls.h"
#include "q8_blocks.h"

namespace lutllm {

namespace {
template <typename B>
inline B load_block(const void* src, int64_t i) {  // memcpy: rows may be misaligned
  B b;
  std::memcpy(&b, static_cast<const uint8_t*>(src) + i * sizeof(B), sizeof(B));
  return b;
}
inline uint16_t load_u16(const void* src, int64_t i) {
  uint16_t v;
  std::memcpy(&v, static_cast<const uint8_t*>(src) + 2 * i, 2);
  return v;
}
}  // namespace

void dequant_f32__ref(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }

void dequant_f16__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(load_u16(src, i));
}

void dequant_bf16__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_u16(src, i));
}

// d * (nibble - 8); qs[j] low nibble -> element j, high nibble -> element j + 16
void dequant_q4_0__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
    const auto b = load_block<block_q4_0>(src, i);
    const float d = fp16_to_f32(b.d);
    for (int j = 0; j < 16; ++j) {
      dst[j] = d * float((b.qs[j] & 0x0F) - 8);
      dst[j + 16] = d * float((b.qs[j] >> 4) - 8);
    }
  }
}

// (d * nibble) + m
void dequant_q4_1__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
    const auto b = load_block<block_q4_1>(src, i);
    const float d = fp16_to_f32(b.d), m = fp16_to_f32(b.m);
    for (int j = 0; j < 16; ++j) {
      dst[j] = d * float(b.qs[j] & 0x0F) + m;
      dst[j + 16] = d * float(b.qs[j] >> 4) + m;
    }
  }
}

// d * (q5 - 16), the fifth bit of element j is bit j of qh (little-endian u32)
void dequant_q5_0__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
    const auto b = load_block<block_q5_0>(src, i);
    const float d = fp16_to_f32(b.d);
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    for (int j = 0; j < 16; ++j) {
      dst[j] = d * float(int((b.qs[j] & 0x0F) | ((qh >> j) & 1) << 4) - 16);
      dst[j + 16] = d * float(int((b.qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4) - 16);
    }
  }
}

// (d * q5) + m
void dequant_q5_1__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
    const auto b = load_block<block_q5_1>(src, i);
    const float d = fp16_to_f32(b.d), m = fp16_to_f32(b.m);
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    for (int j = 0; j < 16; ++j) {
      dst[j] = d * float(int((b.qs[j] & 0x0F) | ((qh >> j) & 1) << 4)) + m;
      dst[j + 16] = d * float(int((b.qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4)) + m;
    }
  }
}

void dequant_q8_0__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
    const auto b = load_block<block_q8_0>(src, i);
    const float d = fp16_to_f32(b.d);
    for (int j = 0; j < QK32; ++j) dst[j] = float(b.qs[j]) * d;
  }
}

// Element j of a super-block (j = 0..255): 2-bit q at qs[32*(j/128) + j%32] >> 2*((j%128)/32);
// sub-block j/16 has scale d * (scales & 15) and min dmin * (scales >> 4): (dl * q) - ml
void dequant_q2_K__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, dst += QK_K) {
    const auto b = load_block<block_q2_K>(src, i);
    const float d = fp16_to_f32(b.d), dmin = fp16_to_f32(b.dmin);
    for (int s = 0; s < 16; ++s) {
      const float dl = d * float(b.scales[s] & 0x0F), ml = dmin * float(b.scales[s] >> 4);
      for (int e = 0; e < 16; ++e) {
        const int j = 16 * s + e, r = j % 128;
        const int q = (b.qs[32 * (j / 128) + r % 32] >> (2 * (r / 32))) & 3;
        dst[j] = dl * float(q) - ml;
      }
    }
  }
}

// Element j: low 2 bits as in Q2_K, bit 2 from hmask[j%32] bit j/32 (set -> no offset, clear -> -4);
// 16 six-bit scales (low 4 bits in scales[0..7] nibbles, high 2 bits in scales[8..11]), minus 32.
void dequant_q3_K__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, dst += QK_K) {
    const auto b = load_block<block_q3_K>(src, i);
    const float d = fp16_to_f32(b.d);
    for (int s = 0; s < 16; ++s) {
      const int lo = (s < 8 ? b.scales[s] : b.scales[s - 8] >> 4) & 0x0F;
      const int hi = (b.scales[8 + s % 4] >> (2 * (s / 4))) & 3;
      const float dl = d * float(int((lo | hi << 4)) - 32);
      for (int e = 0; e < 16; ++e) {
        const int j = 16 * s + e, r = j % 128;
        const int ql = (b.qs[32 * (j / 128) + r % 32] >> (2 * (r / 32))) & 3;
        const int hbit = (b.hmask[j % 32] >> (j / 32)) & 1;
        dst[j] = dl * float(ql - ((hbit ^ 1) << 2));
      }
    }
  }
}

// Sub-block s (32 elements): (d * sc) * q - (dmin * m); q is nibble s%2 of qs[32*(s/2) + e]
void dequant_q4_K__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, dst += QK_K) {
    const auto b = load_block<block_q4_K>(src, i);
    const float d = fp16_to_f32(b.d), dmin = fp16_to_f32(b.dmin);
    for (int s = 0; s < 8; ++s) {
      int sc, m;
      q8dot::kquant_scale_min(b.scales, s, &sc, &m);
      const float dl = d * float(sc), ml = dmin * float(m);
      for (int e = 0; e < 32; ++e) {
        const uint8_t byte = b.qs[32 * (s / 2) + e];
        dst[32 * s + e] = dl * float((s & 1) ? byte >> 4 : byte & 0x0F) - ml;
      }
    }
  }
}

// As Q4_K with a fifth bit: bit s of qh[e]
void dequant_q5_K__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, dst += QK_K) {
    const auto b = load_block<block_q5_K>(src, i);
    const float d = fp16_to_f32(b.d), dmin = fp16_to_f32(b.dmin);
    for (int s = 0; s < 8; ++s) {
      int sc, m;
      q8dot::kquant_scale_min(b.scales, s, &sc, &m);
      const float dl = d * float(sc), ml = dmin * float(m);
      for (int e = 0; e < 32; ++e) {
        const uint8_t byte = b.qs[32 * (s / 2) + e];
        const int q = ((s & 1) ? byte >> 4 : byte & 0x0F) | ((b.qh[e] >> s) & 1) << 4;
        dst[32 * s + e] = dl * float(q) - ml;
      }
    }
  }
}

// Element j: h = j/128, r = j%128; low 4 bits: nibble r/64 of ql[64h + r%64]; high 2 bits:
// qh[32h + r%32] >> 2*(r/32); value (d * scales[j/16]) * (q6 - 32)
void dequant_q6_K__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, dst += QK_K) {
    const auto b = load_block<block_q6_K>(src, i);
    const float d = fp16_to_f32(b.d);
    for (int s = 0; s < 16; ++s) {
      const float dl = d * float(b.scales[s]);
      for (int e = 0; e < 16; ++e) {
        const int j = 16 * s + e, h = j / 128, r = j % 128;
        const uint8_t lb = b.ql[64 * h + r % 64];
        const int lo = (r / 64) ? lb >> 4 : lb & 0x0F;
        const int hi = (b.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
        dst[j] = dl * float((lo | hi << 4) - 32);
      }
    }
  }
}

// Ternary, base-3 packed: byte value v holds trits as the fraction v/256 in base 3; trit k of a byte
// is ((uint8_t)(v * 3^k) * 3) >> 8. Elements 0..159: qs[e%32], k = e/32; 160..239: qs[32 + e%16],
// k = (e-160)/16; 240..255: qh[e%4], k = (e-240)/4. Value d * (trit - 1).
void dequant_tq1_0__ref(const void* src, float* dst, int64_t n) {
  static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
  for (int64_t i = 0; i < n / QK_K; ++i, dst += QK_K) {
    const auto b = load_block<block_tq1_0>(src, i);
    const float d = fp16_to_f32(b.d);
    auto trit = [](uint8_t v, uint8_t p) { return int((uint16_t(uint8_t(v * p)) * 3) >> 8) - 1; };
    for (int e = 0; e < 160; ++e) dst[e] = d * float(trit(b.qs[e % 32], pow3[e / 32]));
    for (int e = 160; e < 240; ++e) dst[e] = d * float(trit(b.qs[32 + (e - 160) % 16], pow3[(e - 160) / 16]));
    for (int e = 240; e < 256; ++e) dst[e] = d * float(trit(b.qh[(e - 240) % 4], pow3[(e - 240) / 4]));
  }
}

// Element j: 2-bit q at qs[32*(j/128) + j%32] >> 2*((j%128)/32); value d * (q - 1)
void dequant_tq2_0__ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, dst += QK_K) {
    const auto b = load_block<block_tq2_0>(src, i);
    const float d = fp16_to_f32(b.d);
    for (int j = 0; j < QK_K; ++j) {
      const int r = j % 128;
      const int q = (b.qs[32 * (j / 128) + r % 32] >> (2 * (r / 32))) & 3;
      dst[j] = d * float(q - 1);
    }
  }
}

}  // namespace lutllm
