// AVX2 (+FMA, F16C) matmuls of quantized weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)
// with ActQ8 activations, bit-exact with native/ref/matmul_q8.cc (THE ORDER there). Not for floats.
//
// Both paths first decode a tile of 8 weight rows into scratch (q8_tile_x86.h), then:
//  * n_tok < kRowLaneMinTok (decode, GEMV): "element lanes": per row, maddubs + madd give 8 int32
//    partial sums of a block; 8 rows are reduced together into one vector of 8 row sums, and the float
//    steps of THE ORDER run with one lane per row. The legacy types do this straight from the weight
//    blocks (gemv_fused8), Q6_K likewise (gemv_q6k_fused8), the other K-quants from a decoded tile.
//  * otherwise (prefill): "row lanes": the tile is transposed so a vector holds 4 codes of each of the
//    8 rows; each 4-code group is multiplied with the token's 4 activation codes (broadcast), pair
//    sums are accumulated in int16 while they cannot overflow, and the whole tile is reused for every
//    token (weights decoded once per call).
#include "q8_tile_x86.h"

#include <type_traits>

#include "lutllm/kernel_decls.h"

namespace lutllm {
namespace {

constexpr int kR = 8;              // rows per tile = lanes of one float vector
constexpr int kRowLaneMinTok = 2;  // n_tok at which the row-lane (prefill) path takes over

thread_local Scratch t_scratch;

inline uint32_t load_u32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline void store_rows(float* y, __m256 v, int nr) {
  if (nr == kR) {
    _mm256_storeu_ps(y, v);
  } else {
    alignas(32) float tmp[kR];
    _mm256_store_ps(tmp, v);
    for (int r = 0; r < nr; ++r) y[r] = tmp[r];
  }
}

// The integer multiplier vector for maddubs pair sums of tile row r, block b (element lanes).
template <class Dec>
inline __m256i mult_vec(const Tile& t, int64_t b, int r) {
  if (Dec::kMult == Mult::ONE) return _mm256_set1_epi16(1);
  const __m256i m0 = _mm256_set1_epi32(t.sc[(b * 2) * kR + r]);
  if (Dec::kMult == Mult::UNIFORM) return m0;
  return _mm256_inserti128_si256(m0, _mm_set1_epi32(t.sc[(b * 2 + 1) * kR + r]), 1);
}

// offset term: y = acc + sum_b fma(M_b, s_b) in block order (lanes = rows)
template <class Dec>
inline __m256 add_min(const Tile& t, const ActQ8* xt, __m256 acc) {
  if (!Dec::kMin) return acc;
  __m256 summ = _mm256_setzero_ps();
  for (int64_t b = 0; b < t.nb; ++b)
    summ = _mm256_fmadd_ps(_mm256_loadu_ps(t.M + b * kR), _mm256_set1_ps(xt[b].s), summ);
  return _mm256_add_ps(acc, summ);
}

// ---- element lanes: one token against the 8 rows of a tile -----------------------------------
template <class Dec>
void gemv_tile(const Tile& t, const ActQ8* xt, float* yt, int nr) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < t.nb; ++b) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt[b].qs));
    const __m256i ox = Dec::kOff ? _mm256_maddubs_epi16(_mm256_set1_epi8(char(Dec::kOff)), x) : x;
    __m256i p[kR];
    for (int r = 0; r < kR; ++r) {
      const size_t o = size_t(b * kR + r) * 32;
      __m256i xr = x;
      if (Dec::kSigned) xr = _mm256_sign_epi8(x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.ws + o)));
      __m256i p16 = _mm256_maddubs_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.u + o)), xr);
      if (Dec::kOff) p16 = _mm256_sub_epi16(p16, ox);
      p[r] = _mm256_madd_epi16(p16, mult_vec<Dec>(t, b, r));
    }
    const __m256 pf = _mm256_cvtepi32_ps(reduce8_epi32(p));
    const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(t.D + b * kR), _mm256_set1_ps(xt[b].d));
    acc = _mm256_fmadd_ps(pf, s, acc);
  }
  store_rows(yt, add_min<Dec>(t, xt, acc), nr);
}

