// AVX2 decoding of a tile of weight rows into the integer form of the Q8 matmuls, shared by
// matmul_q8_avx2.cc and matmul_q8_avx512.cc. Include only from files compiled with AVX2 or above.
// Everything here has internal linkage: each ISA file gets its own copy (no cross-ISA inline merging).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "lutllm/kernels.h"

namespace lutllm {
namespace {

// Per-thread scratch, grown on demand (plain malloc: no std templates shared with baseline code).
struct Scratch {
  uint8_t* p = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(p); }
  uint8_t* get(size_t n) {
    if (n > cap) {
      std::free(p);
      cap = (n + 4095) & ~size_t(4095);
      p = static_cast<uint8_t*>(std::aligned_alloc(64, cap));
      if (!p) std::abort();
    }
    return p;
  }
};

enum class Mult { ONE, UNIFORM, HALVES };  // integer sub-scales: none, one per block, one per 16

// A decoded tile of R weight rows over nb 32-element blocks (rows past the matrix are zero).
// Block b of tile row r is (see native/ref/q8_blocks.h for the meaning of c, mult, D, M):
//   u[(b*R + r)*32 + e]  uint8 code + kOff (kOff per type; Q8_0 on AVX2: |c|, sign in ws)
//   ws[(b*R + r)*32 + e] int8 signed code (only types decoded with kSignedQ8)
//   D[b*R + r], M[b*R + r] float
//   sc[(b*2 + h)*R + r]  int32 = two int16 copies of mult[h] (h = 0: elements 0..15, 1: 16..31)
//   scc[b*R + r]         int32 = int16 pair (kOff*mult[0], kOff*mult[1]) (HALVES with an offset)
//   scf[(b*2 + h)*R + r] float(mult[h])
struct Tile {
  int R = 0;
  int64_t nb = 0;
  uint8_t* u = nullptr;
  int8_t* ws = nullptr;
  float* D = nullptr;
  float* M = nullptr;
  int32_t* sc = nullptr;
  int32_t* scc = nullptr;
  float* scf = nullptr;
};

inline size_t tile_bytes(int R, int64_t nb) {
  const size_t n = size_t(nb) * size_t(R);
  return n * 32 * 2 + n * 4 * 2 + n * 2 * 4 * 2 + n * 4 + 64 * 8;
}
inline Tile tile_carve(uint8_t* p, int R, int64_t nb) {
  const size_t n = size_t(nb) * size_t(R);
  auto take = [&p](size_t bytes) {
    uint8_t* q = p;
    p += (bytes + 63) & ~size_t(63);
    return q;
  };
  Tile t;
  t.R = R;
  t.nb = nb;
  t.u = take(n * 32);
  t.ws = reinterpret_cast<int8_t*>(take(n * 32));
  t.D = reinterpret_cast<float*>(take(n * 4));
  t.M = reinterpret_cast<float*>(take(n * 4));
  t.sc = reinterpret_cast<int32_t*>(take(n * 8));
  t.scf = reinterpret_cast<float*>(take(n * 8));
  t.scc = reinterpret_cast<int32_t*>(take(n * 4));
  return t;
}

inline float h2f(const uint8_t* p) {  // fp16 at a possibly misaligned address -> float (exact)
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
inline int32_t pair16(int a, int b) { return int32_t(uint32_t(uint16_t(int16_t(a))) | uint32_t(uint16_t(int16_t(b))) << 16); }

// 16 packed bytes -> 32 codes in element order: low nibbles (elements 0..15), high nibbles (16..31)
inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}
// 32 bits (little-endian at p) -> 32 bytes, byte j = 0x10 where bit j is set, else 0
inline __m256i bits_to_0x10(const uint8_t* p) {
  uint32_t bits;
  std::memcpy(&bits, p, 4);
  const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(int32_t(bits)),
                                        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                          0x0101010101010101, 0x0000000000000000));
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(0x10));
}
inline void store32(uint8_t* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
// same as nibbles32 with one fewer operation: 16 bytes broadcast to both halves, high half shifted by 4
inline __m256i nibbles32_fast(const uint8_t* qs) {
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
}

// ---- per-type decoders: fill tile row r from one weight row ----------------------------------
// kQ8Xor: Q8_0 stored as c ^ 0x80 (= c + 128, kOff 128) instead of |c| plus signed copy.
struct DecQ4_0 {
  static constexpr bool kFused = true;  // element-lane GEMV straight from the blocks
  static constexpr int kBB = 18;
  // the 32 codes of the block at blk, as stored in the tile (Q8_0 signed form: c itself)
  static __m256i codes(const uint8_t* blk) { return nibbles32_fast(blk + 2); }
  static constexpr int kOff = 8, kUMax = 15;
  static constexpr Mult kMult = Mult::ONE;
  static constexpr bool kMin = false, kSigned = false;
  static void decode(const uint8_t* row, Tile& t, int r) {
    for (int64_t b = 0; b < t.nb; ++b) {
      const uint8_t* blk = row + b * 18;
      store32(t.u + (b * t.R + r) * 32, nibbles32(blk + 2));
      t.D[b * t.R + r] = h2f(blk);
    }
  }
};
struct DecQ4_1 {
  static constexpr bool kFused = true;  // element-lane GEMV straight from the blocks
  static constexpr int kBB = 20;
  // the 32 codes of the block at blk, as stored in the tile (Q8_0 signed form: c itself)
  static __m256i codes(const uint8_t* blk) { return nibbles32_fast(blk + 4); }
  static constexpr int kOff = 0, kUMax = 15;
  static constexpr Mult kMult = Mult::ONE;
  static constexpr bool kMin = true, kSigned = false;
  static void decode(const uint8_t* row, Tile& t, int r) {
    for (int64_t b = 0; b < t.nb; ++b) {
      const uint8_t* blk = row + b * 20;
      store32(t.u + (b * t.R + r) * 32, nibbles32(blk + 4));
      t.D[b * t.R + r] = h2f(blk);
      t.M[b * t.R + r] = h2f(blk + 2);
    }
  }
};
struct DecQ5_0 {
  static constexpr bool kFused = true;  // element-lane GEMV straight from the blocks
  static constexpr int kBB = 22;
  // the 32 codes of the block at blk, as stored in the tile (Q8_0 signed form: c itself)
  static __m256i codes(const uint8_t* blk) { return _mm256_or_si256(nibbles32_fast(blk + 6), bits_to_0x10(blk + 2)); }
  static constexpr int kOff = 16, kUMax = 31;
  static constexpr Mult kMult = Mult::ONE;
  static constexpr bool kMin = false, kSigned = false;
  static void decode(const uint8_t* row, Tile& t, int r) {
    for (int64_t b = 0; b < t.nb; ++b) {
      const uint8_t* blk = row + b * 22;
      store32(t.u + (b * t.R + r) * 32, _mm256_or_si256(nibbles32(blk + 6), bits_to_0x10(blk + 2)));
      t.D[b * t.R + r] = h2f(blk);
    }
  }
};
struct DecQ5_1 {
  static constexpr bool kFused = true;  // element-lane GEMV straight from the blocks
  static constexpr int kBB = 24;
  // the 32 codes of the block at blk, as stored in the tile (Q8_0 signed form: c itself)
  static __m256i codes(const uint8_t* blk) { return _mm256_or_si256(nibbles32_fast(blk + 8), bits_to_0x10(blk + 4)); }
  static constexpr int kOff = 0, kUMax = 31;
  static constexpr Mult kMult = Mult::ONE;
  static constexpr bool kMin = true, kSigned = false;
  static void decode(const uint8_t* row, Tile& t, int r) {
    for (int64_t b = 0; b < t.nb; ++b) {
      const uint8_t* blk = row + b * 24;
      store32(t.u + (b * t.R + r) * 32, _mm256_or_si256(nibbles32(blk + 8), bits_to_0x10(blk + 4)));
      t.D[b * t.R + r] = h2f(blk);
      t.M[b * t.R + r] = h2f(blk + 2);
    }
  }
};
// Q8_0, AVX2 form: u = |c| (0..128), ws = c; the dot uses maddubs(|c|, sign(x, c)).
struct DecQ8_0Signed {
  static constexpr bool kFused = true;  // element-lane GEMV straight from the blocks
  static constexpr int kBB = 34;
  // the 32 codes of the block at blk, as stored in the tile (Q8_0 signed form: c itself)
  static __m256i codes(const uint8_t* blk) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2)); }
  static constexpr int kOff = 0, kUMax = 128;
  static constexpr Mult kMult = Mult::ONE;
  static constexpr bool kMin = false, kSigned = true;
  static void decode(const uint8_t* row, Tile& t, int r) {
    for (int64_t b = 0; b < t.nb; ++b) {
      const uint8_t* blk = row + b * 34;
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      store32(t.u + (b * t.R + r) * 32, _mm256_abs_epi8(c));
      store32(reinterpret_cast<uint8_t*>(t.ws) + (b * t.R + r) * 32, c);
      t.D[b * t.R + r] = h2f(blk);
    }
  }
};
// Q8_0, VNNI form: u = c + 128 (0..255), offset 128.
struct DecQ8_0Xor {
  static constexpr bool kFused = true;  // element-lane GEMV straight from the blocks
  static constexpr int kBB = 34;
  // the 32 codes of the block at blk, as stored in the tile (Q8_0 signed form: c itself)
  static __m256i codes(const uint8_t* blk) { return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2)), _mm256_set1_epi8(char(0x80))); }
  static constexpr int kOff = 128, kUMax = 255;
  static constexpr Mult kMult = Mult::ONE;
  static constexpr bool kMin = false, kSigned = false;
  static void decode(const uint8_t* row, Tile& t, int r) {
    for (int64_t b = 0; b < t.nb; ++b) {
      const uint8_t* blk = row + b * 34;
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      store32(t.u + (b * t.R + r) * 32, _mm256_xor_si256(c, _mm256_set1_epi8(char(0x80))));
      t.D[b * t.R + r] = h2f(blk);
    }
  }
};

