// End-to-end check of the aarch64 build: the whole runtime (native kernels + runtime + C API) built
// with the cross compiler and run under qemu-aarch64 on a real GGUF. Evaluates the prompt given as
// token ids, greedily decodes n tokens and prints them, then the last position's logits as hex words
// (so the caller can compare runs with different LUTLLM_ISA settings bit for bit).
//   usage: arm_e2e MODEL.gguf N_GEN TOKEN...
// Built and run by tests/test_aarch64_e2e.py.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "lutllm.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL N_GEN TOKEN...\n", argv[0]);
    return 2;
  }
  const int n_gen = std::atoi(argv[2]);
  std::vector<int32_t> tokens;
  for (int i = 3; i < argc; ++i) tokens.push_back(int32_t(std::atoi(argv[i])));
  const char* err = nullptr;
  lutllm_model* m = lutllm_load(argv[1], 64, 2, &err);
  if (!m) {
    std::fprintf(stderr, "load failed: %s\n", err ? err : "?");
    return 1;
  }
  const int32_t n_vocab = lutllm_n_vocab(m);
  std::vector<float> logits(static_cast<size_t>(n_vocab));
  int32_t pos = 0;
  std::printf("tokens");
  for (int step = 0; step <= n_gen; ++step) {
    const int32_t n = step == 0 ? int32_t(tokens.size()) : 1;
    const int32_t* in = step == 0 ? tokens.data() : &tokens.back();
    if (lutllm_eval(m, in, n, pos, logits.data()) != 0) {
      std::fprintf(stderr, "eval failed: %s\n", lutllm_last_error());
      return 1;
    }
    pos += n;
    if (step == n_gen) break;
    int32_t best = 0;
    for (int32_t v = 1; v < n_vocab; ++v)
      if (logits[size_t(v)] > logits[size_t(best)]) best = v;
    tokens.push_back(best);
    std::printf(" %d", int(best));
  }
  std::printf("\nlogits");
  for (int32_t v = 0; v < n_vocab; ++v) {
    uint32_t bits;
    std::memcpy(&bits, &logits[size_t(v)], 4);
    std::printf(" %08" PRIx32, bits);
  }
  std::printf("\n");
  lutllm_free(m);
  return 0;
}
