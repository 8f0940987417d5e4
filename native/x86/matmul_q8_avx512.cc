// AVX-512 (F/BW/VL/DQ + VNNI) matmuls of quantized weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
// Q6_K) with ActQ8 activations, bit-exact with native/ref/matmul_q8.cc (THE ORDER there). Not for floats.
//
// Same structure as matmul_q8_avx2.cc with a tile of 16 rows and vpdpbusd (u8 x s8 -> int32) doing the
// integer dot. Codes are stored unsigned (code + kOff; Q8_0 as c ^ 0x80 = c + 128), and the offset is
// removed by starting the int32 accumulator at -kOff * sum(xq).
//  * n_tok < kRowLaneMinTok: element lanes, ymm (256-bit vpdpbusd runs at the 512-bit MAC rate on the
//    cores we target), 8 rows reduced together per half tile.
//  * otherwise: row lanes, zmm = 4 codes of each of the 16 rows, activation dword broadcast.
// Integer sub-scales (K-quants) are applied as exact float products float(A) * float(mult): every such
// product and the Q6_K sum of two of them stay below 2^24, so they equal float(P) of the ref.
// GCC 12 flags its own AVX-512 intrinsic headers (_mm512_undefined_*) with -Wmaybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "q8_tile_x86.h"

#include <type_traits>

#include "lutllm/kernel_decls.h"

namespace lutllm {
namespace {

constexpr int kR = 16;             // rows per tile = lanes of one zmm float vector
constexpr int kRowLaneMinTok = 2;  // n_tok at which the row-lane (prefill) path takes over

thread_local Scratch t_scratch;

inline uint32_t load_u32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline __mmask16 row_mask(int nr) { return __mmask16((1u << nr) - 1u); }
inline __mmask8 row_mask8(int nr) { return nr <= 0 ? __mmask8(0) : nr >= 8 ? __mmask8(0xFF) : __mmask8((1u << nr) - 1u); }

// vpdpbusd starting from -kOff * (lane sums of x): the 8 int32 lanes are the block's exact partial sums
template <int kOff>
struct DotVnni {
  static __m256i prep(__m256i x) {
    if (!kOff) return _mm256_setzero_si256();
    return _mm256_sub_epi32(_mm256_setzero_si256(),
                            _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(char(kOff)), x));
  }
  static __m256i dot(__m256i u, __m256i x, __m256i init) { return _mm256_dpbusd_epi32(init, u, x); }
};

// ---- element lanes: one token against 8 rows (half h of the tile) ----------------------------
template <class Dec>
void gemv_half(const Tile& t, int h, const ActQ8* xt, float* yt, int nr) {
  const int rb = 8 * h;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < t.nb; ++b) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt[b].qs));
    __m256i p[8];
    if (Dec::kMult != Mult::HALVES) {
      __m256i init = _mm256_setzero_si256();
      if (Dec::kOff)
        init = _mm256_sub_epi32(init, _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(char(Dec::kOff)), x));
      for (int r = 0; r < 8; ++r)
        p[r] = _mm256_dpbusd_epi32(init, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.u + (b * kR + rb + r) * 32)), x);
    } else {
      const __m256i ox = _mm256_maddubs_epi16(_mm256_set1_epi8(char(Dec::kOff)), x);
      for (int r = 0; r < 8; ++r) {
        const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.u + (b * kR + rb + r) * 32));
        const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(u, x), ox);
        const __m256i mult = _mm256_inserti128_si256(_mm256_set1_epi32(t.sc[(b * 2) * kR + rb + r]),
                                                     _mm_set1_epi32(t.sc[(b * 2 + 1) * kR + rb + r]), 1);
        p[r] = _mm256_madd_epi16(p16, mult);
      }
    }
    __m256 pf = _mm256_cvtepi32_ps(reduce8_epi32(p));
    if (Dec::kMult == Mult::UNIFORM) pf = _mm256_mul_ps(pf, _mm256_loadu_ps(t.scf + (b * 2) * kR + rb));  // exact
    const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(t.D + b * kR + rb), _mm256_set1_ps(xt[b].d));
    acc = _mm256_fmadd_ps(pf, s, acc);
  }
  if (Dec::kMin) {
    __m256 summ = _mm256_setzero_ps();
    for (int64_t b = 0; b < t.nb; ++b)
      summ = _mm256_fmadd_ps(_mm256_loadu_ps(t.M + b * kR + rb), _mm256_set1_ps(xt[b].s), summ);
    acc = _mm256_add_ps(acc, summ);
  }
  _mm256_mask_storeu_ps(yt + rb, row_mask8(nr - rb), acc);
}