// The 8 six-bit scales and mins of a Q4_K / Q5_K super-block from its packed scales[12], one byte per
// sub-block j (same unpacking as kquant_scale_min in native/ref/q8_blocks.h, four bytes at a time):
//   sc[j<4] = s[j] & 63           sc[j>=4] = (s[j+4] & 15) | (s[j-4] >> 6) << 4
//   m[j<4]  = s[j+4] & 63         m[j>=4]  = (s[j+4] >> 4) | (s[j] >> 6) << 4
inline void kq_scales8(const uint8_t* s, __m256i* sc, __m256i* m) {
  uint32_t s0, s1, s2;
  std::memcpy(&s0, s, 4);
  std::memcpy(&s1, s + 4, 4);
  std::memcpy(&s2, s + 8, 4);
  const uint32_t sc_lo = s0 & 0x3F3F3F3Fu, sc_hi = (s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u);
  const uint32_t m_lo = s1 & 0x3F3F3F3Fu, m_hi = ((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u);
  *sc = _mm256_cvtepu8_epi32(_mm_setr_epi32(int32_t(sc_lo), int32_t(sc_hi), 0, 0));
  *m = _mm256_cvtepu8_epi32(_mm_setr_epi32(int32_t(m_lo), int32_t(m_hi), 0, 0));
}

template <bool kFive>
struct DecQxK {  // Q4_K (kFive = false, 144-byte blocks) and Q5_K (176-byte blocks)
  static constexpr bool kFused = false;
  static constexpr int kOff = 0, kUMax = kFive ? 31 : 15;
  static constexpr Mult kMult = Mult::UNIFORM;
  static constexpr bool kMin = true, kSigned = false;
  static void decode(const uint8_t* row, Tile& t, int r) {
    const int64_t nsb = t.nb / 8, bytes = kFive ? 176 : 144, R = t.R;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t i = 0; i < nsb; ++i) {
      const uint8_t* blk = row + i * bytes;
      const float d = h2f(blk), dmin = h2f(blk + 2);
      const uint8_t* qh = blk + 16;
      const uint8_t* qs = blk + (kFive ? 48 : 16);
      __m256i scv, mv;
      kq_scales8(blk + 4, &scv, &mv);
      alignas(32) int32_t pair[8];
      alignas(32) float scf[8], mf[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(pair), _mm256_or_si256(scv, _mm256_slli_epi32(scv, 16)));
      _mm256_store_ps(scf, _mm256_cvtepi32_ps(scv));
      // M = -(dmin * m): (-dmin) * m rounds to exactly the negated product
      _mm256_store_ps(mf, _mm256_mul_ps(_mm256_set1_ps(-dmin), _mm256_cvtepi32_ps(mv)));
      const __m256i hv = kFive ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh)) : _mm256_setzero_si256();
      for (int c = 0; c < 4; ++c) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
        for (int half = 0; half < 2; ++half) {
          const int j = 2 * c + half;
          const int64_t b = i * 8 + j;
          __m256i q = half ? _mm256_and_si256(_mm256_srli_epi16(v, 4), m4) : _mm256_and_si256(v, m4);
          if (kFive) {
            const __m256i bit = _mm256_set1_epi8(char(1 << j));
            q = _mm256_or_si256(q, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hv, bit), bit),
                                                    _mm256_set1_epi8(0x10)));
          }
          store32(t.u + (b * R + r) * 32, q);
          t.D[b * R + r] = d;
          t.M[b * R + r] = mf[j];
          t.sc[(b * 2) * R + r] = t.sc[(b * 2 + 1) * R + r] = pair[j];
          t.scf[(b * 2) * R + r] = t.scf[(b * 2 + 1) * R + r] = scf[j];
        }
      }
    }
  }
};

