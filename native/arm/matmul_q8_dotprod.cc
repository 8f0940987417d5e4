// NEON + dotprod (armv8.2-a sdot, picked at run time) int8 matmuls of Q8_0, Q5_0 and Q6_K weights:
// the skeleton of matmul_q8_neon.h with one sdot per 16-element dot. Built with +dotprod (CMake).
#include "matmul_q8_neon.h"

#include "lutllm/kernel_decls.h"

namespace lutllm {
namespace {
struct DotSdot {
  static int32x4_t dot(int8x16_t c, int8x16_t x) { return vdotq_s32(vdupq_n_s32(0), c, x); }
  static int32x4_t dot2(int8x16_t c0, int8x16_t x0, int8x16_t c1, int8x16_t x1) {
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), c0, x0), c1, x1);
  }
};
}  // namespace

LUTLLM_Q8_NEON_ENTRY_POINTS(DotSdot, dotprod)

}  // namespace lutllm