// ---- Q6_K GEMV straight from the blocks (decode, one token): gemv_q6k_rows8 in q8_tile_x86.h ----
// The integer dot here is vpdpbusd: per 32-element block and row, dpbusd(0, q6, x) gives 8 int32 sums
// of 4 elements (lanes 0..3: elements 0..15, lanes 4..7: 16..31); two phaddd levels leave H0 | H1 of
// 4 rows per vector. The scalar twin's exact integers. Not timed here (no AVX-512 on the bench machine).
struct Q6kBlockDpbusd {
  template <int J>
  static void run(const uint8_t* const* rp, size_t sbo, __m256i x, __m256i xo, __m256 S0, __m256 S1, __m256 dxd,
                  __m256& acc) {
    constexpr int h = J / 4, q = J % 4;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    __m256i p[8];
    for (int r = 0; r < 8; ++r)
      p[r] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q6_codes(rp[r] + sbo, h, q, m4, m30), x);
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    q6k_accumulate(_mm256_sub_epi32(_mm256_hadd_epi32(h01, h23), xo),  // rows 0..3
                   _mm256_sub_epi32(_mm256_hadd_epi32(h45, h67), xo),  // rows 4..7
                   S0, S1, dxd, acc);
  }
};

void gemv_q6k_fused8(const uint8_t* w0, size_t row_bytes, int nr, int64_t nb, const ActQ8* xt, const __m256i* xo,
                     float* yt) {
  _mm256_mask_storeu_ps(yt, row_mask8(nr), gemv_q6k_rows8<Q6kBlockDpbusd>(w0, row_bytes, nr, nb, xt, xo));
}

// ---- row lanes ---------------------------------------------------------------------------------
// uT[(b*8 + g)*64 + 4r + i] = code 4g + i of tile row r (0..15), block b.
inline void transpose_tile16(const Tile& t, uint8_t* uT) {
  for (int64_t b = 0; b < t.nb; ++b)
    for (int h = 0; h < 2; ++h) {
      __m256i in[8], out[8];
      for (int r = 0; r < 8; ++r)
        in[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.u + (b * kR + 8 * h + r) * 32));
      transpose8_epi32(in, out);
      for (int g = 0; g < 8; ++g) store32(uT + (b * 8 + g) * 64 + 32 * h, out[g]);
    }
}

inline int32_t lo16(int32_t pr) { return int16_t(pr & 0xFFFF); }
inline int32_t hi16(int32_t pr) { return int16_t(uint32_t(pr) >> 16); }

template <class Dec, int NT>
void rowlane_chunk(const Tile& t, const uint8_t* uT, const ActQ8* const* xt, const int32_t* const* xs,
                   float* const* yt, int nr) {
  constexpr bool kHalves = Dec::kMult == Mult::HALVES;
  __m512 acc[NT];
  for (int j = 0; j < NT; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < t.nb; ++b) {
    __m512i a0[NT], a1[NT];
    for (int j = 0; j < NT; ++j) {
      const int32_t pr = xs[j][b];
      if (kHalves) {
        a0[j] = _mm512_set1_epi32(-Dec::kOff * lo16(pr));
        a1[j] = _mm512_set1_epi32(-Dec::kOff * hi16(pr));
      } else {
        a0[j] = _mm512_set1_epi32(-Dec::kOff * (lo16(pr) + hi16(pr)));
        a1[j] = a0[j];
      }
    }
    for (int g = 0; g < 8; ++g) {
      const __m512i w = _mm512_loadu_si512(uT + (b * 8 + g) * 64);
      for (int j = 0; j < NT; ++j) {
        const __m512i xb = _mm512_set1_epi32(int32_t(load_u32(xt[j][b].qs + 4 * g)));
        if (kHalves && g >= 4) a1[j] = _mm512_dpbusd_epi32(a1[j], w, xb);
        else a0[j] = _mm512_dpbusd_epi32(a0[j], w, xb);
      }
    }
    const __m512 dw = _mm512_loadu_ps(t.D + b * kR);
    for (int j = 0; j < NT; ++j) {
      __m512 pf = _mm512_cvtepi32_ps(a0[j]);
      if (Dec::kMult == Mult::UNIFORM) pf = _mm512_mul_ps(pf, _mm512_loadu_ps(t.scf + (b * 2) * kR));
      if (kHalves)  // exact: both products and their sum are integers below 2^24
        pf = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1[j]), _mm512_loadu_ps(t.scf + (b * 2 + 1) * kR),
                             _mm512_mul_ps(pf, _mm512_loadu_ps(t.scf + (b * 2) * kR)));
      acc[j] = _mm512_fmadd_ps(pf, _mm512_mul_ps(dw, _mm512_set1_ps(xt[j][b].d)), acc[j]);
    }
  }
  for (int j = 0; j < NT; ++j) {
    if (Dec::kMin) {
      __m512 summ = _mm512_setzero_ps();
      for (int64_t b = 0; b < t.nb; ++b)
        summ = _mm512_fmadd_ps(_mm512_loadu_ps(t.M + b * kR), _mm512_set1_ps(xt[j][b].s), summ);
      acc[j] = _mm512_add_ps(acc[j], summ);
    }
    _mm512_mask_storeu_ps(yt[j], row_mask(nr), acc[j]);
  }
}