struct DecQ6_K {
  static constexpr bool kFused = false;
  static constexpr int kOff = 32, kUMax = 63;
  static constexpr Mult kMult = Mult::HALVES;
  static constexpr bool kMin = false, kSigned = false;
  static void decode(const uint8_t* row, Tile& t, int r) {
    const int64_t nsb = t.nb / 8, R = t.R;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(0x03);
    for (int64_t i = 0; i < nsb; ++i) {
      const uint8_t* blk = row + i * 210;
      const float d = h2f(blk + 208);
      // the 16 int8 scales: sub-block j uses scales[2j] (elements 0..15) and scales[2j+1] (16..31)
      const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)));
      alignas(32) int32_t pair[16], scc[8];
      alignas(32) float scf[16];
      const __m256i s_lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s16));
      const __m256i s_hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s16, 1));
      const __m256i lo16 = _mm256_set1_epi32(0xFFFF);
      _mm256_store_si256(reinterpret_cast<__m256i*>(pair),
                         _mm256_or_si256(_mm256_and_si256(s_lo, lo16), _mm256_slli_epi32(s_lo, 16)));
      _mm256_store_si256(reinterpret_cast<__m256i*>(pair + 8),
                         _mm256_or_si256(_mm256_and_si256(s_hi, lo16), _mm256_slli_epi32(s_hi, 16)));
      _mm256_store_ps(scf, _mm256_cvtepi32_ps(s_lo));
      _mm256_store_ps(scf + 8, _mm256_cvtepi32_ps(s_hi));
      // int16 pairs (kOff * scales[2j], kOff * scales[2j+1]) are the int16 lanes of s16 times 32
      _mm256_store_si256(reinterpret_cast<__m256i*>(scc), _mm256_slli_epi16(s16, 5));
      for (int h = 0; h < 2; ++h) {
        const __m256i la = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h));
        const __m256i lb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h + 32));
        const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
        for (int q = 0; q < 4; ++q) {
          const __m256i src = (q % 2) ? lb : la;
          const __m256i lo = (q / 2) ? _mm256_and_si256(_mm256_srli_epi16(src, 4), m4) : _mm256_and_si256(src, m4);
          __m256i hi;
          switch (q) {  // (qh >> 2q) & 3, moved to bits 4..5
            case 0: hi = _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4); break;
            case 1: hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4); break;
            case 2: hi = _mm256_and_si256(hb, _mm256_set1_epi8(0x30)); break;
            default: hi = _mm256_and_si256(_mm256_srli_epi16(hb, 2), _mm256_set1_epi8(0x30)); break;
          }
          const int j = 4 * h + q;
          const int64_t b = i * 8 + j;
          store32(t.u + (b * R + r) * 32, _mm256_or_si256(lo, hi));
          t.D[b * R + r] = d;
          t.sc[(b * 2) * R + r] = pair[2 * j];
          t.sc[(b * 2 + 1) * R + r] = pair[2 * j + 1];
          t.scf[(b * 2) * R + r] = scf[2 * j];
          t.scf[(b * 2 + 1) * R + r] = scf[2 * j + 1];
          t.scc[b * R + r] = scc[j];
        }
      }
    }
  }
};

