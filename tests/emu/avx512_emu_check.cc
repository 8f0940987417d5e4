// Checks every AVX-512 kernel registered in native/kernels.inc against its REF twin, bit for bit, on a
// machine without AVX-512: the unmodified native/x86/*_avx512.cc are compiled for the baseline ISA with
// tests/emu/shim/immintrin.h (SIMDe). Built and run by tests/test_avx512_emulated.py; not a benchmark.
//
//   g++ -std=c++17 -O1 -ffp-contract=off -Wno-psabi -Itests/emu/shim -Inative/include
//       tests/emu/avx512_emu_check.cc native/ref/*.cc native/x86/*_avx512.cc -o avx512_emu_check
//   (-DEMU_TARGET_AVX2 with native/x86/*_avx2.cc, -mavx2 -mfma -mf16c and no shim checks the AVX2 kernels
//    natively instead: a self-check of this driver against kernels that the native tests also cover.)
//
// Output: one JSON object per line. {"kernel": ..., "op": ..., "ref": ..., "cases": n, "failed": n,
// "failures": [first few case descriptions]} per kernel, then {"summary": {...}}. Exit status 0 iff
// every kernel was checked and none failed. Kernels are found through the X-macros of kernels.inc, so a
// new AVX-512 kernel is covered as soon as it is registered (an op or weight type this driver cannot
// generate inputs for is reported as "uncovered" and fails the run).
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "lutllm/kernel_decls.h"
#include "lutllm/lut.h"

using namespace lutllm;

// ---- the registry, restricted to REF and the ISA under test ----------------------------------------
#define EMU_SEL(isa, ...) EMU_SEL_##isa(__VA_ARGS__)
#define EMU_KEEP(...) __VA_ARGS__
#define EMU_DROP(...)
#define EMU_SEL_REF EMU_KEEP
#define EMU_SEL_NEON EMU_DROP
#define EMU_SEL_NEON_DOTPROD EMU_DROP
#if defined(EMU_TARGET_AVX2)
#define EMU_SEL_AVX2 EMU_KEEP
#define EMU_SEL_AVX512 EMU_DROP
static const Isa kTarget = Isa::AVX2;
static const char* kTargetName = "AVX2";
#else
#define EMU_SEL_AVX2 EMU_DROP
#define EMU_SEL_AVX512 EMU_KEEP
static const Isa kTarget = Isa::AVX512;
static const char* kTargetName = "AVX512";
#endif

namespace {

struct Entry {
  KernelOp op;
  int wtype;  // GgmlType, LutKind or -1
  const char* name;
  Isa isa;
  void* fn;
};

#define EMU_E(op, wt, fn, isa) EMU_SEL(isa, {KernelOp::op, wt, #fn, Isa::isa, reinterpret_cast<void*>(&fn)}, )
const Entry kEntries[] = {
#define LUTLLM_DEQUANT(type, fn, isa) EMU_E(DEQUANT, int(GgmlType::type), fn, isa)
#define LUTLLM_QUANT_ACT(fn, isa) EMU_E(QUANT_ACT, -1, fn, isa)
#define LUTLLM_MATMUL_Q8(type, fn, isa) EMU_E(MATMUL_Q8, int(GgmlType::type), fn, isa)
#define LUTLLM_MATMUL_F32(type, fn, isa) EMU_E(MATMUL_F32, int(GgmlType::type), fn, isa)
#define LUTLLM_LUT_BUILD(fn, isa) EMU_E(LUT_BUILD, -1, fn, isa)
#define LUTLLM_LUT_GEMV(kind, fn, isa) EMU_E(LUT_GEMV, int(LutKind::kind), fn, isa)
#define LUTLLM_LUT_GEMM(kind, fn, isa) EMU_E(LUT_GEMM, int(LutKind::kind), fn, isa)
#include "../../native/kernels.inc"
    {KernelOp::DEQUANT, -2, nullptr, Isa::REF, nullptr},  // end marker
};

const char* op_str(KernelOp op) {
  switch (op) {
    case KernelOp::DEQUANT: return "DEQUANT";
    case KernelOp::QUANT_ACT: return "QUANT_ACT";
    case KernelOp::MATMUL_Q8: return "MATMUL_Q8";
    case KernelOp::MATMUL_F32: return "MATMUL_F32";
    case KernelOp::LUT_BUILD: return "LUT_BUILD";
    case KernelOp::LUT_GEMV: return "LUT_GEMV";
    case KernelOp::LUT_GEMM: return "LUT_GEMM";
  }
  return "?";
}

// ---- inputs ---------------------------------------------------------------------------------------
struct Rng {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  uint32_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return uint32_t(s >> 11);
  }
  uint32_t below(uint32_t n) { return next() % n; }
  float uni() { return float(next() & 0xFFFFFF) / 16777216.0f; }  // [0, 1)
  float gauss() {
    float a = 0;
    for (int i = 0; i < 4; ++i) a += uni() - 0.5f;
    return a * 1.7f;
  }
};

