// Harness for bench/neon_icount.py: one NEON LUT GEMV / GEMM call per weight format (or one int8
// matmul call per GGUF type and ISA) between two marker calls, so that a qemu execution trace can
// count the instructions the kernel executes. Weights and tables are random bytes: the kernels have
// no data-dependent branches, so the count depends only on the format and shape.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "lutllm/kernel_decls.h"
#include "lutllm/lut.h"

using namespace lutllm;

extern "C" __attribute__((noinline)) void lutllm_icount_begin(int id) { __asm__ volatile("" ::"r"(id)); }
extern "C" __attribute__((noinline)) void lutllm_icount_end(int id) { __asm__ volatile("" ::"r"(id)); }

namespace {
uint64_t g_state = 0x9E3779B97F4A7C15ull;
uint8_t next_byte() {
  g_state ^= g_state << 13;
  g_state ^= g_state >> 7;
  g_state ^= g_state << 17;
  return uint8_t(g_state >> 29);
}

const LutGemvFn kGemv[kLutKindCount] = {nullptr, lut_gemv_w1_g4__neon, lut_gemv_w2_g4__neon, lut_gemv_w3_g4__neon,
                                        lut_gemv_w4_g4__neon, lut_gemv_wt_g4__neon};
const LutGemmFn kGemm[kLutKindCount] = {nullptr, lut_gemm_w1_g4__neon, lut_gemm_w2_g4__neon, lut_gemm_w3_g4__neon,
                                        lut_gemm_w4_g4__neon, lut_gemm_wt_g4__neon};

using MatmulFn = void (*)(const uint8_t*, size_t, int64_t, int64_t, const ActQ8*, int64_t, int64_t, float*, int64_t);
struct Q8Kernel {
  const char* name;
  size_t block_bytes;
  int64_t block_elems;
  MatmulFn fn;
};
const Q8Kernel kQ8[] = {
    {"q4_0:ref", sizeof(block_q4_0), 32, matmul_q4_0_q8__ref},
    {"q4_0:neon", sizeof(block_q4_0), 32, matmul_q4_0_q8__neon},
    {"q4_0:dotprod", sizeof(block_q4_0), 32, matmul_q4_0_q8__dotprod},
    {"q4_1:ref", sizeof(block_q4_1), 32, matmul_q4_1_q8__ref},
    {"q4_1:neon", sizeof(block_q4_1), 32, matmul_q4_1_q8__neon},
    {"q4_1:dotprod", sizeof(block_q4_1), 32, matmul_q4_1_q8__dotprod},
    {"q8_0:ref", sizeof(block_q8_0), 32, matmul_q8_0_q8__ref},
    {"q8_0:neon", sizeof(block_q8_0), 32, matmul_q8_0_q8__neon},
    {"q8_0:dotprod", sizeof(block_q8_0), 32, matmul_q8_0_q8__dotprod},
    {"q5_0:ref", sizeof(block_q5_0), 32, matmul_q5_0_q8__ref},
    {"q5_0:neon", sizeof(block_q5_0), 32, matmul_q5_0_q8__neon},
    {"q5_0:dotprod", sizeof(block_q5_0), 32, matmul_q5_0_q8__dotprod},
    {"q4_k:ref", sizeof(block_q4_K), 256, matmul_q4_K_q8__ref},
    {"q4_k:neon", sizeof(block_q4_K), 256, matmul_q4_K_q8__neon},
    {"q4_k:dotprod", sizeof(block_q4_K), 256, matmul_q4_K_q8__dotprod},
    {"q5_k:ref", sizeof(block_q5_K), 256, matmul_q5_K_q8__ref},
    {"q5_k:neon", sizeof(block_q5_K), 256, matmul_q5_K_q8__neon},
    {"q5_k:dotprod", sizeof(block_q5_K), 256, matmul_q5_K_q8__dotprod},
    {"q6_k:ref", sizeof(block_q6_K), 256, matmul_q6_K_q8__ref},
    {"q6_k:neon", sizeof(block_q6_K), 256, matmul_q6_K_q8__neon},
    {"q6_k:dotprod", sizeof(block_q6_K), 256, matmul_q6_K_q8__dotprod},
};

// One int8 matmul (rows x k weights of a GGUF type, n_tok activation rows) between the markers.
bool run_q8(const char* spec, int id, int64_t rows, int64_t k, int n_tok) {
  for (const Q8Kernel& q : kQ8) {
    if (std::strcmp(q.name, spec) != 0) continue;
    const size_t row_bytes = size_t(k / q.block_elems) * q.block_bytes;
    std::vector<uint8_t> w(row_bytes * size_t(rows));
    for (auto& b : w) b = next_byte();
    std::vector<ActQ8> x(static_cast<size_t>(n_tok * (k / 32)));
    for (auto& a : x) {
      a.d = 0.01f;
      a.s = 0.0f;
      for (auto& c : a.qs) c = int8_t(next_byte() % 255 - 127);
    }
    std::vector<float> y(static_cast<size_t>(n_tok * rows));
    lutllm_icount_begin(id);
    q.fn(w.data(), row_bytes, rows, k, x.data(), k / 32, n_tok, y.data(), rows);
    lutllm_icount_end(id);
    return true;
  }
  return false;
}
}  // namespace