// Decode rows [r0, r0 + nr) of w into tile rows 0..nr-1; tile rows nr..R-1 become zero.
template <class Dec>
void decode_tile(const uint8_t* w, size_t row_bytes, int64_t r0, int nr, Tile& t) {
  for (int r = 0; r < nr; ++r) Dec::decode(w + size_t(r0 + r) * row_bytes, t, r);
  if (nr == t.R) return;
  for (int64_t b = 0; b < t.nb; ++b)
    for (int r = nr; r < t.R; ++r) {
      std::memset(t.u + (b * t.R + r) * 32, 0, 32);
      std::memset(t.ws + (b * t.R + r) * 32, 0, 32);
      t.D[b * t.R + r] = 0.0f;
      t.M[b * t.R + r] = 0.0f;
      for (int h = 0; h < 2; ++h) {
        t.sc[(b * 2 + h) * t.R + r] = 0;
        t.scf[(b * 2 + h) * t.R + r] = 0.0f;
      }
      t.scc[b * t.R + r] = 0;
    }
}

// Sum of 8 int32 vectors' lanes: result lane i = horizontal sum of p[i].
inline __m256i reduce8_epi32(const __m256i p[8]) {
  const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
  const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
  const __m256i a = _mm256_hadd_epi32(h01, h23), b = _mm256_hadd_epi32(h45, h67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

// Transpose 8 rows x 8 dwords: out[g] lane r = in[r] lane g.
inline void transpose8_epi32(const __m256i in[8], __m256i out[8]) {
  __m256i t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(in[2 * i], in[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(in[2 * i], in[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // i = 0: rows 0..3, i = 1: rows 4..7
    s[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);  // g0 | g4
    s[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);  // g1 | g5
    s[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);  // g2 | g6
    s[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);  // g3 | g7
  }
  for (int g = 0; g < 4; ++g) {
    out[g] = _mm256_permute2x128_si256(s[g], s[4 + g], 0x20);
    out[g + 4] = _mm256_permute2x128_si256(s[g], s[4 + g], 0x31);
  }
}

// Per-token block sums of the activation codes, for the offset correction of the row-lane kernels:
//   xs[t*nb + b] = int16 pair (sum of qs[0..15], sum of qs[16..31])
inline void act_half_sums(const ActQ8* x, int64_t x_stride, int64_t n_tok, int64_t nb, int32_t* xs) {
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t * x_stride + b].qs));
      const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16);  // 8 lanes of 4
      const __m128i h = _mm_hadd_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      const __m128i q = _mm_hadd_epi32(h, h);  // lanes: sum 0..15, sum 16..31
      xs[t * nb + b] = pair16(_mm_cvtsi128_si32(q), _mm_extract_epi32(q, 1));
    }
}