// Block layout of the weight types a kernel may read: elements and bytes per block, and where the fp16
// fields sit (they get finite, chosen values; every other byte is random or extreme).
struct TypeInfo {
  int type;
  int elems, bytes;
  std::vector<int> f16;
};
const std::vector<TypeInfo>& type_infos() {
  static const std::vector<TypeInfo> t = {
      {int(GgmlType::Q4_0), 32, int(sizeof(block_q4_0)), {0}},
      {int(GgmlType::Q4_1), 32, int(sizeof(block_q4_1)), {0, 2}},
      {int(GgmlType::Q5_0), 32, int(sizeof(block_q5_0)), {0}},
      {int(GgmlType::Q5_1), 32, int(sizeof(block_q5_1)), {0, 2}},
      {int(GgmlType::Q8_0), 32, int(sizeof(block_q8_0)), {0}},
      {int(GgmlType::Q2_K), 256, int(sizeof(block_q2_K)), {int(offsetof(block_q2_K, d)), int(offsetof(block_q2_K, dmin))}},
      {int(GgmlType::Q3_K), 256, int(sizeof(block_q3_K)), {int(offsetof(block_q3_K, d))}},
      {int(GgmlType::Q4_K), 256, int(sizeof(block_q4_K)), {0, 2}},
      {int(GgmlType::Q5_K), 256, int(sizeof(block_q5_K)), {0, 2}},
      {int(GgmlType::Q6_K), 256, int(sizeof(block_q6_K)), {int(offsetof(block_q6_K, d))}},
      {int(GgmlType::TQ1_0), 256, int(sizeof(block_tq1_0)), {int(offsetof(block_tq1_0, d))}},
      {int(GgmlType::TQ2_0), 256, int(sizeof(block_tq2_0)), {int(offsetof(block_tq2_0, d))}},
      {int(GgmlType::F32), 1, 4, {}},
      {int(GgmlType::F16), 1, 2, {}},
      {int(GgmlType::BF16), 1, 2, {}},
  };
  return t;
}
const TypeInfo* type_info(int type) {
  for (const auto& t : type_infos())
    if (t.type == type) return &t;
  return nullptr;
}

// Input modes: 0 random; 1 extreme codes (bytes 0x00/0xFF/0x80/0x7F/0x0F/0xF0, activations +-127);
// 2 extreme scales (fp16 max, min normal, subnormal, zero, both signs; activation d from 1e-30 to 1e20);
// 3 max magnitude (Q8 matmuls only): every quant block one byte (0x00 or 0xFF: all codes at one end),
// Q6_K sub-scales -128 / 127, fp16 fields +-1, activation blocks all +127 or all -127, so the integer
// sums of a block reach their largest size and any int16 / int32 overflow shows.
const char* kModeName[4] = {"random", "extreme-codes", "extreme-scales", "max-magnitude"};

uint16_t pick_f16(Rng& r, int mode) {
  if (mode == 2) {
    static const uint16_t v[] = {0x7BFF, 0xFBFF, 0x0400, 0x8400, 0x0001, 0x8001, 0x0000, 0x3C00, 0x03FF};
    return v[r.below(sizeof v / sizeof v[0])];
  }
  return f32_to_fp16(r.gauss() * 0.05f);
}
uint8_t pick_byte(Rng& r, int mode) {
  if (mode == 1) {
    static const uint8_t v[] = {0x00, 0xFF, 0x80, 0x7F, 0x0F, 0xF0};
    return v[r.below(6)];
  }
  return uint8_t(r.next());
}
float pick_float(Rng& r, int mode) {
  if (mode == 1) return r.below(2) ? 3.0f : -3.0f;
  if (mode == 2) {
    static const float v[] = {1e-30f, -1e-30f, 1e20f, -1e20f, 0.0f, -0.0f, 65504.0f, 1.5f};
    return v[r.below(8)];
  }
  return r.gauss() * 2.0f;
}

