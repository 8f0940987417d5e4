// Packing into the LUT weight layout (lut.h): from integer codes, from GGUF blocks (exact repack),
// from floats (round-to-nearest quantizer), and back to floats. Plain scalar C++; no kernels here.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "lutllm/lut.h"

namespace lutllm {

const char* lut_kind_name(int kind) {
  switch (kind) {
    case 1: return "w1";
    case 2: return "w2";
    case 3: return "w3";
    case 4: return "w4";
    case 5: return "wt";
  }
  return "?";
}

std::string lut_check_format(const LutFormat& f, int64_t rows, int64_t k) {
  if (f.kind < 1 || f.kind > 5) return "LUT kind " + std::to_string(f.kind) + " is not 1..4 bits or 5 (ternary)";
  if (f.group != 16 && f.group != 32 && f.group != 64 && f.group != 128)
    return "LUT group " + std::to_string(f.group) + " is not 16, 32, 64 or 128";
  if (f.scale_bytes != kLutScaleKQ && f.scale_bytes != kLutScaleF16 && f.scale_bytes != kLutScaleKQ4 &&
      f.scale_bytes != kLutScaleF32)
    return "scale_bytes " + std::to_string(f.scale_bytes) +
           " is not 1 (8-bit k-quant sub-scales), 2 (fp16), 3 (4-bit k-quant sub-scales) or 4 (fp32)";
  if (f.has_offset != 0 && f.has_offset != 1) return "has_offset must be 0 or 1";
  if (f.kind == int(LutKind::TERNARY) && f.has_offset) return "ternary weights have no offset";
  if (f.kind == int(LutKind::TERNARY) && lut_is_kq(f))
    return "ternary weights take fp16 or fp32 scales, not k-quant sub-scales (scale_bytes " + std::to_string(f.scale_bytes) + ")";
  if (f.scale_bytes == kLutScaleKQ4 && !f.has_offset)
    return "4-bit k-quant sub-scales (scale_bytes 3) need has_offset = 1 (the signed, offset-free form is scale_bytes 1)";
  if (rows <= 0) return "rows must be positive";
  if (k <= 0 || k % f.group) return "k = " + std::to_string(k) + " is not a positive multiple of the group " + std::to_string(f.group);
  if (lut_is_kq(f) && k % kLutSuperK)
    return "k = " + std::to_string(k) + " is not a multiple of the k-quant super-block " + std::to_string(kLutSuperK);
  return "";
}

namespace {

// Plane bit b of one code (pack_tiles): W*: bit b of q in [0, 2^n); TERNARY: t in {-1,0,1} (int8):
// plane 0 = (t >= 0), plane 1 = (t > 0), so a + b - 1 = t.

void store_scale(uint8_t* dst, float v, int scale_bytes) {
  if (scale_bytes == 2) {
    const fp16_t h = f32_to_fp16(v);
    std::memcpy(dst, &h, 2);
  } else {
    std::memcpy(dst, &v, 4);
  }
}

float load_scale(const uint8_t* src, int scale_bytes) {
  if (scale_bytes == 2) {
    fp16_t h;
    std::memcpy(&h, src, 2);
    return fp16_to_f32(h);
  }
  float v;
  std::memcpy(&v, src, 4);
  return v;
}

// The tiles of group g of row block rb (codes q, rows x k) at p; returns the byte after them.
uint8_t* pack_tiles(const LutFormat& fmt, int64_t rows, int64_t k, const uint8_t* q, int64_t rb, int64_t g, uint8_t* p) {
  const int G = fmt.group, n = lut_planes(fmt.kind);
  // nib[b][r][qd]: the nibble of plane b, row r of the block, quad qd (bit i = plane bit of weight
  // 4 qd + i); padding rows 0 (any code: their scale is 0). The four plane bits come out of the four
  // code bytes (as bits 0, 8, 16, 24 of a word) in one multiply: times 0x01020408 they land on bits
  // 24..27 (every other product bit lands elsewhere, below 24, and nothing carries).
  uint8_t nib[4][kLutRows][128 / 4];
  for (int r = 0; r < kLutRows; ++r) {
    const int64_t row = rb * kLutRows + r;
    for (int qd = 0; qd < G / 4; ++qd) {
      if (row >= rows) {
        for (int b = 0; b < n; ++b) nib[b][r][qd] = 0;
        continue;
      }
      const uint8_t* c = q + row * k + g * G + 4 * qd;
      const uint32_t v = uint32_t(c[0]) | uint32_t(c[1]) << 8 | uint32_t(c[2]) << 16 | uint32_t(c[3]) << 24;
      if (fmt.kind == int(LutKind::TERNARY)) {  // per byte: plane 0 = (t >= 0), plane 1 = (t > 0)
        const uint32_t nonneg = (~v >> 7) & 0x01010101u;                                       // sign bit clear
        const uint32_t nonzero = ((((v & 0x7F7F7F7Fu) + 0x7F7F7F7Fu) | v) >> 7) & 0x01010101u;  // any bit set
        nib[0][r][qd] = uint8_t((nonneg * 0x01020408u) >> 24);
        nib[1][r][qd] = uint8_t(((nonneg & nonzero) * 0x01020408u) >> 24);
        continue;
      }
      for (int b = 0; b < n; ++b) nib[b][r][qd] = uint8_t((((v >> b) & 0x01010101u) * 0x01020408u) >> 24);
    }
  }
  for (int pp = 0; pp < n / 2; ++pp)
    for (int qd = 0; qd < G / 4; ++qd)
      for (int j = 0; j < 16; ++j) {
        const int b = 2 * pp + (j & 1);
        *p++ = uint8_t(nib[b][j >> 1][qd] | nib[b][8 + (j >> 1)][qd] << 4);
      }
  if (n & 1) {
    const int C = lut_st_chunk_quads(G), H = C / 2;  // ST(c, i): quads C*c + i (low), C*c + i + H (high)
    for (int c = 0; c < G / 4 / C; ++c)
      for (int i = 0; i < H; ++i)
        for (int j = 0; j < 16; ++j) *p++ = uint8_t(nib[n - 1][j][C * c + i] | nib[n - 1][j][C * c + i + H] << 4);
  }
  return p;
}

}  // namespace

void lut_group_scales(const uint8_t* row_block, const LutFormat& f, int64_t g, float s[kLutRows], float o[kLutRows]) {
  const uint8_t* sp = row_block + lut_group_offset(f, g) + lut_tile_bytes_per_group(f);
  if (lut_is_kq(f)) {
    const uint8_t* hp = row_block + lut_super_header_offset(f, g);
    const int32_t kq = lut_kq_kind(f);
    for (int r = 0; r < kLutRows; ++r) {
      const float d = load_scale(hp + 2 * r, 2);
      if (kq == kLutKqS8) {
        s[r] = d * float(int8_t(sp[r]));
        o[r] = 0.0f;
        continue;
      }
      const int sc = kq == kLutKqNibble ? sp[r] & 15 : sp[r], m = kq == kLutKqNibble ? sp[r] >> 4 : sp[kLutRows + r];
      const float dmin = load_scale(hp + 2 * (kLutRows + r), 2);
      s[r] = d * float(sc);
      o[r] = -(dmin * float(m));
    }
    return;
  }
  const int sb = f.scale_bytes;
  for (int r = 0; r < kLutRows; ++r) {
    s[r] = load_scale(sp + r * sb, sb);
    o[r] = f.has_offset ? load_scale(sp + (kLutRows + r) * sb, sb) : 0.0f;
  }
}

void lut_group_kq(const uint8_t* row_block, const LutFormat& f, int64_t g, int32_t sc[kLutRows], int32_t m[kLutRows],
                  float d[kLutRows], float dmin[kLutRows]) {
  const uint8_t* sp = row_block + lut_group_offset(f, g) + lut_tile_bytes_per_group(f);
  const uint8_t* hp = row_block + lut_super_header_offset(f, g);
  const int32_t kq = lut_kq_kind(f);
  for (int r = 0; r < kLutRows; ++r) {
    d[r] = load_scale(hp + 2 * r, 2);
    dmin[r] = f.has_offset ? load_scale(hp + 2 * (kLutRows + r), 2) : 0.0f;
    sc[r] = kq == kLutKqS8 ? int8_t(sp[r]) : kq == kLutKqNibble ? sp[r] & 15 : sp[r];
    m[r] = kq == kLutKqNibble ? sp[r] >> 4 : kq == kLutKqU8 ? sp[kLutRows + r] : 0;
  }
}

void lut_pack(const LutFormat& fmt, int64_t rows, int64_t k, const uint8_t* q, const float* scale,
              const float* offset, uint8_t* out) {
  const int G = fmt.group, sb = fmt.scale_bytes;
  const int64_t ngroups = k / G, nrb = lut_row_blocks(rows);
  uint8_t* p = out;
  for (int64_t rb = 0; rb < nrb; ++rb) {
    for (int64_t g = 0; g < ngroups; ++g) {
      p = pack_tiles(fmt, rows, k, q, rb, g, p);
      for (int r = 0; r < kLutRows; ++r, p += sb) {
        const int64_t row = rb * kLutRows + r;
        store_scale(p, row < rows ? scale[row * ngroups + g] : 0.0f, sb);
      }
      if (fmt.has_offset)
        for (int r = 0; r < kLutRows; ++r, p += sb) {
          const int64_t row = rb * kLutRows + r;
          store_scale(p, row < rows ? offset[row * ngroups + g] : 0.0f, sb);
        }
    }
  }
}

void lut_pack_kq(const LutFormat& fmt, int64_t rows, int64_t k, const uint8_t* q, const uint8_t* sc, const uint8_t* m,
                 const float* d, const float* dmin, uint8_t* out) {
  const int G = fmt.group;
  const int64_t ngroups = k / G, nsuper = k / kLutSuperK, nrb = lut_row_blocks(rows);
  const int gps = kLutSuperK / G;
  const int32_t kq = lut_kq_kind(fmt);
  const int halves = fmt.has_offset ? 2 : 1;
  uint8_t* p = out;
  for (int64_t rb = 0; rb < nrb; ++rb)
    for (int64_t b = 0; b < nsuper; ++b) {
      for (int half = 0; half < halves; ++half)  // d, then dmin
        for (int r = 0; r < kLutRows; ++r, p += 2) {
          const int64_t row = rb * kLutRows + r;
          store_scale(p, row < rows ? (half ? dmin : d)[row * nsuper + b] : 0.0f, 2);
        }
      for (int64_t g = b * gps; g < (b + 1) * gps; ++g) {
        p = pack_tiles(fmt, rows, k, q, rb, g, p);
        if (kq == kLutKqNibble) {  // one byte per row: sc | m << 4
          for (int r = 0; r < kLutRows; ++r) {
            const int64_t row = rb * kLutRows + r;
            *p++ = row < rows ? uint8_t((sc[row * ngroups + g] & 15) | (m[row * ngroups + g] & 15) << 4) : 0;
          }
          continue;
        }
        for (int half = 0; half < halves; ++half)  // sc, then m
          for (int r = 0; r < kLutRows; ++r) {
            const int64_t row = rb * kLutRows + r;
            *p++ = row < rows ? (half ? m : sc)[row * ngroups + g] : 0;
          }
      }
    }
}

void lut_unpack(const LutWeights& w, int64_t row_begin, int64_t row_end, float* out) {
  const LutFormat& f = w.fmt;
  const int G = f.group, n = lut_planes(f.kind);
  const int64_t ngroups = w.k / G;
  const size_t rbb = lut_row_block_bytes(f, w.k);
  std::vector<int> code(size_t(kLutRows) * G);
  for (int64_t rb = row_begin / kLutRows; rb * kLutRows < row_end; ++rb) {
    const uint8_t* blk = w.data + size_t(rb) * rbb;
    for (int64_t g = 0; g < ngroups; ++g) {
      const uint8_t* p = blk + lut_group_offset(f, g);
      std::fill(code.begin(), code.end(), 0);
      auto put = [&](int r, int b, int qd, int nibble) {
        for (int i = 0; i < 4; ++i) code[size_t(r) * G + 4 * qd + i] += ((nibble >> i) & 1) << (f.kind == 5 ? 0 : b);
      };
      for (int pp = 0; pp < n / 2; ++pp)
        for (int qd = 0; qd < G / 4; ++qd, p += 16)
          for (int j = 0; j < 16; ++j) {
            put(j >> 1, 2 * pp + (j & 1), qd, p[j] & 15);
            put(8 + (j >> 1), 2 * pp + (j & 1), qd, p[j] >> 4);
          }
      if (n & 1) {
        const int C = lut_st_chunk_quads(G), H = C / 2;
        for (int c = 0; c < G / 4 / C; ++c)
          for (int i = 0; i < H; ++i, p += 16)
            for (int j = 0; j < 16; ++j) {
              put(j, n - 1, C * c + i, p[j] & 15);
              put(j, n - 1, C * c + i + H, p[j] >> 4);
            }
      }
      float sv[kLutRows], ov[kLutRows];
      lut_group_scales(blk, f, g, sv, ov);
      for (int r = 0; r < kLutRows; ++r) {
        const int64_t row = rb * kLutRows + r;
        if (row < row_begin || row >= row_end) continue;
        const float s = sv[r], o = ov[r];
        float* dst = out + (row - row_begin) * w.k + g * G;
        for (int c = 0; c < G; ++c) {
          const int cv = code[size_t(r) * G + c];
          if (f.kind == int(LutKind::TERNARY)) dst[c] = s * float(cv - 1);
          else if (f.has_offset) dst[c] = s * float(cv) + o;
          else dst[c] = s * float(cv - (1 << (n - 1)));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// GGUF repack. Each type's value formula maps onto s*q + o (or s*(q - 8), s*t) with the same fp32
// operations gguf/ggml use to dequantize, so unpack(repack(blocks)) equals their dequantize exactly:
//   Q4_0  (q-8)*d                 -> s = d (fp16 kept as is)
//   Q4_1  q*d + m                 -> s = d, o = m (fp16 kept as is)
//   Q4_K  (d*sc)*q - (dmin*m)     -> k-quant sub-scales: sc, m (6 bits) per 32 and d, dmin (fp16) per
//                                    256 kept as is; kernels form s = d*sc, o = -(dmin*m) exactly in fp32.
//                                    (kq = false: those products stored as fp32: an fp16 mantissa
//                                    (11 bits) times a 6-bit integer needs up to 17 bits.)
//   Q2_K  (d*sc)*q - (dmin*m)     -> the same per 16 with 4-bit sc, m: one byte sc | m << 4 per
//                                    group (kLutScaleKQ4), GGUF's own 2.625 bits/weight (older
//                                    layout: a byte each, kLutScaleKQ)
//   Q3_K  (d*S)*(c-4), S = 6-bit signed sub-scale per 16, c = 3-bit code
//                                 -> W3 g16 symmetric: value = s*(q - 4) with q = c and s = d*S,
//                                    signed sub-scales sc = S (int8), d per 256, no offset; d*S is
//                                    exact in fp32 and so is gguf's product (kq = false: d*S stored
//                                    as fp32). 3.5625 bits/weight against 4.125 for 3 planes with
//                                    uint8 sc, m (the offset form below) and 5.125 for the older
//                                    W4 layout.
//                                 -> (older layouts, W4 g16 + offset) unsigned sub-scales: S >= 0:
//                                    sc = S, q = c, m = 4S; S < 0: sc = -S, q = 7-c, m = -3S (so
//                                    sc*q - m = S*(c-4)), d and dmin = d per 256 (kLutScaleKQ) or
//                                    s = d*sc, o = -(d*m) in fp32.
//                                    Both forms give gguf's values exactly, up to the sign of zero.
//   TQ1_0 / TQ2_0  (t-1)*d        -> TERNARY, s = d (fp16), the same d for every group of a block

bool lut_format_for_ggml(GgmlType t, int ternary_group, LutFormat* fmt, std::string* err, bool kq) {
  const int32_t ks = kq ? kLutScaleKQ : kLutScaleF32;
  switch (t) {
    case GgmlType::Q4_0: *fmt = {4, 32, kLutScaleF16, 0}; return true;
    case GgmlType::Q4_1: *fmt = {4, 32, kLutScaleF16, 1}; return true;
    case GgmlType::Q4_K: *fmt = {4, 32, ks, 1}; return true;
    case GgmlType::Q2_K: *fmt = {2, 16, kq ? kLutScaleKQ4 : kLutScaleF32, 1}; return true;
    case GgmlType::Q3_K: *fmt = {3, 16, ks, 0}; return true;
    case GgmlType::TQ1_0:
    case GgmlType::TQ2_0:
      if (ternary_group != 32 && ternary_group != 64 && ternary_group != 128) {
        *err = "ternary group must be 32, 64 or 128";
        return false;
      }
      *fmt = {5, ternary_group, kLutScaleF16, 0};
      return true;
    default:
      *err = "GGUF type id " + std::to_string(uint32_t(t)) + " has no LUT repack (supported: Q4_0, Q4_1, Q4_K, Q3_K, Q2_K, TQ1_0, TQ2_0)";
      return false;
  }
}

bool lut_repack_supported(GgmlType t, const LutFormat& fmt) {
  auto same = [&](const LutFormat& o) { return std::memcmp(&o, &fmt, sizeof fmt) == 0; };
  std::string err;
  LutFormat f;
  for (bool kq : {true, false})
    if (lut_format_for_ggml(t, fmt.group, &f, &err, kq) && same(f)) return true;
  if (t == GgmlType::Q2_K) return same(LutFormat{2, 16, kLutScaleKQ, 1});
  if (t == GgmlType::Q3_K) return same(LutFormat{4, 16, kLutScaleKQ, 1}) || same(LutFormat{4, 16, kLutScaleF32, 1});
  return false;
}

namespace {

// The 2-bit fields of a 256-weight block's qs[64] (Q2_K, Q3_K's low bits, TQ2_0): weight 128 h + 32 l + m
// is bits 2l of byte 32 h + m. Constant trip counts, so the loops vectorize.
void two_bit_codes(const uint8_t* qs, uint8_t out[QK_K]) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 4; ++l)
      for (int m = 0; m < 32; ++m) out[128 * h + 32 * l + m] = (qs[32 * h + m] >> (2 * l)) & 3;
}

void q4k_scale_min(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

}  // namespace

bool lut_repack_ggml(GgmlType t, const void* blocks, int64_t rows, int64_t k, const LutFormat& fmt, uint8_t* out,
                     std::string* err) {
  LutFormat want;
  if (!lut_format_for_ggml(t, fmt.group, &want, err)) return false;
  if (!lut_repack_supported(t, fmt)) {
    *err = "GGUF type id " + std::to_string(uint32_t(t)) + " does not repack exactly to LUT format (" +
           std::to_string(fmt.kind) + ", " + std::to_string(fmt.group) + ", " + std::to_string(fmt.scale_bytes) + ", " +
           std::to_string(fmt.has_offset) + ")";
    return false;
  }
  const bool kq = lut_is_kq(fmt);
  // block facts of the repackable types (kept here so this file links without the registry)
  struct { int block_elems, block_bytes; } tt{QK_K, 0};
  switch (t) {
    case GgmlType::Q4_0: tt = {QK32, int(sizeof(block_q4_0))}; break;
    case GgmlType::Q4_1: tt = {QK32, int(sizeof(block_q4_1))}; break;
    case GgmlType::Q4_K: tt = {QK_K, int(sizeof(block_q4_K))}; break;
    case GgmlType::Q2_K: tt = {QK_K, int(sizeof(block_q2_K))}; break;
    case GgmlType::Q3_K: tt = {QK_K, int(sizeof(block_q3_K))}; break;
    case GgmlType::TQ1_0: tt = {QK_K, int(sizeof(block_tq1_0))}; break;
    default: tt = {QK_K, int(sizeof(block_tq2_0))}; break;
  }
  if (k % tt.block_elems) {
    *err = "row length " + std::to_string(k) + " is not a multiple of the block size " + std::to_string(tt.block_elems);
    return false;
  }
  const std::string bad = lut_check_format(fmt, rows, k);
  if (!bad.empty()) {
    *err = bad;
    return false;
  }
  const int64_t nb = k / tt.block_elems, ngroups = k / fmt.group;
  std::vector<uint8_t> q(size_t(rows) * k);
  // fp32 s, o per group; k-quant sub-scales: uint8 sc, m per group and d, dmin per block instead
  std::vector<float> sc(kq ? 0 : size_t(rows) * ngroups), of(kq ? 0 : size_t(rows) * ngroups, 0.0f);
  std::vector<uint8_t> ksc(kq ? size_t(rows) * ngroups : 0), km(kq ? size_t(rows) * ngroups : 0);
  std::vector<float> kd(kq ? size_t(rows) * nb : 0), kdmin(kq ? size_t(rows) * nb : 0);
  const uint8_t* src = static_cast<const uint8_t*>(blocks);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* qr = q.data() + r * k;
    float* sr = kq ? nullptr : sc.data() + r * ngroups;
    float* orow = kq ? nullptr : of.data() + r * ngroups;
    for (int64_t b = 0; b < nb; ++b, src += tt.block_bytes) {
      uint8_t* qb = qr + b * tt.block_elems;
      switch (t) {
        case GgmlType::Q4_0: {
          block_q4_0 blk;
          std::memcpy(&blk, src, sizeof blk);
          for (int j = 0; j < 16; ++j) {
            qb[j] = blk.qs[j] & 15;
            qb[j + 16] = blk.qs[j] >> 4;
          }
          sr[b] = fp16_to_f32(blk.d);
          break;
        }
        case GgmlType::Q4_1: {
          block_q4_1 blk;
          std::memcpy(&blk, src, sizeof blk);
          for (int j = 0; j < 16; ++j) {
            qb[j] = blk.qs[j] & 15;
            qb[j + 16] = blk.qs[j] >> 4;
          }
          sr[b] = fp16_to_f32(blk.d);
          orow[b] = fp16_to_f32(blk.m);
          break;
        }
        case GgmlType::Q4_K: {
          block_q4_K blk;
          std::memcpy(&blk, src, sizeof blk);
          const float d = fp16_to_f32(blk.d), dmin = fp16_to_f32(blk.dmin);
          for (int c = 0; c < 4; ++c)  // 64 weights per 32 bytes: low nibbles, then high ones
            for (int m = 0; m < 32; ++m) {
              qb[64 * c + m] = blk.qs[32 * c + m] & 15;
              qb[64 * c + 32 + m] = blk.qs[32 * c + m] >> 4;
            }
          for (int j = 0; j < 8; ++j) {
            int s6, m6;
            q4k_scale_min(blk.scales, j, &s6, &m6);
            if (kq) {
              ksc[size_t(r * ngroups + b * 8 + j)] = uint8_t(s6);
              km[size_t(r * ngroups + b * 8 + j)] = uint8_t(m6);
            } else {
              sr[b * 8 + j] = d * float(s6);
              orow[b * 8 + j] = -(dmin * float(m6));
            }
          }
          if (kq) {
            kd[size_t(r * nb + b)] = d;
            kdmin[size_t(r * nb + b)] = dmin;
          }
          break;
        }
        case GgmlType::Q2_K: {
          block_q2_K blk;
          std::memcpy(&blk, src, sizeof blk);
          const float d = fp16_to_f32(blk.d), dmin = fp16_to_f32(blk.dmin);
          two_bit_codes(blk.qs, qb);
          for (int j = 0; j < 16; ++j) {
            if (kq) {
              ksc[size_t(r * ngroups + b * 16 + j)] = blk.scales[j] & 0xF;
              km[size_t(r * ngroups + b * 16 + j)] = blk.scales[j] >> 4;
            } else {
              sr[b * 16 + j] = d * float(blk.scales[j] & 0xF);
              orow[b * 16 + j] = -(dmin * float(blk.scales[j] >> 4));
            }
          }
          if (kq) {
            kd[size_t(r * nb + b)] = d;
            kdmin[size_t(r * nb + b)] = dmin;
          }
          break;
        }
        case GgmlType::Q3_K: {
          block_q3_K blk;
          std::memcpy(&blk, src, sizeof blk);
          const float d = fp16_to_f32(blk.d);
          // codes: the 2-bit fields, and bit 4h + l of hmask[m] on top of weight 128 h + 32 l + m
          uint8_t code[QK_K];
          two_bit_codes(blk.qs, code);
          for (int h = 0; h < 2; ++h)
            for (int l = 0; l < 4; ++l)
              for (int m = 0; m < 32; ++m) code[128 * h + 32 * l + m] |= uint8_t(((blk.hmask[m] >> (4 * h + l)) & 1) << 2);
          for (int j = 0; j < 16; ++j) {
            const int lo = (j < 8 ? blk.scales[j] : blk.scales[j - 8] >> 4) & 0x0F;
            const int hi = (blk.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
            const int S = (lo | hi << 4) - 32;
            // symmetric (W3): sc = S signed, q = c; offset form (W4): mirrored codes, unsigned sc, m
            const bool mirror = fmt.has_offset && S < 0;
            const int sc6 = fmt.has_offset ? (S < 0 ? -S : S) : S, m = S < 0 ? -3 * S : 4 * S;
            for (int e = 16 * j; e < 16 * j + 16; ++e) qb[e] = uint8_t(mirror ? 7 - code[e] : code[e]);
            if (kq) {
              ksc[size_t(r * ngroups + b * 16 + j)] = uint8_t(int8_t(sc6));
              km[size_t(r * ngroups + b * 16 + j)] = uint8_t(fmt.has_offset ? m : 0);
            } else {
              sr[b * 16 + j] = d * float(sc6);
              orow[b * 16 + j] = fmt.has_offset ? -(d * float(m)) : 0.0f;
            }
          }
          if (kq) {
            kd[size_t(r * nb + b)] = d;
            kdmin[size_t(r * nb + b)] = d;
          }
          break;
        }
        case GgmlType::TQ2_0: {
          block_tq2_0 blk;
          std::memcpy(&blk, src, sizeof blk);
          two_bit_codes(blk.qs, qb);
          uint8_t bad = 0;  // code 3 anywhere (checked once per block, so the loop vectorizes)
          for (int e = 0; e < QK_K; ++e) {
            bad |= uint8_t(qb[e] == 3);
            qb[e] = uint8_t(qb[e] - 1);  // int8 -1, 0, 1
          }
          if (bad) {
            *err = "TQ2_0 block " + std::to_string(b) + " of row " + std::to_string(r) + " holds code 3 (not ternary)";
            return false;
          }
          for (int g = 0; g < QK_K / fmt.group; ++g) sr[b * (QK_K / fmt.group) + g] = fp16_to_f32(blk.d);
          break;
        }
        case GgmlType::TQ1_0: {
          block_tq1_0 blk;
          std::memcpy(&blk, src, sizeof blk);
          static const uint8_t pow3[6] = {1, 3, 9, 27, 81, 243};
          auto trit = [](uint8_t byte, uint8_t p) { return int((uint16_t(uint8_t(byte * p)) * 3) >> 8); };
          int e = 0;
          for (int nn = 0; nn < 5; ++nn)
            for (int m = 0; m < 32; ++m) qb[e++] = uint8_t(int8_t(trit(blk.qs[m], pow3[nn]) - 1));
          for (int nn = 0; nn < 5; ++nn)
            for (int m = 0; m < 16; ++m) qb[e++] = uint8_t(int8_t(trit(blk.qs[32 + m], pow3[nn]) - 1));
          for (int nn = 0; nn < 4; ++nn)
            for (int m = 0; m < 4; ++m) qb[e++] = uint8_t(int8_t(trit(blk.qh[m], pow3[nn]) - 1));
          for (int g = 0; g < QK_K / fmt.group; ++g) sr[b * (QK_K / fmt.group) + g] = fp16_to_f32(blk.d);
          break;
        }
        default:
          *err = "unreachable";
          return false;
      }
    }
  }
  if (kq) lut_pack_kq(fmt, rows, k, q.data(), ksc.data(), km.data(), kd.data(), kdmin.data(), out);
  else lut_pack(fmt, rows, k, q.data(), sc.data(), of.data(), out);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Float quantizer (see lut.h for the methods). Every candidate (s, o) is rounded to fp16 before its
// codes are chosen and its error is measured on the decoded values exactly as lut_unpack computes
// them, so "smallest error" is the error of what is stored.

namespace {

inline float to_h(float v) { return fp16_to_f32(f32_to_fp16(v)); }

// round_half_even(clamp(v, lo, hi)) for integer lo, hi with |lo|, |hi| < 2^22: adding and removing
// 1.5 * 2^23 rounds to the nearest even integer in the default rounding mode, exactly as
// std::nearbyint, without a libm call per weight (a baseline x86-64 build has no roundps).
inline float round_clamped(float v, float lo, float hi) {
  v = v > lo ? v : lo;  // two plain selects (not nested) so that loops over this vectorize
  v = v < hi ? v : hi;
  const float magic = 12582912.0f;
  return (v + magic) - magic;  // not reassociated: the build has no -ffast-math
}

// Codes of one group for the stored (s, o) and the squared error of its decoded values.
double uniform_codes(const float* x, int G, int qmax, float s, float o, uint8_t* q) {
  double err = 0;
  for (int i = 0; i < G; ++i) {
    const float v = s > 0 ? round_clamped((x[i] - o) / s, 0.0f, float(qmax)) : 0.0f;
    q[i] = uint8_t(v);
    const float d = s * v + o - x[i];
    err += double(d) * double(d);
  }
  return err;
}

// The same error without storing codes, in 8 independent lanes (G % 8 == 0) so that the compiler
// can vectorize it: the candidate search of LUT_QUANT_MSE spends its time here.
double uniform_err(const float* x, int G, int qmax, float s, float o) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const float hi = float(qmax);
  for (int i = 0; i < G; i += 8)
    for (int j = 0; j < 8; ++j) {
      const float v = round_clamped((x[i + j] - o) / s, 0.0f, hi);
      const float d = s * v + o - x[i + j];
      acc[j] += d * d;
    }
  double err = 0;
  for (int j = 0; j < 8; ++j) err += acc[j];
  return err;
}

double ternary_codes(const float* x, int G, float s, uint8_t* q) {
  double err = 0;
  for (int i = 0; i < G; ++i) {
    const float t = s > 0 ? round_clamped(x[i] / s, -1.0f, 1.0f) : 0.0f;
    q[i] = uint8_t(int8_t(t));
    const float d = s * t - x[i];
    err += double(d) * double(d);
  }
  return err;
}

// Round-to-nearest parameters of one group (the documented RTN rule).
void rtn_params(int kind, const float* x, int G, float* s, float* o) {
  const int qmax = (1 << kind) - 1;
  float mn = x[0], mx = x[0];
  for (int i = 1; i < G; ++i) {
    mn = x[i] < mn ? x[i] : mn;
    mx = x[i] > mx ? x[i] : mx;
  }
  if (kind == 1) {  // 2 levels at min/max would sit in the tails: use the means of each half
    double mean = 0, lo = 0, hi = 0;
    int nlo = 0, nhi = 0;
    for (int i = 0; i < G; ++i) mean += x[i];
    mean /= G;
    for (int i = 0; i < G; ++i) {
      if (x[i] < mean) { lo += x[i]; ++nlo; } else { hi += x[i]; ++nhi; }
    }
    mn = nlo ? float(lo / nlo) : mn;
    mx = nhi ? float(hi / nhi) : mx;
  }
  *o = to_h(mn);
  *s = to_h((mx - mn) / float(qmax));
}

// Least-squares (s, o) for fixed codes q: minimise sum (s q_i + o - x_i)^2. False if degenerate.
bool ls_fit(const float* x, const uint8_t* q, int G, float* s, float* o) {
  double sq = 0, sqq = 0, sx = 0, sqx = 0;
  for (int i = 0; i < G; ++i) {
    const double qi = q[i];
    sq += qi;
    sqq += qi * qi;
    sx += x[i];
    sqx += qi * x[i];
  }
  const double det = G * sqq - sq * sq;
  if (!(det > 0)) return false;
  const double sd = (G * sqx - sq * sx) / det;
  if (!(sd > 0)) return false;
  *s = to_h(float(sd));
  *o = to_h(float((sx - sd * sq) / G));
  return *s > 0;
}

// Clipping fractions tried at each end of the range by LUT_QUANT_MSE (in units of R / 32).
constexpr int kClipSteps[] = {0, 1, 2, 3, 5};

// One group of W1..W4: writes codes to q, returns (s, o).
void quantize_uniform_group(int kind, int method, const float* x, int G, uint8_t* q, uint8_t* tmp, float* s_out,
                            float* o_out) {
  const int qmax = (1 << kind) - 1;
  float s, o;
  rtn_params(kind, x, G, &s, &o);
  double best = uniform_codes(x, G, qmax, s, o, q);
  if (method == LUT_QUANT_MSE && best > 0) {
    // candidates are ranked by uniform_err (fp32 lanes); the winner's codes and exact error are
    // recomputed below, and it replaces RTN only if that exact error is smaller
    double best_fast = uniform_err(x, G, qmax, s, o);
    float bs = s, bo = o;
    auto consider = [&](float cs, float co) {
      if (!(cs > 0)) return false;
      const double e = uniform_err(x, G, qmax, cs, co);
      if (!(e < best_fast)) return false;
      best_fast = e;
      bs = cs;
      bo = co;
      return true;
    };
    if (kind == 2) {  // measured on SmolLM2: clipping helps W2 (NMSE -11%), not W3/W4 (< 0.1%)
      float mn = x[0], mx = x[0];
      for (int i = 1; i < G; ++i) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
      }
      const float R = mx - mn;
      for (int a : kClipSteps)
        for (int b : kClipSteps) {
          if (a == 0 && b == 0) continue;  // that is RTN
          const float lo = mn + R * (float(a) / 32.0f), hi = mx - R * (float(b) / 32.0f);
          consider(to_h((hi - lo) / float(qmax)), to_h(lo));
        }
    }
    // refine: least-squares (s, o) for the current codes, re-choose the codes, while it helps
    for (int it = 0; it < 4; ++it) {
      float cs, co;
      uniform_codes(x, G, qmax, bs, bo, tmp);
      if (!ls_fit(x, tmp, G, &cs, &co) || !consider(cs, co)) break;
    }
    if (bs != s || bo != o) {
      const double e = uniform_codes(x, G, qmax, bs, bo, tmp);
      if (e < best) {
        s = bs;
        o = bo;
        std::memcpy(q, tmp, size_t(G));
      }
    }
  }
  *s_out = s;
  *o_out = o;
}

float quantize_ternary_group(int method, const float* x, int G, uint8_t* q, uint8_t* tmp) {
  double sum = 0;
  for (int i = 0; i < G; ++i) sum += std::fabs(x[i]);
  float s = to_h(float(sum / G));
  double best = ternary_codes(x, G, s, q);
  if (method == LUT_QUANT_MSE && best > 0) {
    // alternate: least-squares s = sum |x| / count over the non-zero codes, then the codes again
    for (int it = 0; it < 6; ++it) {
      double num = 0;
      int cnt = 0;
      for (int i = 0; i < G; ++i)
        if (q[i]) {
          num += std::fabs(x[i]);
          ++cnt;
        }
      if (!cnt) break;
      const float cs = to_h(float(num / cnt));
      if (!(cs > 0) || cs == s) break;
      const double e = ternary_codes(x, G, cs, tmp);
      if (!(e < best)) break;
      best = e;
      s = cs;
      std::memcpy(q, tmp, size_t(G));
    }
  }
  return s;
}

}  // namespace

void lut_quantize(int kind, int group, int64_t rows, int64_t k, const float* w, uint8_t* out, LutFormat* fmt,
                  int method) {
  const bool tern = kind == int(LutKind::TERNARY);
  *fmt = {kind, group, 2, tern ? 0 : 1};
  const int64_t ngroups = k / group;
  std::vector<uint8_t> q(size_t(rows) * k), tmp(static_cast<size_t>(group));
  std::vector<float> sc(size_t(rows) * ngroups), of(size_t(rows) * ngroups, 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < ngroups; ++g) {
      const float* x = w + r * k + g * group;
      uint8_t* qg = q.data() + r * k + g * group;
      const int64_t i = r * ngroups + g;
      if (tern) sc[size_t(i)] = quantize_ternary_group(method, x, group, qg, tmp.data());
      else quantize_uniform_group(kind, method, x, group, qg, tmp.data(), &sc[size_t(i)], &of[size_t(i)]);
    }
  lut_pack(*fmt, rows, k, q.data(), sc.data(), of.data(), out);
}

// ---------------------------------------------------------------------------------------------
// K-quant quantizer (lut.h: lut_quantize_kq). One (row, super-block of 256) at a time: float
// (s, o) per group, then integer sub-scales against fp16 d, dmin, then a local search. Errors are
// always those of the decoded values: s = d * float(sc), o = -(dmin * float(m)) in fp32, then
// s * q + o or s * (q - zero), as lut_group_scales / lut_unpack compute them.

bool lut_kq_format(int kind, LutFormat* fmt) {
  switch (kind) {
    case 2: *fmt = {2, 16, kLutScaleKQ4, 1}; return true;
    case 3: *fmt = {3, 16, kLutScaleKQ, 0}; return true;
    case 4: *fmt = {4, 32, kLutScaleKQ, 1}; return true;
  }
  return false;
}

namespace {

struct KqShape {
  int G, qmax, zero;  // zero: 2^(n-1) in the symmetric form, 0 with an offset
  int sc_lo, sc_hi;   // sub-scale range
  int m_hi;           // sub-min range 0..m_hi (0 without an offset)
  bool offset;
};

constexpr int kKqMaxGroups = kLutSuperK / 16;

// Squared error of one group for decoded (s, o) (the offset form; o unused in the symmetric one),
// the codes nearest to each weight written to q when q is not null. 8 float lanes (G % 8 == 0) so
// that the search loops vectorize; the symmetric form's codes are round(x / s) + zero.
template <bool kOffset>
float kq_group_err(const float* x, const float* wt, int G, int qmax, int zero, float s, float o, uint8_t* q) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const float hi = float(qmax), z = float(zero);
  const float inv_ok = s != 0 ? 1.0f : 0.0f;  // s = 0: every code decodes to o (or 0)
  const float ss = s != 0 ? s : 1.0f;
  for (int i = 0; i < G; i += 8)
    for (int j = 0; j < 8; ++j) {
      const float xv = x[i + j];
      float v, y;
      if (kOffset) {
        v = round_clamped((xv - o) / ss, 0.0f, hi) * inv_ok;
        y = s * v + o;
      } else {
        v = round_clamped(xv / ss, -z, hi - z) * inv_ok + z;
        y = s * (v - z);
      }
      if (q) q[i + j] = uint8_t(v);
      const float e = y - xv;
      acc[j] += wt[i + j] * (e * e);
    }
  float err = 0;
  for (int j = 0; j < 8; ++j) err += acc[j];
  return err;
}

float kq_err(const KqShape& sh, const float* x, const float* wt, float s, float o, uint8_t* q) {
  return sh.offset ? kq_group_err<true>(x, wt, sh.G, sh.qmax, sh.zero, s, o, q)
                   : kq_group_err<false>(x, wt, sh.G, sh.qmax, sh.zero, s, o, q);
}

// Float (s, o) of one group before the sub-scales are formed. Offset form: o <= 0 (stored as
// -dmin * m with dmin, m >= 0), from the range [min(mn, 0), mx], and with LUT_QUANT_MSE also its
// clipped ranges and least-squares refits. Symmetric form: s maps the weight of largest magnitude
// to the code with the most room (-zero), with MSE also shrunken and opposite-sign candidates and
// least-squares refits.
void kq_fit_group(const KqShape& sh, int method, const float* x, const float* wt, uint8_t* tmp, float* s_out,
                  float* o_out) {
  const int G = sh.G;
  float mn = x[0], mx = x[0], amax = x[0];
  for (int i = 1; i < G; ++i) {
    mn = x[i] < mn ? x[i] : mn;
    mx = x[i] > mx ? x[i] : mx;
    amax = std::fabs(x[i]) > std::fabs(amax) ? x[i] : amax;
  }
  float bs, bo = 0.0f;
  if (sh.offset) {
    const float lo = mn < 0 ? mn : 0.0f, R = mx - lo;
    bo = lo;
    bs = R > 0 ? R / float(sh.qmax) : 0.0f;
  } else {
    bs = -amax / float(sh.zero);
  }
  if (method != LUT_QUANT_MSE || bs == 0) {
    *s_out = bs;
    *o_out = bo;
    return;
  }
  float best = kq_err(sh, x, wt, bs, bo, nullptr);
  auto consider = [&](float cs, float co) {
    if (!(sh.offset ? cs > 0 : cs != 0) || !(co <= 0)) return false;
    const float e = kq_err(sh, x, wt, cs, co, nullptr);
    if (!(e < best)) return false;
    best = e;
    bs = cs;
    bo = co;
    return true;
  };
  if (sh.offset) {
    const float lo = mn < 0 ? mn : 0.0f, R = mx - lo;
    for (int a : kClipSteps)
      for (int b : kClipSteps) {
        if (a == 0 && b == 0) continue;
        float l = lo + R * (float(a) / 32.0f);
        l = l < 0 ? l : 0.0f;
        const float h = mx - R * (float(b) / 32.0f);
        if (h > l) consider((h - l) / float(sh.qmax), l);
      }
  } else {
    const float s0 = bs, s1 = amax / float(sh.qmax - sh.zero);  // the largest weight on the short side
    for (int a = 1; a <= 16; ++a) consider(s0 * (1.0f - float(a) / 48.0f), 0.0f);
    for (int a = 0; a <= 12; ++a) consider(s1 * (1.0f - float(a) / 48.0f), 0.0f);
  }
  for (int it = 0; it < 4; ++it) {  // least squares for the current codes, while it helps
    kq_err(sh, x, wt, bs, bo, tmp);
    double sw = 0, sq = 0, sqq = 0, sx = 0, sqx = 0;  // weighted sums
    for (int i = 0; i < G; ++i) {
      const double qi = double(tmp[i]) - sh.zero, wi = wt[i];
      sw += wi;
      sq += wi * qi;
      sqq += wi * qi * qi;
      sx += wi * x[i];
      sqx += wi * qi * x[i];
    }
    float cs, co = 0.0f;
    if (!sh.offset) {
      if (!(sqq > 0)) break;
      cs = float(sqx / sqq);
    } else {
      const double det = sw * sqq - sq * sq;
      if (!(det > 0)) break;
      double sd = (sw * sqx - sq * sx) / det, od = (sx - sd * sq) / sw;
      if (od > 0) {  // the offset must stay <= 0: refit the scale alone at o = 0
        od = 0;
        sd = sqq > 0 ? sqx / sqq : 0;
      }
      cs = float(sd);
      co = float(od);
    }
    if (!consider(cs, co)) break;
  }
  *s_out = bs;
  *o_out = bo;
}

// Weights of the squared errors of one super-block: sqrt(sigma^2 + x^2), sigma^2 the mean square of
// its 256 weights, so that large weights count more without small ones counting for nothing.
// Measured on Qwen2.5-Coder-1.5B, --bits 2 --mix (perplexity, 3 x 512 tokens): unweighted 6.71,
// this 5.83 (sigma + |x| 5.93, sigma^2 + x^2 6.28, |x| 6.34), although the unweighted NMSE rises
// from 0.058 to 0.061.
void kq_weights(const float* x, float* wt) {
  double ss = 0;
  for (int i = 0; i < kLutSuperK; ++i) ss += double(x[i]) * x[i];
  const float sigma2 = float(ss / kLutSuperK);
  for (int i = 0; i < kLutSuperK; ++i) wt[i] = std::sqrt(sigma2 + x[i] * x[i]);
}

inline int round_int(float v, int lo, int hi) { return int(round_clamped(v, float(lo), float(hi))); }

// fp16 value of v >= 0, at least the smallest positive fp16 when v > 0 (so that d * sc is not 0).
inline float to_h_pos(float v) {
  const float h = to_h(v);
  return h > 0 || !(v > 0) ? h : fp16_to_f32(fp16_t(1));
}

struct KqBlock {
  float d = 0, dmin = 0;
  int sc[kKqMaxGroups] = {}, m[kKqMaxGroups] = {};
};

// Error of group j of b, codes into q (G bytes) when not null.
inline float kq_block_group(const KqShape& sh, const float* x, const float* wt, const KqBlock& b, int j, int sc,
                            int m, uint8_t* q) {
  const float s = b.d * float(sc), o = sh.offset ? -(b.dmin * float(m)) : 0.0f;
  return kq_err(sh, x + j * sh.G, wt + j * sh.G, s, o, q);
}

// Unweighted squared error of a super-block's stored codes q.
float kq_plain_err(const KqShape& sh, const float* x, const KqBlock& b, const uint8_t* q) {
  float err = 0;
  for (int j = 0; j < kLutSuperK / sh.G; ++j) {
    const float s = b.d * float(b.sc[j]), o = sh.offset ? -(b.dmin * float(b.m[j])) : 0.0f;
    for (int i = j * sh.G; i < (j + 1) * sh.G; ++i) {
      const float y = sh.offset ? s * float(q[i]) + o : s * (float(q[i]) - float(sh.zero));
      err += (y - x[i]) * (y - x[i]);
    }
  }
  return err;
}

// One row's super-block x (256 weights): codes q, sub-scales and d, dmin in b; returns its error.
float kq_super_block(const KqShape& sh, int method, const float* x, uint8_t* q, KqBlock* b) {
  const int G = sh.G, ng = kLutSuperK / G;
  float fs[kKqMaxGroups], fo[kKqMaxGroups], err[kKqMaxGroups], wt[kLutSuperK];
  uint8_t tmp[kLutSuperK];
  kq_weights(x, wt);
  for (int j = 0; j < ng; ++j) kq_fit_group(sh, method, x + j * G, wt + j * G, tmp, &fs[j], &fo[j]);
  float smax = 0, omax = 0;
  for (int j = 0; j < ng; ++j) {
    const float a = sh.offset ? fs[j] : std::fabs(fs[j]);
    smax = a > smax ? a : smax;
    omax = -fo[j] > omax ? -fo[j] : omax;
  }
  b->d = to_h_pos(smax / float(sh.sc_hi));
  b->dmin = sh.offset ? to_h_pos(omax / float(sh.m_hi)) : 0.0f;
  float total = 0;
  for (int j = 0; j < ng; ++j) {
    b->sc[j] = b->d > 0 ? round_int(fs[j] / b->d, sh.sc_lo, sh.sc_hi) : 0;
    b->m[j] = b->dmin > 0 ? round_int(-fo[j] / b->dmin, 0, sh.m_hi) : 0;
    err[j] = kq_block_group(sh, x, wt, *b, j, b->sc[j], b->m[j], q + j * G);
    total += err[j];
  }
  if (method != LUT_QUANT_MSE) return kq_plain_err(sh, x, *b, q);
  const int mstep = sh.offset ? 1 : 0;
  for (int it = 0; it < 6; ++it) {
    bool improved = false;
    // each group: its sc, m +-1 with re-chosen codes
    for (int j = 0; j < ng; ++j)
      for (int ds = -1; ds <= 1; ++ds)
        for (int dm = -mstep; dm <= mstep; ++dm) {
          const int sc = b->sc[j] + ds, m = b->m[j] + dm;
          if ((ds == 0 && dm == 0) || sc < sh.sc_lo || sc > sh.sc_hi || m < 0 || m > sh.m_hi) continue;
          const float e = kq_block_group(sh, x, wt, *b, j, sc, m, nullptr);
          if (e < err[j]) {
            err[j] = e;
            b->sc[j] = sc;
            b->m[j] = m;
            kq_block_group(sh, x, wt, *b, j, sc, m, q + j * G);
            improved = true;
          }
        }
    // least-squares (d, dmin) for the fixed integer sc, m, q: value = d * A - dmin * B
    double AA = 0, AB = 0, BB = 0, Ax = 0, Bx = 0;
    for (int j = 0; j < ng; ++j)
      for (int i = 0; i < G; ++i) {
        const double A = double(b->sc[j]) * (double(q[j * G + i]) - sh.zero), B = b->m[j], xv = x[j * G + i];
        const double wi = wt[j * G + i];
        AA += wi * A * A;
        AB += wi * A * B;
        BB += wi * B * B;
        Ax += wi * A * xv;
        Bx += wi * B * xv;
      }
    KqBlock c = *b;
    const double D = AA * BB - AB * AB;
    if (sh.offset && BB > 0 && D > 0) {
      const double u = (Ax * BB - AB * Bx) / D, v = (AB * Ax - AA * Bx) / D;
      if (u > 0) c.d = to_h_pos(float(u));
      if (v > 0) c.dmin = to_h_pos(float(v));
    } else if (AA > 0) {
      const double u = Ax / AA;
      if (sh.offset ? u > 0 : u != 0) c.d = to_h_pos(float(std::fabs(u))) * (u < 0 ? -1.0f : 1.0f);
    }
    if (c.d < 0) {  // the symmetric form's d must stay >= 0: flip the signs of the sub-scales instead
      c.d = -c.d;
      for (int j = 0; j < ng; ++j) c.sc[j] = -c.sc[j];
    }
    if (c.d != b->d || c.dmin != b->dmin) {
      float cerr[kKqMaxGroups] = {}, ctotal = 0;
      for (int j = 0; j < ng; ++j) ctotal += cerr[j] = kq_block_group(sh, x, wt, c, j, c.sc[j], c.m[j], tmp + j * G);
      if (ctotal < total) {
        *b = c;
        std::memcpy(q, tmp, size_t(kLutSuperK));
        std::memcpy(err, cerr, sizeof(float) * size_t(ng));
        improved = true;
      }
    }
    float t = 0;
    for (int j = 0; j < ng; ++j) t += err[j];
    total = t;
    if (!improved) break;
  }
  return kq_plain_err(sh, x, *b, q);
}

}  // namespace

double lut_quantize_kq(int kind, int64_t rows, int64_t k, const float* w, uint8_t* out, LutFormat* fmt, int method) {
  LutFormat f{};
  const bool ok = lut_kq_format(kind, &f);
  *fmt = f;
  if (!ok) return -1.0;
  KqShape sh{};
  sh.G = f.group;
  sh.qmax = (1 << kind) - 1;
  sh.offset = f.has_offset != 0;
  sh.zero = sh.offset ? 0 : 1 << (kind - 1);
  sh.sc_lo = sh.offset ? 0 : -127;
  sh.sc_hi = f.scale_bytes == kLutScaleKQ4 ? 15 : sh.offset ? 255 : 127;
  sh.m_hi = !sh.offset ? 0 : f.scale_bytes == kLutScaleKQ4 ? 15 : 255;
  const int ng = kLutSuperK / sh.G;
  const int64_t ngroups = k / sh.G, nsuper = k / kLutSuperK;
  std::vector<uint8_t> q(size_t(rows) * k), sc(size_t(rows) * ngroups), m(size_t(rows) * ngroups);
  std::vector<float> d(size_t(rows) * nsuper), dmin(size_t(rows) * nsuper);
  double total = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t sb = 0; sb < nsuper; ++sb) {
      KqBlock b;
      const int64_t at = r * k + sb * kLutSuperK;
      total += kq_super_block(sh, method, w + at, q.data() + at, &b);
      d[size_t(r * nsuper + sb)] = b.d;
      dmin[size_t(r * nsuper + sb)] = b.dmin;
      for (int j = 0; j < ng; ++j) {
        sc[size_t(r * ngroups + sb * ng + j)] = uint8_t(b.sc[j] & 255);  // int8 two's complement when signed
        m[size_t(r * ngroups + sb * ng + j)] = uint8_t(b.m[j]);
      }
    }
  lut_pack_kq(f, rows, k, q.data(), sc.data(), m.data(), d.data(), dmin.data(), out);
  return total;
}

}  // namespace lutllm