// ---- element-lane GEMV for the legacy types, straight from the weight blocks ---------------------
// Integer dot policies: prep(x) once per activation block, dot(codes, x, prep) -> 8 int32 partial sums
// of the block (how the 32 products are split over lanes does not matter: the sum is exact).
template <int kOff>
struct DotMaddubs {  // unsigned codes (code + kOff): maddubs pair sums, offset removed in int16
  static __m256i prep(__m256i x) { return kOff ? _mm256_maddubs_epi16(_mm256_set1_epi8(char(kOff)), x) : x; }
  static __m256i dot(__m256i u, __m256i x, __m256i ox) {
    __m256i p = _mm256_maddubs_epi16(u, x);
    if (kOff) p = _mm256_sub_epi16(p, ox);
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
  }
};
struct DotSigned {  // signed codes (Q8_0): maddubs(|c|, sign(x, c)); |pair| <= 2*128*127 fits int16
  static __m256i prep(__m256i x) { return x; }
  static __m256i dot(__m256i c, __m256i x, __m256i) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(c), _mm256_sign_epi8(x, c)), _mm256_set1_epi16(1));
  }
};

inline void store8_rows(float* y, __m256 v, int nr) {
  if (nr >= 8) {
    _mm256_storeu_ps(y, v);
  } else {
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    for (int r = 0; r < nr; ++r) y[r] = tmp[r];
  }
}