template <class Dec>
void matmul_q8_avx512(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const ActQ8* x,
                      int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  const int64_t nb = k / QK32;
  if (nb == 0 || rows <= 0 || n_tok <= 0) return;
  const bool rowlane = n_tok >= kRowLaneMinTok;
  const size_t tb = tile_bytes(kR, nb), ub = size_t(nb) * 8 * 64;
  uint8_t* base = t_scratch.get(tb + (rowlane ? ub + size_t(n_tok * nb) * 4 + 64 : size_t(nb) * 32));
  Tile t = tile_carve(base, kR, nb);
  uint8_t* uT = base + tb;
  int32_t* xs = reinterpret_cast<int32_t*>(uT + ub);
  if (rowlane) act_half_sums(x, x_stride, n_tok, nb, xs);
  if constexpr (std::is_same<Dec, DecQ6_K>::value) {
    if (!rowlane) {
      __m256i* xo = reinterpret_cast<__m256i*>(uT);  // n_tok == 1 here
      q6k_act_offsets(x, nb, xo);
      for (int64_t r0 = 0; r0 < rows; r0 += 8)
        gemv_q6k_fused8(w + size_t(r0) * row_bytes, row_bytes, int(rows - r0 < 8 ? rows - r0 : 8), nb, x, xo, y + r0);
      return;
    }
  }
  if constexpr (Dec::kFused) {
    if (!rowlane) {
      for (int64_t r0 = 0; r0 < rows; r0 += 8)
        for (int64_t tok = 0; tok < n_tok; ++tok)
          gemv_fused8<Dec, DotVnni<Dec::kOff>>(w + size_t(r0) * row_bytes, row_bytes, int(rows - r0 < 8 ? rows - r0 : 8),
                                               nb, x + tok * x_stride, y + tok * y_stride + r0);
      return;
    }
  }
  for (int64_t r0 = 0; r0 < rows; r0 += kR) {
    const int nr = int(rows - r0 < kR ? rows - r0 : kR);
    decode_tile<Dec>(w, row_bytes, r0, nr, t);
    if (!rowlane) {
      for (int64_t tok = 0; tok < n_tok; ++tok)
        for (int h = 0; h < (nr > 8 ? 2 : 1); ++h) gemv_half<Dec>(t, h, x + tok * x_stride, y + tok * y_stride + r0, nr);
      continue;
    }
    transpose_tile16(t, uT);
    for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
      const ActQ8* xt[4];
      const int32_t* xsp[4];
      float* yt[4];
      const int nt = int(n_tok - t0 < 4 ? n_tok - t0 : 4);
      for (int j = 0; j < nt; ++j) {
        xt[j] = x + (t0 + j) * x_stride;
        xsp[j] = xs + (t0 + j) * nb;
        yt[j] = y + (t0 + j) * y_stride + r0;
      }
      switch (nt) {
        case 4: rowlane_chunk<Dec, 4>(t, uT, xt, xsp, yt, nr); break;
        case 3: rowlane_chunk<Dec, 3>(t, uT, xt, xsp, yt, nr); break;
        case 2: rowlane_chunk<Dec, 2>(t, uT, xt, xsp, yt, nr); break;
        default: rowlane_chunk<Dec, 1>(t, uT, xt, xsp, yt, nr); break;
      }
    }
  }
}

}  // namespace

#define LUTLLM_Q8_AVX512(name, Dec)                                                                  \
  void name(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const ActQ8* x,             \
            int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {                           \
    matmul_q8_avx512<Dec>(w, row_bytes, rows, k, x, x_stride, n_tok, y, y_stride);                   \
  }
LUTLLM_Q8_AVX512(matmul_q4_0_q8__avx512, DecQ4_0)
LUTLLM_Q8_AVX512(matmul_q4_1_q8__avx512, DecQ4_1)
LUTLLM_Q8_AVX512(matmul_q5_0_q8__avx512, DecQ5_0)
LUTLLM_Q8_AVX512(matmul_q5_1_q8__avx512, DecQ5_1)
LUTLLM_Q8_AVX512(matmul_q8_0_q8__avx512, DecQ8_0Xor)
LUTLLM_Q8_AVX512(matmul_q4_K_q8__avx512, DecQxK<false>)
LUTLLM_Q8_AVX512(matmul_q5_K_q8__avx512, DecQxK<true>)
LUTLLM_Q8_AVX512(matmul_q6_K_q8__avx512, DecQ6_K)
#undef LUTLLM_Q8_AVX512

}  // namespace lutllm
