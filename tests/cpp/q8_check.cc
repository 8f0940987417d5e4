// Cross-ISA check of the NEON int8 matmuls (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K x ActQ8): baseline NEON and sdot
// against the scalar twins of native/ref/matmul_q8.cc, bit for bit, over random blocks, extreme
// codes and scales, rows 1..9 (row blocks of 4 and their remainders), 1..9 tokens (token tiles of
// 4 and remainders), misaligned weights. Built and run by tests/test_kernels_matmul.py under
// qemu-aarch64. Prints "<cases> checked <failures> failed".
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "lutllm/kernel_decls.h"

using namespace lutllm;

namespace {
using MatmulFn = void (*)(const uint8_t*, size_t, int64_t, int64_t, const ActQ8*, int64_t, int64_t, float*, int64_t);
struct Type {
  const char* name;
  size_t block_bytes;  // per 32 (Q6_K: per 256) elements
  int64_t block_elems;
  MatmulFn ref, neon, sdot;
};
const Type kTypes[] = {
    {"q4_0", sizeof(block_q4_0), 32, matmul_q4_0_q8__ref, matmul_q4_0_q8__neon, matmul_q4_0_q8__dotprod},
    {"q4_1", sizeof(block_q4_1), 32, matmul_q4_1_q8__ref, matmul_q4_1_q8__neon, matmul_q4_1_q8__dotprod},
    {"q5_0", sizeof(block_q5_0), 32, matmul_q5_0_q8__ref, matmul_q5_0_q8__neon, matmul_q5_0_q8__dotprod},
    {"q5_1", sizeof(block_q5_1), 32, matmul_q5_1_q8__ref, matmul_q5_1_q8__neon, matmul_q5_1_q8__dotprod},
    {"q8_0", sizeof(block_q8_0), 32, matmul_q8_0_q8__ref, matmul_q8_0_q8__neon, matmul_q8_0_q8__dotprod},
    {"q4_K", sizeof(block_q4_K), 256, matmul_q4_K_q8__ref, matmul_q4_K_q8__neon, matmul_q4_K_q8__dotprod},
    {"q5_K", sizeof(block_q5_K), 256, matmul_q5_K_q8__ref, matmul_q5_K_q8__neon, matmul_q5_K_q8__dotprod},
    {"q6_K", sizeof(block_q6_K), 256, matmul_q6_K_q8__ref, matmul_q6_K_q8__neon, matmul_q6_K_q8__dotprod},
};

void put_fp16(uint8_t* p, float v) {
  const fp16_t h = f32_to_fp16(v);
  std::memcpy(p, &h, sizeof h);
}

// Random blocks with finite fp16 scales at their places; extreme: every code and scale at its largest magnitude.
void fill(const Type& t, std::vector<uint8_t>& w, size_t off, int64_t nblocks, std::mt19937& rng, bool extreme) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> nd(0.f, 0.02f);
  for (int64_t i = 0; i < nblocks; ++i) {
    uint8_t* b = w.data() + off + size_t(i) * t.block_bytes;
    for (size_t j = 0; j < t.block_bytes; ++j) b[j] = uint8_t(extreme ? 0x80 : byte(rng));
    if (t.block_bytes == sizeof(block_q6_K)) {  // Q6_K: ql, qh all ones (code 63 - 32), scales -128, d at 208
      if (extreme) std::memset(b, 0xFF, 192);
      put_fp16(b + 208, extreme ? 1.0f : nd(rng));
    } else if (t.block_elems == 256) {  // Q4_K / Q5_K: d, dmin at 0, 2; extreme: every code, scale and min 63 / 15 / 31
      if (extreme) std::memset(b + 4, 0xFF, t.block_bytes - 4);
      put_fp16(b, extreme ? 1.0f : nd(rng));
      put_fp16(b + 2, extreme ? 1.0f : nd(rng));
    } else {  // d at 0; Q4_1 / Q5_1: m at 2 (overwrites two code bytes of the others: still random)
      put_fp16(b, extreme ? 1.0f : nd(rng));
      if (t.ref == matmul_q4_1_q8__ref || t.ref == matmul_q5_1_q8__ref) put_fp16(b + 2, extreme ? -1.0f : nd(rng));
    }
  }
}
}  // namespace

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  int cases = 0, failed = 0;
  for (const Type& t : kTypes)
    for (int extreme = 0; extreme < 2; ++extreme)
      for (int64_t rows = 1; rows <= 9; ++rows)
        for (int n_tok : {1, 2, 3, 4, 5, 8, 9}) {
          const int64_t k = 256 * (1 + (rows + n_tok) % 3);
          const size_t row_bytes = size_t(k / t.block_elems) * t.block_bytes, off = size_t(rows % 3);
          std::vector<uint8_t> w(off + size_t(rows) * row_bytes);
          fill(t, w, off, rows * (k / t.block_elems), rng, extreme != 0);
          std::vector<float> x(size_t(n_tok * k));
          for (size_t i = 0; i < x.size(); ++i) x[i] = extreme ? ((i & 1) ? -5.f : 5.f) : nd(rng);
          std::vector<ActQ8> xq(size_t(n_tok * (k / 32)));
          quantize_act_q8__ref(x.data(), xq.data(), int64_t(x.size()));
          const int64_t y_stride = rows + 3;
          for (MatmulFn fn : {t.neon, t.sdot}) {
            std::vector<float> yr(size_t(n_tok * y_stride), -7.f), ys(yr);
            t.ref(w.data() + off, row_bytes, rows, k, xq.data(), k / 32, n_tok, yr.data(), y_stride);
            fn(w.data() + off, row_bytes, rows, k, xq.data(), k / 32, n_tok, ys.data(), y_stride);
            ++cases;
            if (std::memcmp(yr.data(), ys.data(), yr.size() * sizeof(float)) != 0) {
              ++failed;
              if (failed <= 10)
                std::printf("mismatch %s %s rows=%lld n_tok=%d k=%lld extreme=%d\n", t.name,
                            fn == t.neon ? "neon" : "dotprod", (long long)rows, n_tok, (long long)k, extreme);
            }
          }
        }
  std::printf("%d checked %d failed\n", cases, failed);
  return failed ? 1 : 0;
}