// Row pointers of an 8-row tile (rows past nr repeat row 0, so loads stay inside the matrix) and
// their byte offsets from w0 as gather indices.
inline __m256i rows8_setup(const uint8_t* w0, size_t row_bytes, int nr, const uint8_t* rp[8]) {
  alignas(32) int32_t off[8];
  for (int r = 0; r < 8; ++r) {
    const size_t rr = size_t(r < nr ? r : 0);
    rp[r] = w0 + rr * row_bytes;
    off[r] = int32_t(rr * row_bytes);
  }
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(off));
}

// Rows r0 .. r0+nr-1 (nr <= 8, w0 = row r0) against one token; lanes = rows (rows past nr repeat
// row r0 and are not stored). The fp16 d (and m) of the 8 rows' block b come in with one gather of
// the block's first dword: d in its low half, m (Q4_1/Q5_1) in its high half.
template <class Dec, class Dot>
void gemv_fused8(const uint8_t* w0, size_t row_bytes, int nr, int64_t nb, const ActQ8* xt, float* yt) {
  const uint8_t* rp[8];
  const __m256i offs = rows8_setup(w0, row_bytes, nr, rp);
  const __m256i lo16 = _mm256_set1_epi32(0xFFFF);
  const size_t ahead = 8 * row_bytes;
  __m256 acc = _mm256_setzero_ps(), summ = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    // Eight strided row streams defeat the hardware prefetcher on cold weights: fetch the same
    // position of the next 8 rows (the next call's tile) one tile ahead; prefetches never fault.
    for (int r = 0; r < 8; ++r) _mm_prefetch(reinterpret_cast<const char*>(rp[r] + b * Dec::kBB + ahead), _MM_HINT_T0);
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt[b].qs));
    const __m256i pre = Dot::prep(x);
    __m256i p[8];
    for (int r = 0; r < 8; ++r) p[r] = Dot::dot(Dec::codes(rp[r] + b * Dec::kBB), x, pre);
    const __m256 pf = _mm256_cvtepi32_ps(reduce8_epi32(p));
    const __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(w0 + b * Dec::kBB), offs, 1);
    const __m256i pk = _mm256_permute4x64_epi64(_mm256_packus_epi32(_mm256_and_si256(g, lo16), _mm256_srli_epi32(g, 16)),
                                                _MM_SHUFFLE(3, 1, 2, 0));  // [d0..d7 | m0..m7] as fp16
    const __m256 d = _mm256_cvtph_ps(_mm256_castsi256_si128(pk));
    acc = _mm256_fmadd_ps(pf, _mm256_mul_ps(d, _mm256_set1_ps(xt[b].d)), acc);
    if (Dec::kMin) summ = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(pk, 1)), _mm256_set1_ps(xt[b].s), summ);
  }
  store8_rows(yt, Dec::kMin ? _mm256_add_ps(acc, summ) : acc, nr);
}

