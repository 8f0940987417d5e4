// Standalone check that one ISA's LUT kernels equal the scalar twins bit for bit (built and run by
// tests/test_lut_cross.py: aarch64 NEON under qemu, or x86 AVX-512 on SIMDe). Not a unit-test framework.
//   build: g++ -std=c++17 -O2 -ffp-contract=off -Inative/include tests/cpp/lut_check.cc
//          native/ref/lut_ref.cc native/ref/lut_pack.cc <ISA file> -DLUT_CHECK_ISA=neon|avx512
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "lutllm/kernel_decls.h"
#include "lutllm/lut.h"

using namespace lutllm;

#if !defined(LUT_CHECK_ISA)
#error "define LUT_CHECK_ISA (neon or avx512)"
#endif
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define SIMD(name) CAT(name, LUT_CHECK_ISA)

namespace {

struct Rng {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  uint32_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return uint32_t(s >> 11);
  }
  float gauss() {  // sum of uniforms: cheap, roughly normal, has sign and spread
    float a = 0;
    for (int i = 0; i < 4; ++i) a += float(next() & 0xFFFF) / 65536.0f - 0.5f;
    return a;
  }
};

const LutGemvFn kRefGemv[6] = {nullptr, lut_gemv_w1_g4__ref, lut_gemv_w2_g4__ref, lut_gemv_w3_g4__ref,
                               lut_gemv_w4_g4__ref, lut_gemv_wt_g4__ref};
const LutGemmFn kRefGemm[6] = {nullptr, lut_gemm_w1_g4__ref, lut_gemm_w2_g4__ref, lut_gemm_w3_g4__ref,
                               lut_gemm_w4_g4__ref, lut_gemm_wt_g4__ref};
const LutGemvFn kSimdGemv[6] = {nullptr, SIMD(lut_gemv_w1_g4__), SIMD(lut_gemv_w2_g4__), SIMD(lut_gemv_w3_g4__),
                                SIMD(lut_gemv_w4_g4__), SIMD(lut_gemv_wt_g4__)};
const LutGemmFn kSimdGemm[6] = {nullptr, SIMD(lut_gemm_w1_g4__), SIMD(lut_gemm_w2_g4__), SIMD(lut_gemm_w3_g4__),
                                SIMD(lut_gemm_w4_g4__), SIMD(lut_gemm_wt_g4__)};
#if defined(LUT_CHECK_HAS_BUILD)
const LutBuildFn kSimdBuild = SIMD(lut_build_g4__);
#else
const LutBuildFn kSimdBuild = nullptr;
#endif

int g_pass = 0, g_fail = 0;

void expect(bool ok, const std::string& what) {
  if (ok) {
    ++g_pass;
  } else {
    ++g_fail;
    if (g_fail <= 20) std::printf("FAIL %s\n", what.c_str());
  }
}

// Tables for n_tok vectors, placed at byte offset `mis` in their buffers.
struct Tables {
  std::vector<int8_t> tab;
  std::vector<float> sc, s16;
  std::vector<LutAct> acts;
};

void build_tables(const std::vector<float>& x, int64_t n_tok, int64_t k, int ag, int mis, LutBuildFn fn, Tables* t) {
  t->tab.assign(size_t(n_tok * k * 4 + 64), 0);
  t->sc.assign(size_t(n_tok * (k / ag)), 0);
  t->s16.assign(size_t(n_tok * (k / 16)), 0);
  t->acts.resize(size_t(n_tok));
  for (int64_t i = 0; i < n_tok; ++i) {
    int8_t* tb = t->tab.data() + mis + i * k * 4;
    fn(x.data() + i * k, k, ag, 0, k / ag, tb, t->sc.data() + i * (k / ag), t->s16.data() + i * (k / 16));
    t->acts[size_t(i)] = LutAct{tb, t->sc.data() + i * (k / ag), t->s16.data() + i * (k / 16), k, ag, 0};
  }
}