// Weights of `rows` rows, each row_bytes apart, k elements per row.
void fill_weights(Rng& r, const TypeInfo& ti, int mode, uint8_t* w, size_t row_bytes, int64_t rows, int64_t k) {
  const int64_t nb = k / ti.elems;
  for (int64_t i = 0; i < rows; ++i) {
    uint8_t* row = w + size_t(i) * row_bytes;
    for (size_t j = 0; j < row_bytes; ++j) row[j] = pick_byte(r, mode);
    if (ti.elems == 1) {  // float weight types
      for (int64_t e = 0; e < k; ++e) {
        const float f = pick_float(r, mode);
        if (ti.type == int(GgmlType::F32)) std::memcpy(row + 4 * e, &f, 4);
        else {
          uint32_t u;
          std::memcpy(&u, &f, 4);
          const uint16_t h = ti.type == int(GgmlType::F16) ? f32_to_fp16(f) : uint16_t(u >> 16);
          std::memcpy(row + 2 * e, &h, 2);
        }
      }
      continue;
    }
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* blk = row + b * ti.bytes;
      if (mode == 3) {
        std::memset(blk, r.below(2) ? 0xFF : 0x00, size_t(ti.bytes));
        if (ti.type == int(GgmlType::Q6_K))
          for (int j = 0; j < 16; ++j) blk[offsetof(block_q6_K, scales) + j] = r.below(2) ? 0x80 : 0x7F;
      }
      for (int off : ti.f16) {
        const uint16_t h = mode == 3 ? (r.below(2) ? 0x3C00 : 0xBC00) : pick_f16(r, mode);
        std::memcpy(blk + off, &h, 2);
      }
    }
  }
}

// ---- comparison and reporting ---------------------------------------------------------------------
bool same_float(float a, float b) {
  if (std::isnan(a) && std::isnan(b)) return true;  // NaN payloads are not part of any contract
  return std::memcmp(&a, &b, 4) == 0;
}
// First index where two float buffers differ (bitwise, NaN == NaN), or -1.
int64_t first_diff(const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!same_float(a[i], b[i])) return int64_t(i);
  return -1;
}

// Cases and failures of one kernel; failures are also counted per input group (mode or pattern).
struct Report {
  int64_t cases = 0, failed = 0;
  std::vector<std::string> failures;
  std::vector<std::pair<std::string, int64_t>> groups;
  void check(bool ok, const char* group, const std::string& what) {
    ++cases;
    if (ok) return;
    ++failed;
    if (failures.size() < 5) failures.push_back(what);
    for (auto& g : groups)
      if (g.first == group) return void(++g.second);
    groups.emplace_back(group, 1);
  }
};

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}
std::string diff_note(const float* yr, const float* ys, int64_t at, int64_t stride) {
  if (at < 0) return "";
  return fmt(" first diff at [tok %lld, row %lld]: ref %.9g simd %.9g", (long long)(at / stride),
             (long long)(at % stride), double(yr[at]), double(ys[at]));
}

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

// ---- QUANT_ACT ------------------------------------------------------------------------------------
void check_quant_act(QuantizeActFn ref, QuantizeActFn simd, Report& rep) {
  Rng r;
  const int64_t ks[] = {32, 64, 96, 160, 512, 1024, 4096};
  const char* pats[] = {"gauss", "tiny", "huge", "zeros", "halves", "ties", "denormal", "outlier", "equal", "signed-zero"};
  for (int64_t k : ks)
    for (int pat = 0; pat < 10; ++pat)
      for (int mis = 0; mis < 4; mis += (k > 160 ? 3 : 1)) {
        std::vector<float> xb(size_t(k + 8));
        float* x = xb.data() + mis;
        for (int64_t i = 0; i < k; ++i) {
          float v = r.gauss();
          switch (pat) {
            case 1: v *= 1e-20f; break;
            case 2: v *= 1e30f; break;
            case 3: v = 0.0f; break;
            case 4: v = float(int(i % 32) - 16) * 0.5f; break;  // amax 8: id = 127/8, many exact .5 products
            case 5: {  // x * id lands on or next to a .5 boundary
              const float d = 0.01f + 0.001f * float(i / 32);
              v = (float(int(r.below(254)) - 127) + 0.5f) * d;
              if (i % 32 == 0) v = 127.0f * d;
              break;
            }
            case 6: v *= 1e-38f; break;
            case 7: v = (i % 32 == int(r.below(32))) ? 1e6f : r.gauss() * 1e-3f; break;
            case 8: v = -1.25f; break;
            case 9: v = (i & 1) ? -0.0f : 0.0f; break;
          }
          x[i] = v;
        }
        const int64_t nb = k / QK32;
        std::vector<ActQ8> a(size_t(nb + 2)), b(size_t(nb + 2));
        std::memset(a.data(), 0x5A, a.size() * sizeof(ActQ8));
        std::memset(b.data(), 0x5A, b.size() * sizeof(ActQ8));
        ref(x, a.data(), k);
        simd(x, b.data(), k);
        int64_t bad = -1;
        for (int64_t i = 0; i < nb + 2 && bad < 0; ++i)
          if (std::memcmp(&a[size_t(i)], &b[size_t(i)], sizeof(ActQ8)) != 0) bad = i;
        std::string note;
        if (bad >= 0) {
          const ActQ8 &p = a[size_t(bad)], &q = b[size_t(bad)];
          int j = 0;
          while (j < QK32 && p.qs[j] == q.qs[j]) ++j;
          note = fmt(" block %lld: d %.9g/%.9g s %.9g/%.9g", (long long)bad, double(p.d), double(q.d), double(p.s), double(q.s));
          if (j < QK32)
            note += fmt(" qs[%d] %d/%d (x=%.9g)", j, p.qs[j], q.qs[j], bad < nb ? double(x[bad * QK32 + j]) : 0.0);
        }
        rep.check(bad < 0, pats[pat], fmt("k=%lld pattern=%s x_misalign=%d floats%s", (long long)k, pats[pat], mis, note.c_str()));
      }
}