// ---- row lanes: NT tokens against the 8 rows of a transposed tile ----------------------------
// uT[(b*8 + g)*32 + 4r + i] = code 4g + i of tile row r, block b (wsT likewise for signed codes).
inline void transpose_tile(const Tile& t, uint8_t* uT, int8_t* wsT, bool with_ws) {
  for (int64_t b = 0; b < t.nb; ++b) {
    __m256i in[8], out[8];
    for (int r = 0; r < 8; ++r) in[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.u + (b * kR + r) * 32));
    transpose8_epi32(in, out);
    for (int g = 0; g < 8; ++g) store32(uT + (b * 8 + g) * 32, out[g]);
    if (!with_ws) continue;
    for (int r = 0; r < 8; ++r) in[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.ws + (b * kR + r) * 32));
    transpose8_epi32(in, out);
    for (int g = 0; g < 8; ++g) store32(reinterpret_cast<uint8_t*>(wsT) + (b * 8 + g) * 32, out[g]);
  }
}

template <class Dec>
constexpr int groups_per_i16() {  // 4-code groups whose maddubs pair sums fit int16 when added
  return Dec::kSigned ? 1 : Dec::kUMax <= 15 ? 8 : Dec::kUMax <= 31 ? 4 : 2;
}

template <class Dec, int NT>
void rowlane_chunk(const Tile& t, const uint8_t* uT, const int8_t* wsT, const ActQ8* const* xt,
                   const int32_t* const* xs, float* const* yt, int nr) {
  constexpr int kG = groups_per_i16<Dec>();
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256 acc[NT];
  for (int j = 0; j < NT; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < t.nb; ++b) {
    __m256i a32[NT];
    for (int j = 0; j < NT; ++j) a32[j] = _mm256_setzero_si256();
    for (int g0 = 0; g0 < 8; g0 += kG) {
      __m256i a16[NT];
      for (int g = g0; g < g0 + kG; ++g) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(uT + (b * 8 + g) * 32));
        __m256i ws = w;
        if (Dec::kSigned) ws = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wsT + (b * 8 + g) * 32));
        for (int j = 0; j < NT; ++j) {
          __m256i xb = _mm256_set1_epi32(int32_t(load_u32(xt[j][b].qs + 4 * g)));
          if (Dec::kSigned) xb = _mm256_sign_epi8(xb, ws);
          const __m256i p = _mm256_maddubs_epi16(w, xb);
          a16[j] = g == g0 ? p : _mm256_add_epi16(a16[j], p);
        }
      }
      __m256i mult = ones16;
      if (Dec::kMult == Mult::UNIFORM) mult = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.sc + (b * 2) * kR));
      if (Dec::kMult == Mult::HALVES)
        mult = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.sc + (b * 2 + (g0 >= 4)) * kR));
      for (int j = 0; j < NT; ++j) a32[j] = _mm256_add_epi32(a32[j], _mm256_madd_epi16(a16[j], mult));
    }
    const __m256 dw = _mm256_loadu_ps(t.D + b * kR);
    for (int j = 0; j < NT; ++j) {
      __m256i p = a32[j];
      if (Dec::kOff && Dec::kMult == Mult::ONE) {
        const int32_t pr = xs[j][b];
        const int32_t sum = int16_t(pr & 0xFFFF) + int16_t(uint32_t(pr) >> 16);
        p = _mm256_sub_epi32(p, _mm256_set1_epi32(Dec::kOff * sum));
      }
      if (Dec::kOff && Dec::kMult == Mult::HALVES)
        p = _mm256_sub_epi32(p, _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.scc + b * kR)),
                                                  _mm256_set1_epi32(xs[j][b])));
      const __m256 s = _mm256_mul_ps(dw, _mm256_set1_ps(xt[j][b].d));
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[j]);
    }
  }
  for (int j = 0; j < NT; ++j) store_rows(yt[j], add_min<Dec>(t, xt[j], acc[j]), nr);
}

// ---- Q6_K GEMV straight from the blocks (decode, one token): gemv_q6k_rows8 in q8_tile_x86.h ----
// The integer dot here: p16 = maddubs(q6, x) (|pair| <= 2*63*128 = 16128); phaddw adds pairs of pairs
// of two rows (|sum| <= 32256, no int16 overflow) and pmaddwd with ones, one phaddd level then leaves
// H0 | H1 of 4 rows per vector. Same exact integers as the scalar twin.

