// Cross-ISA check of the attention kernel: runs the scalar twin and one SIMD kernel (chosen at compile
// time: -DATTN_CHECK_FN=attn_head_f16__neon) over a sweep of head sizes, lengths and strides and
// counts outputs that differ in any bit. Built and run by tests/test_attention_kernels.py (NEON
// under qemu-aarch64). Prints "<cases> checked <failures> failed".
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "lutllm/kernel_decls.h"

using namespace lutllm;

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  int cases = 0, failed = 0;
  for (int hd : {4, 8, 20, 64, 72, 128, 256})
    for (int len : {1, 2, 3, 5, 17, 130})
      for (float amp : {0.1f, 3.f, 40.f}) {
        const int stride = hd + 8 * (len % 3);
        std::vector<float> q(static_cast<size_t>(hd));
        std::vector<fp16_t> k(static_cast<size_t>(len) * stride), v(k.size());
        for (auto& x : q) x = nd(rng) * amp;
        for (auto& x : k) x = f32_to_fp16(nd(rng));
        for (auto& x : v) x = f32_to_fp16(nd(rng));
        std::vector<float> s1(static_cast<size_t>(len)), s2(s1), o1(static_cast<size_t>(hd)), o2(o1);
        attn_head_f16__ref(q.data(), k.data(), v.data(), len, stride, hd, 0.125f, s1.data(), o1.data());
        ATTN_CHECK_FN(q.data(), k.data(), v.data(), len, stride, hd, 0.125f, s2.data(), o2.data());
        ++cases;
        if (std::memcmp(o1.data(), o2.data(), o1.size() * sizeof(float)) != 0) {
          ++failed;
          std::printf("mismatch hd=%d len=%d amp=%g\n", hd, len, double(amp));
        }
      }
  std::printf("%d checked %d failed\n", cases, failed);
  return failed != 0;
}