// ---- MATMUL_Q8 / MATMUL_F32 -----------------------------------------------------------------------
struct MmCase {
  int64_t rows, k, n_tok;
  int mode, wmis, amis;
  bool pad;
};

std::vector<MmCase> mm_cases(int elems) {
  const std::vector<int64_t> ks = elems >= 256 ? std::vector<int64_t>{256, 512, 768, 1280}
                                               : std::vector<int64_t>{32, 64, 96, 160, 544, 1024};
  std::vector<MmCase> cs;
  const int nts[] = {1, 2, 3, 4, 5, 8, 16, 17};
  for (int64_t rows = 1; rows <= 17; ++rows)
    for (int nt : nts) {
      const int64_t h = rows + nt;
      cs.push_back({rows, ks[size_t(h) % ks.size()], nt, int((rows * nt) % 3), int(h % 4), int(h % 3), h % 3 == 0});
    }
  for (int64_t nt = 1; nt <= 17; ++nt)
    for (int64_t rows : {16, 33})
      cs.push_back({rows, ks[size_t(nt) % ks.size()], nt, int(nt % 3), int(nt % 2), int(nt % 2), nt % 2 == 1});
  const int64_t big = elems >= 256 ? 4096 : 2048;
  cs.push_back({64, big, 1, 0, 1, 0, false});
  cs.push_back({64, big, 3, 0, 0, 1, true});
  cs.push_back({48, big, 16, 0, 3, 0, false});
  cs.push_back({100, 2 * big, 1, 1, 0, 0, false});
  cs.push_back({31, big, 7, 2, 1, 1, true});
  for (int64_t rows : {1, 8, 9, 16, 17, 33})  // max magnitude (mode 3): GEMV and GEMM paths
    for (int nt : {1, 2, 5, 17}) cs.push_back({rows, ks[size_t(rows + nt) % ks.size()], nt, 3, int(nt % 4), 0, nt == 5});
  return cs;
}

void fill_act_q8(Rng& r, int mode, ActQ8* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    ActQ8& a = x[i];
    int sum = 0;
    const int sgn = r.below(2) ? 1 : -1;
    for (auto& q : a.qs) {
      q = mode == 3   ? int8_t(127 * sgn)
          : mode == 1 ? int8_t(r.below(4) ? 127 * sgn : -127 * sgn)
                      : int8_t(int(r.below(255)) - 127);
      sum += q;
    }
    if (mode == 2) {
      static const float d[] = {1e-30f, 1e20f, 0.0f, 3e-3f, 65504.0f};
      a.d = d[r.below(5)];
      if (a.d == 0.0f) std::memset(a.qs, 0, sizeof a.qs), sum = 0;
    } else {
      a.d = 0.01f + r.uni() * 0.05f;
    }
    a.s = a.d * float(sum);
  }
}

float weight_at(const TypeInfo& ti, const uint8_t* row, int64_t j) {
  float f;
  uint16_t h;
  if (ti.type == int(GgmlType::F32)) {
    std::memcpy(&f, row + 4 * j, 4);
    return f;
  }
  std::memcpy(&h, row + 2 * j, 2);
  return ti.type == int(GgmlType::F16) ? fp16_to_f32(h) : bf16_to_f32(h);
}
float float_at(const ActQ8*, int64_t) { return 0.0f; }
float float_at(const float* x, int64_t j) { return x[j]; }