struct Q6kBlockMaddubs {
  template <int J>
  static void run(const uint8_t* const* rp, size_t sbo, __m256i x, __m256i xo, __m256 S0, __m256 S1, __m256 dxd,
                  __m256& acc) {
    constexpr int h = J / 4, q = J % 4;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30), ones16 = _mm256_set1_epi16(1);
    __m256i v[4];
    for (int r = 0; r < 8; r += 2) {
      const __m256i pa = _mm256_maddubs_epi16(q6_codes(rp[r] + sbo, h, q, m4, m30), x);
      const __m256i pb = _mm256_maddubs_epi16(q6_codes(rp[r + 1] + sbo, h, q, m4, m30), x);
      v[r / 2] = _mm256_madd_epi16(_mm256_hadd_epi16(pa, pb), ones16);
    }
    q6k_accumulate(_mm256_sub_epi32(_mm256_hadd_epi32(v[0], v[1]), xo),   // rows 0..3
                   _mm256_sub_epi32(_mm256_hadd_epi32(v[2], v[3]), xo),   // rows 4..7
                   S0, S1, dxd, acc);
  }
};

void gemv_q6k_fused8(const uint8_t* w0, size_t row_bytes, int nr, int64_t nb, const ActQ8* xt, const __m256i* xo,
                     float* yt) {
  store_rows(yt, gemv_q6k_rows8<Q6kBlockMaddubs>(w0, row_bytes, nr, nb, xt, xo), nr);
}

template <class Dec>
void matmul_q8_avx2(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const ActQ8* x,
                    int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {
  const int64_t nb = k / QK32;
  if (nb == 0 || rows <= 0 || n_tok <= 0) return;
  const bool rowlane = n_tok >= kRowLaneMinTok;
  const size_t tb = tile_bytes(kR, nb), ub = size_t(nb) * 8 * 32;
  uint8_t* base = t_scratch.get(tb + (rowlane ? 2 * ub + size_t(n_tok * nb) * 4 + 64 : size_t(nb) * 32));
  Tile t = tile_carve(base, kR, nb);
  uint8_t* uT = base + tb;
  int8_t* wsT = reinterpret_cast<int8_t*>(uT + ub);
  int32_t* xs = reinterpret_cast<int32_t*>(uT + 2 * ub);
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
      using Dot = typename std::conditional<Dec::kSigned, DotSigned, DotMaddubs<Dec::kOff>>::type;
      for (int64_t r0 = 0; r0 < rows; r0 += 8)
        for (int64_t tok = 0; tok < n_tok; ++tok)
          gemv_fused8<Dec, Dot>(w + size_t(r0) * row_bytes, row_bytes, int(rows - r0 < 8 ? rows - r0 : 8), nb,
                                x + tok * x_stride, y + tok * y_stride + r0);
      return;
    }
  }
  for (int64_t r0 = 0; r0 < rows; r0 += kR) {
    const int nr = int(rows - r0 < kR ? rows - r0 : kR);
    decode_tile<Dec>(w, row_bytes, r0, nr, t);
    if (!rowlane) {
      for (int64_t tok = 0; tok < n_tok; ++tok) gemv_tile<Dec>(t, x + tok * x_stride, y + tok * y_stride + r0, nr);
      continue;
    }
    transpose_tile(t, uT, wsT, Dec::kSigned);
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
        case 4: rowlane_chunk<Dec, 4>(t, uT, wsT, xt, xsp, yt, nr); break;
        case 3: rowlane_chunk<Dec, 3>(t, uT, wsT, xt, xsp, yt, nr); break;
        case 2: rowlane_chunk<Dec, 2>(t, uT, wsT, xt, xsp, yt, nr); break;
        default: rowlane_chunk<Dec, 1>(t, uT, wsT, xt, xsp, yt, nr); break;
      }
    }
  }
}

}  // namespace

#define LUTLLM_Q8_AVX2(name, Dec)                                                                    \
  void name(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const ActQ8* x,             \
            int64_t x_stride, int64_t n_tok, float* y, int64_t y_stride) {                           \
    matmul_q8_avx2<Dec>(w, row_bytes, rows, k, x, x_stride, n_tok, y, y_stride);                     \
  }
LUTLLM_Q8_AVX2(matmul_q4_0_q8__avx2, DecQ4_0)
LUTLLM_Q8_AVX2(matmul_q4_1_q8__avx2, DecQ4_1)
LUTLLM_Q8_AVX2(matmul_q5_0_q8__avx2, DecQ5_0)
LUTLLM_Q8_AVX2(matmul_q5_1_q8__avx2, DecQ5_1)
LUTLLM_Q8_AVX2(matmul_q8_0_q8__avx2, DecQ8_0Signed)
LUTLLM_Q8_AVX2(matmul_q4_K_q8__avx2, DecQxK<false>)
LUTLLM_Q8_AVX2(matmul_q5_K_q8__avx2, DecQxK<true>)
LUTLLM_Q8_AVX2(matmul_q6_K_q8__avx2, DecQ6_K)
#undef LUTLLM_Q8_AVX2

}  // namespace lutllm
