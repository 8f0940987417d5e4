// Cross-ISA check of the SwiGLU gate kernel: the scalar twin against one SIMD kernel (chosen at
// compile time: -DSILU_CHECK_FN=silu_mul__neon) on random and special inputs at every length 0..40
// and at misaligned starts; counts outputs that differ in any bit. Built and run by
// tests/test_activation_kernels.py (NEON under qemu-aarch64). Prints "<cases> checked <failures> failed".
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "lutllm/kernel_decls.h"

using namespace lutllm;

int main() {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  const float special[] = {0.f, -0.f, 1e-30f, -1e-30f, 86.9f, 87.f, 87.5f, 88.f, 88.5f, 100.f, -86.9f, -87.f, -87.5f,
                           -88.f, -88.5f, -100.f, 1e30f, -1e30f, std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  int cases = 0, failed = 0;
  for (int n = 0; n <= 40; ++n)
    for (int off = 0; off < 3; ++off)
      for (float amp : {1.f, 12.f, 60.f}) {
        std::vector<float> a(size_t(n + off)), b(a.size());
        for (size_t i = 0; i < a.size(); ++i) {
          a[i] = (i % 5 == 4) ? special[(i + size_t(n)) % (sizeof(special) / sizeof(float))] : nd(rng) * amp;
          b[i] = nd(rng);
        }
        std::vector<float> r(a), s(a);
        silu_mul__ref(r.data() + off, b.data() + off, n);
        SILU_CHECK_FN(s.data() + off, b.data() + off, n);
        ++cases;
        if (std::memcmp(r.data(), s.data(), r.size() * sizeof(float)) != 0) {
          ++failed;
          std::printf("mismatch n=%d off=%d amp=%g\n", n, off, double(amp));
        }
      }
  std::printf("%d checked %d failed\n", cases, failed);
  return failed != 0;
}