// ---- Q6_K GEMV straight from the blocks (decode, one token), shared skeleton ------------------
// Rows r0..r0+nr-1 (nr <= 8; rows past nr repeat row r0) against one token; returns the 8 row sums
// (lanes = rows) for the caller to store. Per 32-element block j and row, the ISA's Block::run<J>
// forms the exact integer dot of the unsigned codes q6 (0..63, from q6_codes) with x, reduces the
// 8 rows to H0 (elements 0..15) | H1 (16..31) per row, takes the code offset 32 off after the tree
// (xo = 32 * the 16-code sums of the block, from q6k_act_offsets), and accumulates
// P_b = H0 * sc[2j] + H1 * sc[2j+1] (exact in float: products < 2^24) in THE ORDER
// acc = fma(float(P_b), d * x[b].d, acc). The scales and d of the 8 rows come in once per super-block,
// transposed from plain loads (q6k_scales_rows8). Prefetch, 210 bytes of the next tile (8 * row_bytes
// contiguous bytes) per block step, in an order chosen by tile size: a small tile (<= 16 KB, e.g. the
// head 151936x1536, 10 KB) is swept in address order, so it arrives at the rate this tile is read;
// a large one (ffn_down 1536x8960, 59 KB) row by row at the position being read, which keeps every
// line one tile ahead (a sweep would fetch the first rows a whole tile early, past L1, and the last
// ones only 1/8 tile early: 11-12 instead of 13-15 GB/s there). On the head the row-by-row order ran
// at 9-11 GB/s (1 thread) where the sweep reaches 12-15. One burst of all 32 lines at the start of
// each super-block was slower still (~6).
inline __m256i q6_codes(const uint8_t* blk, int h, int q, __m256i m4, __m256i m30) {
  const __m256i src = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h + 32 * (q % 2)));
  const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
  const __m256i lo = (q / 2) ? _mm256_and_si256(_mm256_srli_epi16(src, 4), m4) : _mm256_and_si256(src, m4);
  __m256i hi;  // (qh >> 2q) & 3 at bits 4..5: bits a 16-bit shift moves across a byte are masked off
  switch (q) {
    case 0: hi = _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30); break;
    case 1: hi = _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30); break;
    case 2: hi = _mm256_and_si256(hb, m30); break;
    default: hi = _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30); break;
  }
  return _mm256_or_si256(lo, hi);
}

// Per call, not per row: xo[b] = 32 * (sum of codes 0..15 of block b) in lanes 0..3, 32 * (sum of codes 16..31) in lanes 4..7
inline void q6k_act_offsets(const ActQ8* xt, int64_t nb, __m256i* xo) {
  const __m256i c32 = _mm256_set1_epi8(32), ones16 = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt[b].qs));
    const __m256i m = _mm256_madd_epi16(_mm256_maddubs_epi16(c32, x), ones16);
    const __m256i t = _mm256_hadd_epi32(m, m);
    _mm256_storeu_si256(xo + b, _mm256_hadd_epi32(t, t));
  }
}

// H0 | H1 of rows 0..3 in a and rows 4..7 in c (offset already off) -> acc += P_b * dxd
inline void q6k_accumulate(__m256i a, __m256i c, __m256 S0, __m256 S1, __m256 dxd, __m256& acc) {
  const __m256 H0 = _mm256_cvtepi32_ps(_mm256_permute2x128_si256(a, c, 0x20));
  const __m256 H1 = _mm256_cvtepi32_ps(_mm256_permute2x128_si256(a, c, 0x31));
  acc = _mm256_fmadd_ps(_mm256_fmadd_ps(H0, S0, _mm256_mul_ps(H1, S1)), dxd, acc);
}

template <class Block, int J>
inline void q6k_step(const uint8_t* const* rp, size_t sbo, const uint8_t* pf, const ActQ8* xb, const __m256i* ob,
                     const __m256* S, __m256 d, __m256& acc) {
  for (int l = 0; l < 210; l += 64) _mm_prefetch(reinterpret_cast<const char*>(pf + l), _MM_HINT_T0);
  Block::template run<J>(rp, sbo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb[J].qs)),
                         _mm256_loadu_si256(ob + J), S[2 * J], S[2 * J + 1], _mm256_mul_ps(d, _mm256_set1_ps(xb[J].d)),
                         acc);
}