template <class XT, class Fn>
void check_matmul(const TypeInfo& ti, Fn ref, Fn simd, bool exact, Report& rep) {
  Rng r;
  for (const MmCase& c : mm_cases(ti.elems)) {
    const size_t natural = size_t(c.k / ti.elems) * size_t(ti.bytes);
    const size_t row_bytes = natural + (c.pad ? 7 : 0);
    std::vector<uint8_t> wb(row_bytes * size_t(c.rows) + 16);
    uint8_t* w = wb.data() + c.wmis;
    fill_weights(r, ti, c.mode, w, row_bytes, c.rows, c.k);
    const int64_t per_tok = std::is_same<XT, ActQ8>::value ? c.k / QK32 : c.k;
    const int64_t x_stride = per_tok + (c.pad ? 3 : 0);
    std::vector<XT> xb(size_t(x_stride * c.n_tok + 4));
    XT* x = xb.data() + c.amis;
    if constexpr (std::is_same<XT, ActQ8>::value) {
      fill_act_q8(r, c.mode, xb.data(), int64_t(xb.size()));
    } else {
      for (auto& v : xb) v = pick_float(r, c.mode);
    }
    const int64_t y_stride = c.rows + (c.pad ? 5 : 0);
    const size_t ny = size_t(y_stride * c.n_tok) + 8;
    std::vector<float> yr(ny, 1234.5f), ys(ny, 1234.5f);
    float* yr0 = yr.data() + c.amis;
    float* ys0 = ys.data() + c.amis;
    ref(w, row_bytes, c.rows, c.k, x, x_stride, c.n_tok, yr0, y_stride);
    simd(w, row_bytes, c.rows, c.k, x, x_stride, c.n_tok, ys0, y_stride);
    int64_t at = -1;
    std::string note;
    if (exact) {
      at = first_diff(yr.data(), ys.data(), ny);
      if (at >= 0) note = diff_note(yr0, ys0, at - c.amis, y_stride);
    } else {  // float weights: the twins sum in different orders; |diff| <= 2 k u sum_j |w_j x_j| per output
      for (int64_t i = 0; i < c.rows && at < 0; ++i)
        for (int64_t t = 0; t < c.n_tok && at < 0; ++t) {
          const float a = yr0[t * y_stride + i], b = ys0[t * y_stride + i];
          if (same_float(a, b)) continue;
          double sabs = 0;
          for (int64_t j = 0; j < c.k; ++j) sabs += std::fabs(double(weight_at(ti, w + size_t(i) * row_bytes, j)) *
                                                              double(float_at(x + t * x_stride, j)));
          if (!(sabs < 3.4e38)) continue;  // a partial sum may overflow in one order and not in another
          const double tol = 2.0 * double(c.k) * std::ldexp(1.0, -24) * sabs + double(c.k) * 1e-38;
          if (!(std::fabs(double(a) - double(b)) <= tol)) at = t * y_stride + i;
        }
      for (size_t i = 0; i < ny && at < 0; ++i) {  // outside rows x n_tok nothing may change
        const int64_t j = int64_t(i) - c.amis;
        if ((j < 0 || j >= y_stride * c.n_tok || j % y_stride >= c.rows) && !same_float(yr[i], ys[i])) at = j;
      }
      if (at >= 0) note = diff_note(yr0, ys0, at, y_stride);
    }
    rep.check(at < 0, kModeName[c.mode], fmt("rows=%lld k=%lld n_tok=%lld mode=%s w_misalign=%d x/y_misalign=%d%s%s", (long long)c.rows,
                          (long long)c.k, (long long)c.n_tok, kModeName[c.mode], c.wmis, c.amis,
                          c.pad ? " padded row_bytes/x_stride/y_stride" : "", note.c_str()));
  }
}

// ---- DEQUANT --------------------------------------------------------------------------------------
void check_dequant(const TypeInfo& ti, DequantRowFn ref, DequantRowFn simd, Report& rep) {
  Rng r;
  const int64_t per = ti.elems == 1 ? 32 : ti.elems;
  for (int64_t nb : {1, 2, 3, 5, 8, 9, 17, 33})
    for (int mode = 0; mode < 3; ++mode)
      for (int mis = 0; mis < 4; mis += 3) {
        const int64_t n = nb * per;
        const size_t bytes = size_t(n / ti.elems) * size_t(ti.bytes);
        std::vector<uint8_t> src(bytes + 8);
        fill_weights(r, ti, mode, src.data() + mis, bytes, 1, n);
        std::vector<float> a(size_t(n + 8), 1234.5f), b(size_t(n + 8), 1234.5f);
        ref(src.data() + mis, a.data() + mis, n);
        simd(src.data() + mis, b.data() + mis, n);
        const int64_t at = first_diff(a.data(), b.data(), a.size());
        rep.check(at < 0, kModeName[mode], fmt("n=%lld mode=%s misalign=%d%s", (long long)n, kModeName[mode], mis,
                              at < 0 ? "" : fmt(" first diff at %lld: ref %.9g simd %.9g", (long long)(at - mis),
                                                double(a[size_t(at)]), double(b[size_t(at)])).c_str()));
      }
}

// ---- LUT kernels ----------------------------------------------------------------------------------
struct Tables {
  std::vector<int8_t> tab;
  std::vector<float> sc, s16;
  std::vector<LutAct> acts;
};