// argv: rows k n_tok, then formats as kind,G,scale_bytes,offset or int8 kernels as type:isa (q6_k:neon)
int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s rows k n_tok kind,G,scale_bytes,offset ...\n", argv[0]);
    return 2;
  }
  const int64_t rows = std::atoll(argv[1]), k = std::atoll(argv[2]);
  const int n_tok = std::atoi(argv[3]);
  for (int a = 4; a < argc; ++a) {
    if (std::strchr(argv[a], ':')) {
      if (!run_q8(argv[a], a - 4, rows, k, n_tok)) {
        std::fprintf(stderr, "unknown int8 kernel %s\n", argv[a]);
        return 2;
      }
      continue;
    }
    LutFormat f{};
    if (std::sscanf(argv[a], "%d,%d,%d,%d", &f.kind, &f.group, &f.scale_bytes, &f.has_offset) != 4) return 2;
    const std::string err = lut_check_format(f, rows, k);
    if (!err.empty()) {
      std::fprintf(stderr, "%s: %s\n", argv[a], err.c_str());
      return 2;
    }
    std::vector<uint8_t> w(lut_packed_bytes(f, rows, k));
    for (auto& b : w) b = next_byte();
    const LutWeights lw{w.data(), rows, k, f};
    const int32_t ag = lut_act_group(f);
    std::vector<float> x(static_cast<size_t>(k));
    for (auto& v : x) v = float(int(next_byte()) - 128) / 64.0f;
    std::vector<int8_t> tab(static_cast<size_t>(n_tok * k * 4));
    std::vector<float> scale(static_cast<size_t>(n_tok * (k / ag))), sum16(size_t(n_tok * (k / 16)));
    std::vector<LutAct> acts(static_cast<size_t>(n_tok));
    for (int t = 0; t < n_tok; ++t) {  // one token's tables, shared by all n_tok (counts do not depend on values)
      int8_t* tb = tab.data() + size_t(t) * k * 4;
      lut_build_g4__ref(x.data(), k, ag, 0, k / ag, tb, scale.data() + t * (k / ag), sum16.data() + t * (k / 16));
      acts[size_t(t)] = LutAct{tb, scale.data() + t * (k / ag), sum16.data() + t * (k / 16), k, ag, 0};
    }
    std::vector<float> y(static_cast<size_t>(n_tok * rows));
    const int id = a - 4;
    if (n_tok == 1) {
      lutllm_icount_begin(id);
      kGemv[f.kind](&lw, acts.data(), 0, rows, y.data());
      lutllm_icount_end(id);
    } else {
      lutllm_icount_begin(id);
      kGemm[f.kind](&lw, acts.data(), n_tok, 0, rows, y.data(), rows);
      lutllm_icount_end(id);
    }
    std::printf("%d %s %d %d %d %d %d %lld %lld\n", id, n_tok == 1 ? "gemv" : "gemm", f.kind, f.group, f.scale_bytes,
                f.has_offset, n_tok, (long long)rows, (long long)k);
  }
  return 0;
}