// The scales and d of super-block sbo of the 8 rows, transposed to lanes = rows: g[m] lane r = the
// dword scales[4m .. 4m+3] of row r, d lane r = its fp16 d as float. The tail bytes 194..209
// (scales[2..15], d) of two rows per vector and a 4x4 dword transpose per 128-bit lane replace five
// dword gathers per super-block, which cost a fifth of the kernel's time; loads stay inside the block.
inline void q6k_scales_rows8(const uint8_t* const* rp, size_t sbo, __m256i g[4], __m256* d) {
  __m256i a[4], b[4];
  for (int r = 0; r < 4; ++r) {
    a[r] = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(rp[r + 4] + sbo + 192),
                               reinterpret_cast<const __m128i*>(rp[r] + sbo + 192));
    b[r] = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(rp[r + 4] + sbo + 194),
                               reinterpret_cast<const __m128i*>(rp[r] + sbo + 194));
  }
  const __m256i t0 = _mm256_unpacklo_epi32(a[0], a[1]), t1 = _mm256_unpackhi_epi32(a[0], a[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(a[2], a[3]), t3 = _mm256_unpackhi_epi32(a[2], a[3]);
  g[0] = _mm256_unpacklo_epi64(t0, t2);
  g[1] = _mm256_unpackhi_epi64(t0, t2);
  g[2] = _mm256_unpacklo_epi64(t1, t3);
  g[3] = _mm256_unpackhi_epi64(t1, t3);
  // dword 3 of b = bytes 206..209, d in its high half
  const __m256i u = _mm256_unpackhi_epi64(_mm256_unpackhi_epi32(b[0], b[1]), _mm256_unpackhi_epi32(b[2], b[3]));
  const __m256i dh = _mm256_srli_epi32(u, 16);
  *d = _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(dh, dh), _MM_SHUFFLE(3, 1, 2, 0))));
}

#ifndef LUTLLM_Q6K_SWEEP_MAX
#define LUTLLM_Q6K_SWEEP_MAX 16384
#endif
constexpr size_t kQ6kSweepMaxTile = LUTLLM_Q6K_SWEEP_MAX;  // bytes of 8 rows prefetched in address order

template <class Block>
__m256 gemv_q6k_rows8(const uint8_t* w0, size_t row_bytes, int nr, int64_t nb, const ActQ8* xt, const __m256i* xo) {
  const uint8_t* rp[8];
  rows8_setup(w0, row_bytes, nr, rp);
  // prefetch order by tile size (see above): small tiles in address order, large ones row by row
  const bool sweep = 8 * row_bytes <= kQ6kSweepMaxTile;
  const uint8_t* next_tile = w0 + 8 * row_bytes;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb / 8; ++i) {
    const size_t sbo = size_t(i) * 210;
    __m256i gs[4];
    __m256 d;
    q6k_scales_rows8(rp, sbo, gs, &d);
    __m256 S[16];  // int8 scales of the 8 rows as floats, sub-block order
    for (int m = 0; m < 4; ++m) {
      const __m256i g = gs[m];
      S[4 * m + 0] = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(g, 24), 24));
      S[4 * m + 1] = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(g, 16), 24));
      S[4 * m + 2] = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(g, 8), 24));
      S[4 * m + 3] = _mm256_cvtepi32_ps(_mm256_srai_epi32(g, 24));
    }
    const ActQ8* xb = xt + i * 8;
    const __m256i* ob = xo + i * 8;
    // block step J prefetches 210 bytes of the next tile (rows r0+8 .. r0+15): in address order
    // (1680 contiguous bytes per super-block, as much as it reads), or row J's super-block i
    const uint8_t* pf = next_tile + 8 * sbo;
    auto at = [&](int j) { return sweep ? pf + j * 210 : rp[j] + sbo + 8 * row_bytes; };
    q6k_step<Block, 0>(rp, sbo, at(0), xb, ob, S, d, acc);
    q6k_step<Block, 1>(rp, sbo, at(1), xb, ob, S, d, acc);
    q6k_step<Block, 2>(rp, sbo, at(2), xb, ob, S, d, acc);
    q6k_step<Block, 3>(rp, sbo, at(3), xb, ob, S, d, acc);
    q6k_step<Block, 4>(rp, sbo, at(4), xb, ob, S, d, acc);
    q6k_step<Block, 5>(rp, sbo, at(5), xb, ob, S, d, acc);
    q6k_step<Block, 6>(rp, sbo, at(6), xb, ob, S, d, acc);
    q6k_step<Block, 7>(rp, sbo, at(7), xb, ob, S, d, acc);
  }
  return acc;
}

}  // namespace
}  // namespace lutllm