void build_tables(const std::vector<float>& x, int64_t n_tok, int64_t k, int ag, int mis, Tables* t) {
  t->tab.assign(size_t(n_tok * k * 4 + 64), 0);
  t->sc.assign(size_t(n_tok * (k / ag)), 0);
  t->s16.assign(size_t(n_tok * (k / 16)), 0);
  t->acts.resize(size_t(n_tok));
  for (int64_t i = 0; i < n_tok; ++i) {
    int8_t* tb = t->tab.data() + mis + i * k * 4;
    lut_build_g4__ref(x.data() + i * k, k, ag, 0, k / ag, tb, t->sc.data() + i * (k / ag), t->s16.data() + i * (k / 16));
    t->acts[size_t(i)] = LutAct{tb, t->sc.data() + i * (k / ag), t->s16.data() + i * (k / 16), k, ag, 0};
  }
}

void fill_lut_x(Rng& r, int mode, std::vector<float>& x, int64_t k) {
  for (size_t i = 0; i < x.size(); ++i) {
    if (mode == 1) x[i] = ((i / size_t(k)) & 1) ? -3.0f : 3.0f;
    else if (mode == 2) x[i] = (i % 7 == 0) ? 0.0f : (i % 5 == 0 ? 1e-30f : r.gauss() * 1e4f);
    else x[i] = r.gauss() * 2.0f;
  }
}

// k-quant sub-scale encodings: (scale_bytes, has_offset)
constexpr int kKqEnc[3][2] = {{kLutScaleKQ, 1}, {kLutScaleKQ, 0}, {kLutScaleKQ4, 1}};

struct LutCase {
  int G, sb, off;
  int64_t rows, k, n_tok;
  int ag_mult, mis, mode;
};

std::vector<LutCase> lut_cases(int kind) {
  std::vector<LutCase> cs;
  for (int G : {16, 32, 64, 128}) {
    for (int64_t rows = 1; rows <= 17; ++rows)
      cs.push_back({G, (rows & 1) ? 2 : 4, int(rows & 2) >> 1, rows, (1 + rows % 4) * G, 1 + rows % 17 * 3 % 17,
                    rows % 5 == 0 ? 2 : 1, int(rows % 4), int(rows % 3)});
    cs.push_back({G, 2, 1, 45, 5 * G, 8, 1, 3, 0});
    cs.push_back({G, 4, 0, 64, 2 * G, 5, 2, 0, 0});
    cs.push_back({G, 2, 1, 33, G, 6, 1, 1, 1});
    cs.push_back({G, 2, 0, 16, 8 * G, 2, 1, 2, 1});
    cs.push_back({G, 4, 1, 20, 4 * G, 17, 1, 1, 2});
    if (kind != int(LutKind::TERNARY))  // k-quant sub-scales (uint8 sc, m; int8 sc; 4-bit): super-blocks of 256
      for (const int* e : {kKqEnc[0], kKqEnc[1], kKqEnc[2]})
        for (int64_t rows : {1, 5, 16, 17, 33})
          cs.push_back({G, e[0], e[1], rows, 256 * (1 + rows % 3), 1 + rows % 7, 1, int(rows % 4), int(rows % 3)});
  }
  // more tokens than one chunk of the AVX-512 GEMM driver (4096 / min(k/G, 512/G) tokens)
  cs.push_back({16, 2, 1, 17, 1024, 130, 1, 1, 0});
  if (lut_planes(kind) & 1) cs.push_back({32, 2, 1, 17, 1024, 260, 1, 1, 0});
  cs.push_back({128, 2, 0, 40, 128 * 40, 3, 1, 0, 0});
  return cs;
}

