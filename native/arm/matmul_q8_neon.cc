// NEON (baseline aarch64) int8 matmuls of Q8_0, Q5_0 and Q6_K weights: the skeleton of
// matmul_q8_neon.h with 16-element dots from smull / smull2 and pairwise widening adds.
#include "matmul_q8_neon.h"

#include "lutllm/kernel_decls.h"

namespace lutllm {
namespace {
// |c * x| <= 128 * 127 fits int16; the pairwise adds widen to int32 before anything can overflow
struct DotNeon {
  static int32x4_t dot(int8x16_t c, int8x16_t x) {
    return vpadalq_s16(vpaddlq_s16(vmull_s8(vget_low_s8(c), vget_low_s8(x))), vmull_high_s8(c, x));
  }
  // c0 . x0 + c1 . x1 into one set of partial sums (the products of both halves widen the same way)
  static int32x4_t dot2(int8x16_t c0, int8x16_t x0, int8x16_t c1, int8x16_t x1) {
    const int32x4_t a = vpadalq_s16(vpaddlq_s16(vmull_s8(vget_low_s8(c0), vget_low_s8(x0))), vmull_high_s8(c0, x0));
    return vpadalq_s16(vpadalq_s16(a, vmull_s8(vget_low_s8(c1), vget_low_s8(x1))), vmull_high_s8(c1, x1));
  }
};
}  // namespace

LUTLLM_Q8_NEON_ENTRY_POINTS(DotNeon, neon)

}  // namespace lutllm
