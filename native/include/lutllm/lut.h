// Packed low-bit weight layout for table-lookup (T-MAC style) matmul, the activation tables, and the
// C++ pack / repack / quantize / unpack functions. Kernels live in native/ref/lut_*.cc and ISA files.
// Header helpers are `static inline` on purpose: ISA leaf files include this header, and a shared
// inline copy compiled with -mavx2 must never be the one the linker keeps for baseline code.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "lutllm/ggml_types.h"

namespace lutllm {

// =============================================================================================
// Weight kinds
//
//   W1..W4   n = 1..4 bit planes. Per (row, group): value = s * q + o      (has_offset = 1)
//                                              or value = s * (q - 2^(n-1)) (has_offset = 0)
//            with q = sum_b 2^b * bit_b in [0, 2^n).
//   TERNARY  BitNet b1.58 {-1, 0, +1} * s, stored as two planes (a, b) with value = s * (a + b - 1):
//            +1 -> (1,1), 0 -> (1,0), -1 -> (0,0). Both planes weigh 1 (not 1 and 2), so with the
//            +-1 tables below the product needs no sum(x) term at all and its table-rounding error
//            is 2/3 of the W2 path's. Why planes and not base-3 (1.6 bits/weight): a 3^k packing
//            cannot index a 16-entry table directly (TL2 needs 2 byte lookups for one exact entry);
//            planes keep one lookup kernel for every kind at 2 bits/weight.
// =============================================================================================
enum class LutKind : int32_t { W1 = 1, W2 = 2, W3 = 3, W4 = 4, TERNARY = 5 };
constexpr int kLutKindCount = 6;  // arrays indexed by int(kind); index 0 unused
static inline int lut_planes(int kind) { return kind == int(LutKind::TERNARY) ? 2 : kind; }
const char* lut_kind_name(int kind);  // "w1".."w4", "wt"

// =============================================================================================
// Packed weight layout (one buffer serves every ISA; weights are streamed once, front to back)
//
// Rows are padded to row blocks of 16 (kLutRows); padding rows hold q = 0, s = 0, o = 0.
// K is split into groups of G weights (G = 16, 32, 64 or 128).
//
//   buffer    = [row block 0][row block 1]...                       (ceil(rows / 16) blocks)
//   row block = [group block 0][group block 1]...[group block K/G-1]
//   group block (16 rows x G weights):
//     pair tiles    for pp in 0 .. n/2-1 (planes 2pp, 2pp+1), for quad q in 0 .. G/4-1: one PT
//     single tiles  only for odd n (plane n-1): for chunk c in 0 .. G/C-1 (C = min(G, 32) weights),
//                   for i in 0 .. C/8-1: one ST (4 per chunk of 32, 2 for G = 16)
//     scales        16 x fp16 or 16 x fp32 (scale_bytes 2 / 4), row order
//     offsets       16 x the same, row order; only when has_offset
//
// K-quant sub-scales (scale_bytes kLutScaleKQ or kLutScaleKQ4; K % 256 == 0): the exact and compact
// home of GGUF Q4_K / Q3_K / Q2_K: value = d*sc*q - dmin*m (has_offset = 1) or d*sc*(q - 2^(n-1))
// (has_offset = 0) with fp16 d, dmin per 256 weights and small integer sc, m per group. The row
// block is split into super-blocks of 256 weights:
//   row block   = [super-block 0][super-block 1]...[super-block K/256-1]
//   super-block = header: 16 x fp16 d, then (has_offset) 16 x fp16 dmin, row order (64 or 32 B)
//                 then its 256/G group blocks, each: tiles as above, then its sub-scales:
//     kLutScaleKQ,  has_offset 1:  16 x uint8 sc, then 16 x uint8 m                (32 B)
//     kLutScaleKQ,  has_offset 0:  16 x int8 sc (signed: the symmetric form)       (16 B)
//     kLutScaleKQ4, has_offset 1:  16 bytes, row r's byte = sc | m << 4 (4 bits each; 16 B)
//   per (row, group):  value = float(d) * sc * q - float(dmin) * m   (or float(d) * sc * (q - 2^(n-1)))
// The kernels keep sc, m as integers and sum them into the super-block epilogue (see "Shared math"
// below); lut_group_scales / lut_unpack form s = float(d) * float(sc), o = -(float(dmin) * float(m)),
// exact in fp32 (11-bit x 8-bit mantissas), so the fp32-scale layout decodes to the same weights.
// Bytes per 16 rows x 256 and bits/weight (GGUF's own size in brackets):
//   Q4_K -> W4 g32 KQ        64 + 8 x (256 + 32)  = 2368 B  4.625  [4.5]   (fp32 s, o: 6.0)
//   Q2_K -> W2 g16 KQ4       64 + 16 x (64 + 16)  = 1344 B  2.625  [2.625] (fp32 s, o: 6.0)
//   Q3_K -> W3 g16 KQ sym    32 + 16 x (96 + 16)  = 1824 B  3.5625 [3.4375] (fp32 s: 5.0)
// The header comes first, so weights still stream front to back. lut_group_addr() / lut_group_at()
// below are the one place that knows where group g starts.
//
// A tile is 16 bytes = 32 four-bit table indices that all refer to one activation quad
// (4 consecutive k) per nibble half; nibble bit i (i = 0..3) is the plane bit of weight k = 4q + i.
//   PT(pp, q), byte j = 0..15:
//     low nibble  -> row j/2,     plane 2pp + (j & 1), quad q
//     high nibble -> row 8 + j/2, plane 2pp + (j & 1), quad q
//     so after one table lookup, byte pairs (2i, 2i+1) hold the two planes of one row; x86 folds
//     them with pmaddubsw (multipliers 2^b, 2^(b+1)) and NEON with padal + sra.
//   ST(c, i), byte j = 0..15 (row j, plane n-1), with H = C/8 (4, or 2 for G = 16):
//     low nibble  -> quad 2Hc + i,  high nibble -> quad 2Hc + i + H
//     so the low halves of 1/2/4 consecutive STs use tables of consecutive quads, as do the highs
//     (G = 16: ST(0) low quad 0, high quad 2; ST(1) low quad 1, high quad 3; one AVX2 load holds
//     both, AVX-512 reads them as one 256-bit half).
//
// Consecutive tiles of one kind use consecutive quads' tables, which are stored contiguously
// (LutAct::tab): NEON consumes one tile per vector, AVX2 two and AVX-512 four, each with one plain
// 16/32/64-byte table load and no shuffles of the tables.
//
// Bytes per group block = 2*G*n (tiles) + its scales: 16*scale_bytes*(1 + has_offset) for fp16 / fp32
// and kLutScaleKQ, 16 for kLutScaleKQ4; k-quant adds a 32*(1 + has_offset)-byte header per super-block.
// Nothing shape-specific is baked in: any rows, any K that is a multiple of G (k-quant: of 256).
// =============================================================================================
constexpr int kLutRows = 16;       // rows per row block
constexpr int kLutTileBytes = 16;  // one table's worth of indices

struct LutTile {
  uint8_t idx[kLutTileBytes];
};
static_assert(sizeof(LutTile) == 16, "LutTile is one 128-bit vector");

// Format of one packed tensor. Part of the packed buffer's meaning; store it beside the buffer.
struct LutFormat {
  int32_t kind;         // LutKind
  int32_t group;        // G
  int32_t scale_bytes;  // scale encoding: 2 = fp16 scales/offsets, 4 = fp32, 1 / 3 = k-quant sub-scales (below)
  int32_t has_offset;   // 0 or 1 (ternary: 0)
};
static_assert(sizeof(LutFormat) == 16, "LutFormat size");

// A packed weight matrix (rows x k); data points at byte 0 of row block 0 (any alignment).
struct LutWeights {
  const uint8_t* data;
  int64_t rows;
  int64_t k;
  LutFormat fmt;
};
static_assert(sizeof(LutWeights) == 40, "LutWeights size");

// Scale encodings (LutFormat::scale_bytes). The fp values give the bytes per scale; the k-quant
// codes are names (the byte counts follow from lut_scale_block_bytes / lut_super_header_bytes).
constexpr int32_t kLutScaleKQ = 1;   // k-quant 8-bit sub-scales: uint8 sc, m (has_offset) or int8 sc per group
constexpr int32_t kLutScaleF16 = 2;  // fp16 s (and o) per group
constexpr int32_t kLutScaleKQ4 = 3;  // k-quant 4-bit sub-scales: one byte sc | m << 4 per group (has_offset 1)
constexpr int32_t kLutScaleF32 = 4;  // fp32 s (and o) per group
constexpr int kLutSuperK = 256;      // weights per k-quant super-block (per row)

static inline bool lut_is_kq(const LutFormat& f) { return f.scale_bytes == kLutScaleKQ || f.scale_bytes == kLutScaleKQ4; }
static inline int64_t lut_row_blocks(int64_t rows) { return (rows + kLutRows - 1) / kLutRows; }
static inline size_t lut_tile_bytes_per_group(const LutFormat& f) { return size_t(2) * f.group * lut_planes(f.kind); }
// Quads per single-tile chunk (C/4 in the layout above): 8, or 4 for G = 16.
static inline int lut_st_chunk_quads(int group) { return group < 32 ? group / 4 : 8; }
// Bytes of one group block's scales (and offsets / sub-scales), after its tiles.
static inline size_t lut_scale_block_bytes(const LutFormat& f) {
  if (f.scale_bytes == kLutScaleKQ4) return size_t(kLutRows);
  return size_t(kLutRows) * f.scale_bytes * (1 + f.has_offset);
}
// k-quant super-block header: 16 fp16 d, and 16 fp16 dmin with has_offset.
static inline size_t lut_super_header_bytes(const LutFormat& f) { return size_t(kLutRows) * 2 * (1 + f.has_offset); }
static inline size_t lut_group_block_bytes(const LutFormat& f) { return lut_tile_bytes_per_group(f) + lut_scale_block_bytes(f); }
// log2 of the groups per k-quant super-block (256 / G, G a power of two in 16..128)
static inline int lut_kq_group_shift(const LutFormat& f) { return f.group == 16 ? 4 : f.group == 32 ? 3 : f.group == 64 ? 2 : 1; }
static inline size_t lut_super_block_bytes(const LutFormat& f) {
  return lut_super_header_bytes(f) + (size_t(1) << lut_kq_group_shift(f)) * lut_group_block_bytes(f);
}
static inline size_t lut_row_block_bytes(const LutFormat& f, int64_t k) {
  if (lut_is_kq(f)) return size_t(k / kLutSuperK) * lut_super_block_bytes(f);
  return size_t(k / f.group) * lut_group_block_bytes(f);
}
static inline size_t lut_packed_bytes(const LutFormat& f, int64_t rows, int64_t k) {
  return size_t(lut_row_blocks(rows)) * lut_row_block_bytes(f, k);
}
// Where group g's bytes sit in a row block, one branch-free formula for every encoding (kernels
// build it once per call; lut_group_offset is the same for one-off use):
//   group block of g = (g >> shift) * super_bytes + header_bytes + (g & mask) * group_bytes
//   its scales       = that + tile_bytes
//   k-quant header   = (g >> shift) * super_bytes
// Without k-quant sub-scales shift = 63 (g >> 63 = 0), mask = all ones, no header: g * group_bytes.
// kq says how the sub-scales after the tiles read (LutKq); kernels branch on it once per group.
enum LutKq : int32_t { kLutKqNone = 0, kLutKqU8 = 1, kLutKqS8 = 2, kLutKqNibble = 3 };
struct LutGroupAddr {
  size_t group_bytes, super_bytes, header_bytes, tile_bytes;
  int64_t mask;
  int32_t shift;
  int32_t kq;  // LutKq: none; uint8 sc, m; int8 sc (no offset); nibbles sc | m << 4
};
static inline int32_t lut_kq_kind(const LutFormat& f) {
  if (f.scale_bytes == kLutScaleKQ4) return kLutKqNibble;
  if (f.scale_bytes == kLutScaleKQ) return f.has_offset ? kLutKqU8 : kLutKqS8;
  return kLutKqNone;
}
static inline LutGroupAddr lut_group_addr(const LutFormat& f) {
  const bool kq = lut_is_kq(f);
  const int sh = kq ? lut_kq_group_shift(f) : 63;
  return LutGroupAddr{lut_group_block_bytes(f), kq ? lut_super_block_bytes(f) : 0, kq ? lut_super_header_bytes(f) : 0,
                      lut_tile_bytes_per_group(f), kq ? (int64_t(1) << sh) - 1 : ~int64_t(0), sh, lut_kq_kind(f)};
}
static inline size_t lut_group_at(const LutGroupAddr& a, int64_t g) {
  return size_t(g >> a.shift) * a.super_bytes + a.header_bytes + size_t(g & a.mask) * a.group_bytes;
}
static inline size_t lut_header_at(const LutGroupAddr& a, int64_t g) { return size_t(g >> a.shift) * a.super_bytes; }
// Byte offset of group g's block (its tiles; its scales follow them) from the start of a row block.
static inline size_t lut_group_offset(const LutFormat& f, int64_t g) { return lut_group_at(lut_group_addr(f), g); }
// K-quant only: byte offset of the header (16 fp16 d[, 16 fp16 dmin]) of the super-block holding group g.
static inline size_t lut_super_header_offset(const LutFormat& f, int64_t g) { return lut_header_at(lut_group_addr(f), g); }
// Worked sizes (16 rows x G): 2-bit g32 fp16 no offset = 128 + 32 B; 4-bit g32 fp32 + offset = 256 + 128 B.
static_assert(2 * 32 * 2 + 16 * 2 == 160, "W2 g32 fp16 group block");
static_assert(2 * 32 * 4 + 16 * 4 * 2 == 384, "W4 g32 fp32+offset group block");
// K-quant per 16 x 256 weights (see the table above), in bits/weight x 10000:
static_assert(64 + 8 * (2 * 32 * 4 + 32) == 2368 && 2368 * 8 * 10000 / (16 * 256) == 46250, "Q4_K: W4 g32 KQ");
static_assert(64 + 16 * (2 * 16 * 2 + 32) == 1600 && 1600 * 8 * 10000 / (16 * 256) == 31250, "W2 g16 KQ (older Q2_K)");
static_assert(64 + 16 * (2 * 16 * 2 + 16) == 1344 && 1344 * 8 * 10000 / (16 * 256) == 26250, "Q2_K: W2 g16 KQ4");
static_assert(32 + 16 * (2 * 16 * 3 + 16) == 1824 && 1824 * 8 * 10000 / (16 * 256) == 35625, "Q3_K: W3 g16 KQ sym");
static_assert(64 + 16 * (2 * 16 * 4 + 32) == 2624 && 2624 * 8 * 10000 / (16 * 256) == 51250, "W4 g16 KQ (older Q3_K)");
static_assert(2 * 16 * 2 + kLutRows == 80 && 2 * 16 * 3 + kLutRows == 112, "g16 group blocks with 16 B sub-scales");

// Empty string if the format and shape are usable, else what is wrong.
std::string lut_check_format(const LutFormat& f, int64_t rows, int64_t k);

// =============================================================================================
// Activation tables (one per activation vector, i.e. per token; built once, shared by every
// layer that reads the same input)
//
//   tab[q*16 + idx] (k/4 x 16 int8): round(e / ts), e = sum_{j<4} (bit j of idx ? +x[4q+j] : -x[4q+j]),
//       e summed in the order j = 0,1,2,3 in fp32; round half to even; tab[15-idx] == -tab[idx].
//   scale[a] (k/ag fp32): ts of activation group a (ag activations) = mx / 127, mx = max over its
//       quads of (|x0|+|x1|) + (|x2|+|x3|); entries are round(e * (127 / mx)), so |tab| <= 127.
//       All-zero group: ts = 0, tab = 0.
//   sum16[i] (k/16 fp32): sum of x[16i .. 16i+15] as a pairwise tree: v[j] += v[j+8] (j < 8), then
//       v[j] += v[j+4], v[j] += v[j+2], v[0] + v[1] (fp32; the order an 8-lane vector reduces in).
// A weight group must not straddle two table scales: ag % G == 0 (ag = G is the most accurate).
// =============================================================================================
struct LutAct {
  const int8_t* tab;
  const float* scale;
  const float* sum16;
  int64_t k;
  int32_t ag;
  int32_t reserved;
};
static_assert(sizeof(LutAct) == 40, "LutAct size");
static inline size_t lut_act_tab_bytes(int64_t k) { return size_t(k) * 4; }  // k/4 tables x 16 B

// =============================================================================================
// Kernel signatures (registered in native/kernels.inc; selected in lutllm::kernels())
//
// Build tables for activation groups [ag_begin, ag_end) of x (k floats, k % ag == 0, ag % 16 == 0).
// Groups are independent: split the range across threads.
using LutBuildFn = void (*)(const float* x, int64_t k, int32_t ag, int64_t ag_begin, int64_t ag_end,
                            int8_t* tab, float* scale, float* sum16);
// y[r] = sum_k W[r,k] x[k] for r in [row_begin, row_end); only those y are written. Row blocks are
// computed whole, so split threads at multiples of 16 to avoid repeated work. Float buffers must be
// 4-byte aligned; weights and tables may sit at any address.
using LutGemvFn = void (*)(const LutWeights* w, const LutAct* a, int64_t row_begin, int64_t row_end, float* y);
// The same for n_tok activation vectors a[0..n_tok): y[t*y_stride + r]. Bit-exact with n_tok GEMVs.
using LutGemmFn = void (*)(const LutWeights* w, const LutAct* a, int64_t n_tok, int64_t row_begin,
                           int64_t row_end, float* y, int64_t y_stride);

// Shared math of every LUT kernel (so that SIMD and scalar agree bit for bit):
//   per (row, group g): I = sum over planes b, quads q of m_b * tab[q][idx_b(row, q)]  (exact int32)
//     m_b = 2^b (W1..W4) or 1 (TERNARY)
//   y = 0; for g in order:  a  = s * (0.5f * ts_g)
//                           y  = fma(a, float(I), y)
//                           (not TERNARY)  c = has_offset ? fma(s, (2^n - 1) / 2, o) : s * -0.5f
//                                          y = fma(c, Sx_g, y)
//   Sx_g = sum16[g*G/16] + sum16[g*G/16 + 1] + ... (left to right, G/16 terms).
// Why: +-1 tables give sum_k q x = 1/2 * sum_b 2^b L_b + (2^n-1)/2 * sum x.
// Integer bounds (|tab| <= 127): |I| <= 127 * (2^n - 1) * G/4 <= 60960 (n = 4, G = 128), exact in
// fp32; SIMD int16 partial sums stay below 32767 (derived in each ISA file).
// Error vs exact float math on the same weights, per row and group (table rounding only):
//   |dy| <= |s| * ts_g * (2^n - 1) * G / 16   (W1..W4),   |s| * ts_g * G / 8   (TERNARY)
//
// K-quant sub-scales (lut_is_kq) use a super-block epilogue instead: integer sums across the groups
// of a span S = min(ag, 256) activations (one table scale, one d), one float step per span and
// row. ag must suit it (lut_act_group_ok: a power of two dividing 256, or a multiple of 256; all
// tokens of one call share ag); lut_act_group picks 256: one float step per super-block.
//   per (row, group g in S): I_g as above;  Qf_g = int32(nearbyint(Sx_g * inv)), inv = ts_S > 0 ? 16.0f / ts_S : 0
//     (Sx_g as above: the group's x sum in units of ts/16, the same for every row)
//     K_g = 16 * I_g + c_n * Qf_g,  c_n = 2^n - 1 (has_offset) or -1 (symmetric: q - 2^(n-1))
//   J = sum_{g in S} sc_g * K_g,  M = sum_{g in S} m_g * Qf_g   (exact int32, in group order)
//   after the last group of S:
//   y = fma(float(d) * (ts_S * 0.03125f), float(J), y);  has_offset: y = fma((-float(dmin)) * (ts_S * 0.0625f), float(M), y)
// Why: sum_k q x = ts/2 * I_g + (2^n - 1)/2 * Sx_g up to table rounding, and Sx_g = ts/16 * Qf_g up to ts/32.
// Integer bounds: |I_g| <= 127 (2^n - 1) G/4, |Sx_g| <= 127 ts G/4 so |Qf_g| <= 16 * 127 G/4, hence
// |K_g| <= 32 * 127 (2^n - 1) G/4 and |J| <= 255 * 32 * 127 * 15 * 64 < 2^30, |M| <= 255 * 16 * 127 * 64 < 2^25:
// no int32 overflow (sc of either sign, |sc| <= 255). float(J) may round (|J| > 2^24): <= 2^-24 |J|.
// Error vs exact float math on the same weights, per row (each table entry is off by <= 1/2 unit,
// Qf_g by <= 1/2 unit of ts/16; ts = ts_S, the table scale of the group's span, >= each ts_g),
// summed over the groups g:
//   has_offset: |dy| <= |d sc_g| ts (2^n - 1) (G/16 + 1/64) + |dmin| m_g ts / 32
//   symmetric:  |dy| <= |d sc_g| ts ((2^n - 1) G/16 + 1/64)
//   W2 g16 (Q2_K): |d sc_g| ts * 3 * (1 + 1/64) + |dmin| m_g ts / 32;  W3 g16 (Q3_K): |d sc_g| ts (7 + 1/64);
//   W4 g32 (Q4_K): |d sc_g| ts * 15 * (2 + 1/64) + |dmin| m_g ts / 32
// (the per-group bound above with ts_S >= ts_g, plus the Qf rounding), and the fp32 rounding of Sx_g.
// Non-k-quant formats (fp16 / fp32 scales, ternary) keep the per-group epilogue above.
static inline int32_t lut_act_group(const LutFormat& f) { return (f.scale_bytes == 1 || f.scale_bytes == 3) ? 256 : f.group; }
// Whether tables with ag activations per scale suit format f: ag % G == 0, and for k-quant also a
// power of two that divides 256 or a multiple of 256 (the float step then comes once per
// min(ag, 256) activations: lut_kq_span_mask).
static inline bool lut_act_group_ok(const LutFormat& f, int64_t ag) {
  if (ag <= 0 || ag % f.group) return false;
  if (f.scale_bytes != 1 && f.scale_bytes != 3) return true;
  return ag % 256 == 0 || (256 % ag == 0 && (ag & (ag - 1)) == 0);
}
// K-quant: groups per float step minus one (a mask: step after group g when (g & mask) == mask).
static inline int64_t lut_kq_span_mask(const LutFormat& f, int64_t ag) { return (ag < 256 ? ag : 256) / f.group - 1; }
static inline float lut_group_sum(const float* sum16, int64_t g, int group) {
  const int64_t i0 = g * (group / 16);
  float s = sum16[i0];
  for (int i = 1; i < group / 16; ++i) s = s + sum16[i0 + i];
  return s;
}
// Qf_g of the k-quant epilogue: sx = Sx_g, ts = the table scale of the group's span.
// lut_qf_scale(ts) is the factor for every group of one span (callers may compute it once per span).
static inline float lut_qf_scale(float ts) { return ts > 0.0f ? 16.0f / ts : 0.0f; }
static inline int32_t lut_group_qf_scaled(float sx, float inv) { return int32_t(__builtin_nearbyintf(sx * inv)); }
static inline int32_t lut_group_qf(float sx, float ts) { return lut_group_qf_scaled(sx, lut_qf_scale(ts)); }

// =============================================================================================
// Pack / repack / quantize / unpack (scalar C++, exact; native/ref/lut_pack.cc)
// =============================================================================================

// Scale s and offset o (0 without has_offset) of the 16 rows of group g, given its row block.
void lut_group_scales(const uint8_t* row_block, const LutFormat& f, int64_t g, float s[kLutRows], float o[kLutRows]);
// K-quant only: the integer sub-scales sc, m (m = 0 without offset) of the 16 rows of group g and
// the fp16 d, dmin (dmin = 0 without offset) of its super-block, as floats.
void lut_group_kq(const uint8_t* row_block, const LutFormat& f, int64_t g, int32_t sc[kLutRows], int32_t m[kLutRows],
                  float d[kLutRows], float dmin[kLutRows]);

// Pack integer codes: q[r*k + c] in [0, 2^n) (W*) or {-1, 0, 1} as int8 (TERNARY, pass as uint8
// two's complement), scale[r*(k/G) + g] and offset[...] (ignored without has_offset) as fp32
// values that the format can hold exactly (fp16 format: they are rounded to fp16 here).
// out must hold lut_packed_bytes(fmt, rows, k) bytes. Not for k-quant sub-scales (lut_pack_kq).
void lut_pack(const LutFormat& fmt, int64_t rows, int64_t k, const uint8_t* q, const float* scale,
              const float* offset, uint8_t* out);

// Pack for k-quant sub-scales (lut_is_kq(fmt)): codes as lut_pack; sc[r*(k/G) + g] and m[...] the
// integer sub-scale and sub-min: bytes 0..255 (kLutScaleKQ with offset), int8 as two's complement
// (kLutScaleKQ without offset; m unused), or 0..15 (kLutScaleKQ4; higher bits dropped);
// d[r*(k/256) + b] and dmin[...] (unused without offset) fp32 values that fp16 holds exactly
// (rounded to fp16 here).
void lut_pack_kq(const LutFormat& fmt, int64_t rows, int64_t k, const uint8_t* q, const uint8_t* sc, const uint8_t* m,
                 const float* d, const float* dmin, uint8_t* out);

// Decode rows [row_begin, row_end) to floats: out[(r - row_begin)*k + c] = s*(q - 2^(n-1)) or
// s*q + o (or s*(a+b-1)), the same float operations as gguf's dequantize for repacked types.
void lut_unpack(const LutWeights& w, int64_t row_begin, int64_t row_end, float* out);

// Format a GGUF type repacks to (exactly; see lut_pack.cc for why each is lossless):
//   Q4_0 -> W4 g32 fp16 symmetric   Q4_1 -> W4 g32 fp16 + offset
//   Q4_K -> W4 g32 + offset, 8-bit k-quant sub-scales (kLutScaleKQ, 4.625 bits/weight)
//   Q2_K -> W2 g16 + offset, 4-bit k-quant sub-scales (kLutScaleKQ4, 2.625 bits/weight: GGUF's size)
//   Q3_K -> W3 g16 symmetric, signed 8-bit k-quant sub-scales (kLutScaleKQ, no offset; 3.5625 bits)
//   TQ1_0 / TQ2_0 -> TERNARY g=ternary_group (32/64/128) fp16
// kq = false gives Q4_K / Q2_K fp32 s, o and Q3_K fp32 s per group instead (d*sc, dmin*m need up to
// 17 mantissa bits, so fp16 cannot hold them): larger, with uniform group blocks; the same products,
// the same results. Returns false (and *err) for other types.
bool lut_format_for_ggml(GgmlType t, int ternary_group, LutFormat* fmt, std::string* err, bool kq = true);
// The ternary group the runtime repacks TQ1_0 / TQ2_0 with: 128, the largest, so TQ2_0 (2.0625 bits/weight)
// costs 2.125 rather than 2.25 (g64) and the kernel takes half the per-group epilogues (GEMV ~17% faster
// on 8960x1536, AVX2). TQ2_0's one fp16 d per 256 weights becomes the same scale in both groups: exact.
constexpr int kLutTernaryRepackGroup = 128;
// Whether type t repacks exactly to fmt: lut_format_for_ggml's answers (kq true or false) and the
// older layouts files may still hold: Q2_K as W2 g16 kLutScaleKQ + offset (3.125 bits/weight), Q3_K
// as W4 g16 + offset, kLutScaleKQ or fp32 (5.125 / 8 bits; codes of a group with a negative
// sub-scale mirrored so that the sub-scales are unsigned, see lut_pack.cc).
bool lut_repack_supported(GgmlType t, const LutFormat& fmt);
// Repack rows x k GGUF blocks (row-major, k % 256 or 32 as the type needs) into out
// (lut_packed_bytes(fmt, rows, k) bytes); fmt must be one lut_repack_supported accepts.
bool lut_repack_ggml(GgmlType t, const void* blocks, int64_t rows, int64_t k, const LutFormat& fmt, uint8_t* out,
                     std::string* err);

// Quantizer for float weights (rows x k, k % G == 0), fp16 scales. Codes always follow from the
// stored (fp16-rounded) s and o by q = clamp(round_half_even((w - o) / s), 0, 2^n - 1)
// (TERNARY: t = clamp(round_half_even(w / s), -1, 1); s = 0 gives code 0); methods differ in s, o:
//   LUT_QUANT_RTN (round to nearest):
//     W1..W4: per group s = (max - min) / (2^n - 1), o = min (fp16-rounded: o first, then s from the
//             fp32 max - min; for W1 min/max are the means of the values below / at-or-above the
//             group mean instead of the tails); has_offset = 1.
//     TERNARY: s = mean |w| over the group (BitNet b1.58 absmean).
//   LUT_QUANT_MSE (least squared error): starts from RTN and keeps, per group, whichever candidate
//     has the smallest sum of squared errors of the decoded fp16 result (so never worse than RTN):
//     W2..W4: (W2 only) clipped ranges [min + a R, max - b R], R = max - min, a, b in
//             {0, 1, 2, 3, 5} / 32; then least-squares fits of (s, o) to the current codes,
//             re-choosing the codes after each, while the error drops.
//     W1 and TERNARY: alternating refits (codes <-> least-squares s, o), a 1-D Lloyd iteration.
enum { LUT_QUANT_RTN = 0, LUT_QUANT_MSE = 1 };
void lut_quantize(int kind, int group, int64_t rows, int64_t k, const float* w, uint8_t* out, LutFormat* fmt,
                  int method = LUT_QUANT_RTN);

// Quantizer for float weights into k-quant sub-scales (k % 256 == 0): a two-level scale, fp16 d
// (and dmin) per 256 weights of a row and small integer sc (and m) per group (see the layout above):
//   kind 2 -> W2 g16 kLutScaleKQ4 + offset: value d*sc*q - dmin*m, sc, m in 0..15  (2.625 bits/weight)
//   kind 3 -> W3 g16 kLutScaleKQ symmetric: value d*sc*(q - 4), sc int8 in -127..127 (3.5625 bits)
//   kind 4 -> W4 g32 kLutScaleKQ + offset:  value d*sc*q - dmin*m, sc, m in 0..255  (4.625 bits)
// Per group a float (s, o) is fitted first (o <= 0: the stored offset is -dmin*m with dmin, m >= 0;
// RTN: min / max, or for the symmetric form the largest |w| on code 0; LUT_QUANT_MSE: also clipped
// or shrunken candidates and least-squares refits); per super-block d = max s / max sc,
// sc = round(s / d) (dmin, m alike) and the codes are the nearest to each weight on the decoded
// grid d*sc, -(dmin*m). LUT_QUANT_MSE then refines while the error drops: each group tries its
// sc, m +-1 (codes re-chosen), and a least-squares refit of (d, dmin) for the fixed integer sc, m,
// q is kept when it lowers the super-block's error. LUT_QUANT_MSE minimises squared errors weighted
// by sqrt(sigma^2 + w^2) (sigma^2: mean w^2 of the super-block), which measured better perplexity
// than the plain error (lut_pack.cc). Every error is that of the values lut_unpack decodes (the
// same fp32 operations). fmt receives the format. Returns the plain sum of squared errors (-1, and
// nothing written, for a kind other than 2..4).
double lut_quantize_kq(int kind, int64_t rows, int64_t k, const float* w, uint8_t* out, LutFormat* fmt,
                       int method = LUT_QUANT_MSE);
// The format lut_quantize_kq writes for kind 2..4 (false for other kinds).
bool lut_kq_format(int kind, LutFormat* fmt);

}  // namespace lutllm