void check_lut(int kind, bool gemm, void* ref, void* simd, Report& rep) {
  Rng r;
  for (const LutCase& c : lut_cases(kind)) {
    const LutFormat lf{kind, c.G, c.sb, kind == int(LutKind::TERNARY) ? 0 : c.off};
    const int64_t rows = c.rows, k = c.k;
    const std::string bad_fmt = lut_check_format(lf, rows, k);
    if (!bad_fmt.empty()) {
      rep.check(false, "driver", "driver generated an unusable format: " + bad_fmt);
      continue;
    }
    std::vector<uint8_t> q(size_t(rows * k));
    const int qmax = kind == int(LutKind::TERNARY) ? 0 : (1 << kind) - 1;
    for (auto& v : q) {
      if (kind == int(LutKind::TERNARY)) v = uint8_t(int8_t(c.mode == 1 ? 1 : int(r.below(3)) - 1));
      else v = uint8_t(c.mode == 1 ? qmax : int(r.below(uint32_t(qmax + 1))));
    }
    std::vector<float> sc(size_t(rows * (k / c.G))), of(sc.size());
    for (auto& v : sc) v = c.mode == 1 ? 1.0f : c.mode == 2 ? fp16_to_f32(pick_f16(r, 2)) : r.gauss() * 0.1f;
    for (auto& v : of) v = r.gauss() * 0.05f;
    const size_t bytes = lut_packed_bytes(lf, rows, k);
    std::vector<uint8_t> wbuf(bytes + 64);
    if (lut_is_kq(lf)) {  // any byte sub-scale / sub-min; fp16 d, dmin as the mode picks them
      std::vector<uint8_t> ksc(sc.size()), km(sc.size());
      for (size_t i = 0; i < ksc.size(); ++i) {
        ksc[i] = uint8_t(c.mode == 1 ? (lf.has_offset ? 255 : 0x80) : r.below(256));  // int8 -128 without offset
        km[i] = uint8_t(r.below(256));
      }
      std::vector<float> d(size_t(rows * (k / kLutSuperK))), dmin(d.size());
      for (auto& v : d) v = c.mode == 1 ? 1.0f : fp16_to_f32(pick_f16(r, c.mode == 2 ? 2 : 0));
      for (auto& v : dmin) v = fp16_to_f32(pick_f16(r, c.mode == 2 ? 2 : 0));
      lut_pack_kq(lf, rows, k, q.data(), ksc.data(), km.data(), d.data(), dmin.data(), wbuf.data() + c.mis);
    } else {
      lut_pack(lf, rows, k, q.data(), sc.data(), of.data(), wbuf.data() + c.mis);
    }
    const LutWeights w{wbuf.data() + c.mis, rows, k, lf};
    const int64_t n_tok = gemm ? c.n_tok : 1;
    std::vector<float> x(size_t(n_tok * k));
    fill_lut_x(r, c.mode, x, k);
    Tables t;
    const int ag = lut_is_kq(lf) ? kLutSuperK * c.ag_mult : c.G * c.ag_mult;  // k-quant: one table scale per 256
    build_tables(x, n_tok, k, ag, c.mis ^ 1, &t);
    const std::string tag = fmt("G=%d scale_bytes=%d offset=%d rows=%lld k=%lld n_tok=%lld ag=%d misalign=%d mode=%s", c.G,
                                c.sb, lf.has_offset, (long long)rows, (long long)k, (long long)n_tok, ag,
                                c.mis, kModeName[c.mode]);
    // row ranges: all rows; from row block 1 to one short of the end; an unaligned window
    const int64_t ranges[3][2] = {{0, rows}, {16, rows - 1}, {rows / 3, rows - rows / 4}};
    for (int ri = 0; ri < 3; ++ri) {
      const int64_t b = ranges[ri][0], e = ranges[ri][1];
      if (ri > 0 && (b >= e || (ri == 1 && rows <= 16))) continue;
      const int64_t y_stride = rows + (c.mis & 1) * 3;
      const size_t ny = size_t(n_tok * y_stride) + 8;
      std::vector<float> yr(ny, 1234.5f), ys(ny, 1234.5f);
      if (gemm) {
        reinterpret_cast<LutGemmFn>(ref)(&w, t.acts.data(), n_tok, b, e, yr.data() + 1, y_stride);
        reinterpret_cast<LutGemmFn>(simd)(&w, t.acts.data(), n_tok, b, e, ys.data() + 1, y_stride);
      } else {
        reinterpret_cast<LutGemvFn>(ref)(&w, t.acts.data(), b, e, yr.data() + 1);
        reinterpret_cast<LutGemvFn>(simd)(&w, t.acts.data(), b, e, ys.data() + 1);
      }
      const int64_t at = first_diff(yr.data(), ys.data(), ny);
      rep.check(at < 0, kModeName[c.mode], fmt("%s rows[%lld,%lld)%s", tag.c_str(), (long long)b, (long long)e,
                            diff_note(yr.data() + 1, ys.data() + 1, at - 1, y_stride).c_str()));
    }
  }
}