void check_case(Rng& rng, int kind, int G, int sb, int off, int64_t rows, int64_t k, int n_tok, int mis, bool extreme) {
  const LutFormat fmt{kind, G, sb, kind == 5 ? 0 : off};
  char tag[160];
  std::snprintf(tag, sizeof tag, "kind=%d G=%d sb=%d off=%d rows=%lld k=%lld n_tok=%d mis=%d%s", kind, G, sb, fmt.has_offset,
                (long long)rows, (long long)k, n_tok, mis, extreme ? " extreme" : "");
  std::vector<uint8_t> q(size_t(rows * k));
  const int qmax = kind == 5 ? 0 : (1 << kind) - 1;
  for (auto& c : q) {
    if (kind == 5) c = uint8_t(int8_t(extreme ? 1 : int(rng.next() % 3) - 1));
    else c = uint8_t(extreme ? qmax : int(rng.next() % uint32_t(qmax + 1)));
  }
  std::vector<float> sc(size_t(rows * (k / G))), of(sc.size());
  for (auto& v : sc) v = extreme ? 1.0f : rng.gauss() * 0.1f;
  for (auto& v : of) v = rng.gauss() * 0.05f;
  const size_t bytes = lut_packed_bytes(fmt, rows, k);
  std::vector<uint8_t> wbuf(bytes + 64);
  if (lut_is_kq(fmt)) {  // k-quant sub-scales: any byte sc, m; fp16 d, dmin of either sign
    std::vector<uint8_t> ksc(sc.size()), km(sc.size());
    for (size_t i = 0; i < ksc.size(); ++i) {
      ksc[i] = uint8_t(extreme ? (fmt.has_offset ? 255 : 0x80) : rng.next() & 0xFF);  // int8 -128 without offset
      km[i] = uint8_t(rng.next() & 0xFF);
    }
    std::vector<float> d(size_t(rows * (k / kLutSuperK))), dmin(d.size());
    for (auto& v : d) v = extreme ? 1.0f : fp16_to_f32(f32_to_fp16(rng.gauss() * 0.01f));
    for (auto& v : dmin) v = fp16_to_f32(f32_to_fp16(rng.gauss() * 0.01f));
    lut_pack_kq(fmt, rows, k, q.data(), ksc.data(), km.data(), d.data(), dmin.data(), wbuf.data() + mis);
  } else {
    lut_pack(fmt, rows, k, q.data(), sc.data(), of.data(), wbuf.data() + mis);
  }
  const LutWeights w{wbuf.data() + mis, rows, k, fmt};

  std::vector<float> x(size_t(n_tok * k));
  for (size_t i = 0; i < x.size(); ++i) x[i] = extreme ? ((i / k) & 1 ? -3.0f : 3.0f) : rng.gauss() * 2.0f;
  Tables tr, ts;
  build_tables(x, n_tok, k, lut_act_group(fmt), mis, lut_build_g4__ref, &tr);  // k-quant: one table scale per 256
  if (kSimdBuild) {
    build_tables(x, n_tok, k, lut_act_group(fmt), mis ^ 1, kSimdBuild, &ts);
    bool same = std::memcmp(tr.sc.data(), ts.sc.data(), tr.sc.size() * 4) == 0 &&
                std::memcmp(tr.s16.data(), ts.s16.data(), tr.s16.size() * 4) == 0;
    for (int64_t i = 0; i < n_tok && same; ++i)
      same = std::memcmp(tr.acts[size_t(i)].tab, ts.acts[size_t(i)].tab, size_t(k * 4)) == 0;
    expect(same, std::string("build ") + tag);
  }
  const size_t ny = size_t(n_tok * rows);
  std::vector<float> yr(ny, -1.0f), ys(ny, -1.0f), yv(ny, -1.0f);
  kRefGemm[kind](&w, tr.acts.data(), n_tok, 0, rows, yr.data(), rows);
  kSimdGemm[kind](&w, tr.acts.data(), n_tok, 0, rows, ys.data(), rows);
  for (int t = 0; t < n_tok; ++t) kSimdGemv[kind](&w, &tr.acts[size_t(t)], 0, rows, yv.data() + t * rows);
  expect(std::memcmp(yr.data(), ys.data(), ny * 4) == 0, std::string("gemm ") + tag);
  expect(std::memcmp(yr.data(), yv.data(), ny * 4) == 0, std::string("gemv ") + tag);
  if (rows > 16) {  // a row range that starts at block 1 and ends mid-block
    std::vector<float> a(size_t(rows), 7.0f), b(size_t(rows), 7.0f);
    const int64_t e = rows - 1;
    kRefGemv[kind](&w, &tr.acts[0], 16, e, a.data());
    kSimdGemv[kind](&w, &tr.acts[0], 16, e, b.data());
    expect(std::memcmp(a.data(), b.data(), size_t(rows) * 4) == 0, std::string("range ") + tag);
  }
}

}  // namespace

int main() {
  Rng rng;
  const int groups[] = {16, 32, 64, 128};
  for (int kind = 1; kind <= 5; ++kind)
    for (int G : groups) {
      for (int64_t rows = 1; rows <= 17; ++rows)
        check_case(rng, kind, G, (rows & 1) ? 2 : 4, int(rows & 2) >> 1, rows, 3 * G, 1 + int(rows % 8), int(rows % 4),
                   false);
      check_case(rng, kind, G, 2, 1, 45, 5 * G, 8, 3, false);
      check_case(rng, kind, G, 4, 0, 64, 2 * G, 5, 0, false);
      check_case(rng, kind, G, 2, 1, 33, G, 6, 1, true);  // all-max codes x all +-3: largest |I|
      check_case(rng, kind, G, 2, 0, 16, 8 * G, 2, 2, true);
    }
  // k-quant sub-scales: uint8 sc, m; int8 sc without offset; 4-bit sc | m << 4. Several
  // super-blocks, rows 1..17 and past a row block, GEMV and GEMM token tiles, misaligned buffers
  const int kq[3][2] = {{kLutScaleKQ, 1}, {kLutScaleKQ, 0}, {kLutScaleKQ4, 1}};
  for (int kind = 1; kind <= 4; ++kind)
    for (int G : groups)
      for (const auto& e : kq) {
        for (int64_t rows = 1; rows <= 17; ++rows)
          check_case(rng, kind, G, e[0], e[1], rows, 256 * (1 + rows % 3), 1 + int(rows % 9), int(rows % 4), false);
        check_case(rng, kind, G, e[0], e[1], 33, 512, 5, 3, false);
        check_case(rng, kind, G, e[0], e[1], 33, 256, 6, 1, true);
      }
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