void check_lut_build(LutBuildFn ref, LutBuildFn simd, Report& rep) {
  Rng r;
  for (int ag : {16, 32, 64, 128})
    for (int64_t ng : {1, 2, 3, 7})
      for (int mode = 0; mode < 3; ++mode) {
        const int64_t k = ag * ng;
        std::vector<float> x(static_cast<size_t>(k));
        fill_lut_x(r, mode, x, k);
        const int64_t ranges[2][2] = {{0, ng}, {ng / 2, ng - (ng > 2)}};
        for (auto& rg : ranges) {
          if (rg[0] >= rg[1]) continue;
          const int mis = int(ng % 4);
          std::vector<int8_t> ta(size_t(k * 4 + 8), 7), tb(ta);
          std::vector<float> sa(size_t(k / ag + 2), 1234.5f), sb(sa), ua(size_t(k / 16 + 2), 1234.5f), ub(ua);
          ref(x.data(), k, ag, rg[0], rg[1], ta.data() + mis, sa.data() + 1, ua.data() + 1);
          simd(x.data(), k, ag, rg[0], rg[1], tb.data() + mis, sb.data() + 1, ub.data() + 1);
          const bool ok = ta == tb && first_diff(sa.data(), sb.data(), sa.size()) < 0 &&
                          first_diff(ua.data(), ub.data(), ua.size()) < 0;
          rep.check(ok, kModeName[mode], fmt("k=%lld ag=%d groups[%lld,%lld) mode=%s tab_misalign=%d", (long long)k, ag,
                            (long long)rg[0], (long long)rg[1], kModeName[mode], mis));
        }
      }
}

}  // namespace

int main() {
  int64_t kernels = 0, cases = 0, failed = 0;
  std::vector<std::string> uncovered;
  for (const Entry* e = kEntries; e->name; ++e) {
    if (e->isa != kTarget) continue;
    const Entry* twin = nullptr;
    for (const Entry* f = kEntries; f->name; ++f)
      if (f->isa == Isa::REF && f->op == e->op && f->wtype == e->wtype) twin = f;
    if (!twin) {
      uncovered.push_back(std::string(e->name) + ": no REF twin registered with the same op and type");
      continue;
    }
    Report rep;
    const TypeInfo* ti = type_info(e->wtype);
    switch (e->op) {
      case KernelOp::QUANT_ACT:
        check_quant_act(reinterpret_cast<QuantizeActFn>(twin->fn), reinterpret_cast<QuantizeActFn>(e->fn), rep);
        break;
      case KernelOp::MATMUL_Q8:
        if (ti) check_matmul<ActQ8>(*ti, reinterpret_cast<MatmulQ8Fn>(twin->fn), reinterpret_cast<MatmulQ8Fn>(e->fn), true, rep);
        break;
      case KernelOp::MATMUL_F32:  // not bit-exact by contract (native/ref/matmul_f32.cc): checked to a bound
        if (ti) check_matmul<float>(*ti, reinterpret_cast<MatmulF32Fn>(twin->fn), reinterpret_cast<MatmulF32Fn>(e->fn), false, rep);
        break;
      case KernelOp::DEQUANT:
        if (ti) check_dequant(*ti, reinterpret_cast<DequantRowFn>(twin->fn), reinterpret_cast<DequantRowFn>(e->fn), rep);
        break;
      case KernelOp::LUT_BUILD:
        check_lut_build(reinterpret_cast<LutBuildFn>(twin->fn), reinterpret_cast<LutBuildFn>(e->fn), rep);
        break;
      case KernelOp::LUT_GEMV:
      case KernelOp::LUT_GEMM:
        check_lut(e->wtype, e->op == KernelOp::LUT_GEMM, twin->fn, e->fn, rep);
        break;
    }
    if (rep.cases == 0) {
      uncovered.push_back(std::string(e->name) + fmt(": no input generator for type id %d (add its block layout to type_infos)", e->wtype));
      continue;
    }
    ++kernels;
    cases += rep.cases;
    failed += rep.failed;
    std::string fl = "[";
    for (size_t i = 0; i < rep.failures.size(); ++i) fl += (i ? ", " : "") + json_str(rep.failures[i]);
    std::string gl = "{";
    for (size_t i = 0; i < rep.groups.size(); ++i)
      gl += (i ? ", " : "") + json_str(rep.groups[i].first) + fmt(": %lld", (long long)rep.groups[i].second);
    std::printf("{\"kernel\": %s, \"op\": \"%s\", \"ref\": %s, \"cases\": %lld, \"failed\": %lld, "
                "\"failed_by_group\": %s}, \"failures\": %s]}\n",
                json_str(e->name).c_str(), op_str(e->op), json_str(twin->name).c_str(), (long long)rep.cases,
                (long long)rep.failed, gl.c_str(), fl.c_str());
    std::fflush(stdout);
  }
  std::string ul = "[";
  for (size_t i = 0; i < uncovered.size(); ++i) ul += (i ? ", " : "") + json_str(uncovered[i]);
  std::printf("{\"summary\": {\"isa\": \"%s\", \"kernels\": %lld, \"cases\": %lld, \"failed\": %lld, \"uncovered\": %s]}}\n",
              kTargetName, (long long)kernels, (long long)cases, (long long)failed, ul.c_str());
  return (failed || !uncovered.empty() || kernels == 0) ? 1 : 0;
}
