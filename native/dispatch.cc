// Kernel dispatch: reads CPU features once (cpuid/xgetbv on x86-64, getauxval on aarch64), builds the
// registry list from kernels.inc, and picks the best kernel per op. Compiled for the baseline ISA only.
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

#include "lutllm/kernel_decls.h"
#include "lutllm/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace lutllm {

// ---------------------------------------------------------------------------------------------
// type facts

const TypeTraits& type_traits(GgmlType t) {
  static const TypeTraits unknown{"unknown", 1, 0};
  static const TypeTraits table[kGgmlTypeCount] = {
      /* 0 F32   */ {"F32", 1, 4},
      /* 1 F16   */ {"F16", 1, 2},
      /* 2 Q4_0  */ {"Q4_0", QK32, sizeof(block_q4_0)},
      /* 3 Q4_1  */ {"Q4_1", QK32, sizeof(block_q4_1)},
      /* 4       */ {"Q4_2(removed)", 1, 0},
      /* 5       */ {"Q4_3(removed)", 1, 0},
      /* 6 Q5_0  */ {"Q5_0", QK32, sizeof(block_q5_0)},
      /* 7 Q5_1  */ {"Q5_1", QK32, sizeof(block_q5_1)},
      /* 8 Q8_0  */ {"Q8_0", QK32, sizeof(block_q8_0)},
      /* 9 Q8_1  */ {"Q8_1", QK32, 36},
      /* 10 Q2_K */ {"Q2_K", QK_K, sizeof(block_q2_K)},
      /* 11 Q3_K */ {"Q3_K", QK_K, sizeof(block_q3_K)},
      /* 12 Q4_K */ {"Q4_K", QK_K, sizeof(block_q4_K)},
      /* 13 Q5_K */ {"Q5_K", QK_K, sizeof(block_q5_K)},
      /* 14 Q6_K */ {"Q6_K", QK_K, sizeof(block_q6_K)},
      /* 15 Q8_K */ {"Q8_K", QK_K, 292},
      /* 16 */ {"IQ2_XXS", QK_K, 66},
      /* 17 */ {"IQ2_XS", QK_K, 74},
      /* 18 */ {"IQ3_XXS", QK_K, 98},
      /* 19 */ {"IQ1_S", QK_K, 50},
      /* 20 */ {"IQ4_NL", QK32, 18},
      /* 21 */ {"IQ3_S", QK_K, 110},
      /* 22 */ {"IQ2_S", QK_K, 82},
      /* 23 */ {"IQ4_XS", QK_K, 136},
      /* 24 */ {"I8", 1, 1},
      /* 25 */ {"I16", 1, 2},
      /* 26 */ {"I32", 1, 4},
      /* 27 */ {"I64", 1, 8},
      /* 28 */ {"F64", 1, 8},
      /* 29 */ {"IQ1_M", QK_K, 56},
      /* 30 BF16 */ {"BF16", 1, 2},
      /* 31 */ {"Q4_0_4_4(removed)", 1, 0},
      /* 32 */ {"Q4_0_4_8(removed)", 1, 0},
      /* 33 */ {"Q4_0_8_8(removed)", 1, 0},
      /* 34 TQ1_0 */ {"TQ1_0", QK_K, sizeof(block_tq1_0)},
      /* 35 TQ2_0 */ {"TQ2_0", QK_K, sizeof(block_tq2_0)},
      /* 36 */ {"IQ4_NL_4_4(removed)", 1, 0},
      /* 37 */ {"IQ4_NL_4_8(removed)", 1, 0},
      /* 38 */ {"IQ4_NL_8_8(removed)", 1, 0},
      /* 39 */ {"MXFP4", QK32, 17},
  };
  const uint32_t i = uint32_t(t);
  return i < uint32_t(kGgmlTypeCount) ? table[i] : unknown;
}

bool type_known(uint32_t t) { return t < uint32_t(kGgmlTypeCount) && type_traits(t).block_bytes > 0; }

// ---------------------------------------------------------------------------------------------
// CPU features

namespace {

struct CpuFeatures {
  bool avx2 = false, avx512 = false, neon = false, dotprod = false;
};

CpuFeatures detect_cpu() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave) return f;
  unsigned xlo, xhi;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool ymm_os = (xlo & 0x6) == 0x6;           // SSE + AVX state saved by the OS
  const bool zmm_os = ymm_os && (xlo & 0xE0) == 0xE0;  // opmask + ZMM state
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31), avx512vbmi = c & (1u << 1), avx512vnni = c & (1u << 11);
  f.avx2 = ymm_os && avx2 && fma && f16c;
  f.avx512 = f.avx2 && zmm_os && avx512f && avx512dq && avx512bw && avx512vl && avx512vbmi && avx512vnni;
#elif defined(__aarch64__)
  f.neon = true;  // Advanced SIMD is part of the aarch64 baseline
#if defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP);
  f.dotprod = hw & (1ul << 20);  // HWCAP_ASIMDDP
#endif
#endif
  return f;
}

const CpuFeatures& cpu() {
  static const CpuFeatures f = detect_cpu();
  return f;
}

// ISA families: a cap allows REF plus members of its family at or below its rank.
int isa_family(Isa i) {
  switch (i) {
    case Isa::AVX2: case Isa::AVX512: return 1;
    case Isa::NEON: case Isa::NEON_DOTPROD: return 2;
    default: return 0;
  }
}
int isa_rank(Isa i) {
  switch (i) {
    case Isa::AVX2: case Isa::NEON: return 1;
    case Isa::AVX512: case Isa::NEON_DOTPROD: return 2;
    default: return 0;
  }
}
bool isa_allowed(Isa i, Isa cap) {
  if (i == Isa::REF) return true;
  return isa_family(i) == isa_family(cap) && isa_rank(i) <= isa_rank(cap);
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::REF: return "ref";
    case Isa::AVX2: return "avx2";
    case Isa::AVX512: return "avx512";
    case Isa::NEON: return "neon";
    case Isa::NEON_DOTPROD: return "dotprod";
  }
  return "?";
}

bool isa_from_name(const std::string& name, Isa* out) {
  for (int i = 0; i < kIsaCount; ++i) {
    if (name == isa_name(Isa(i))) {
      *out = Isa(i);
      return true;
    }
  }
  return false;
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::REF: return true;
    case Isa::AVX2: return cpu().avx2;
    case Isa::AVX512: return cpu().avx512;
    case Isa::NEON: return cpu().neon;
    case Isa::NEON_DOTPROD: return cpu().dotprod;
  }
  return false;
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (int i = 0; i < kIsaCount; ++i)
    if (isa_supported(Isa(i))) out.push_back(Isa(i));
  return out;
}

const char* op_name(KernelOp op) {
  switch (op) {
    case KernelOp::DEQUANT: return "dequant";
    case KernelOp::QUANT_ACT: return "quant_act";
    case KernelOp::MATMUL_Q8: return "matmul_q8";
    case KernelOp::MATMUL_F32: return "matmul_f32";
    case KernelOp::LUT_BUILD: return "lut_build";
    case KernelOp::LUT_GEMV: return "lut_gemv";
    case KernelOp::LUT_GEMM: return "lut_gemm";
    case KernelOp::ATTN_HEAD: return "attn_head";
    case KernelOp::SILU_MUL: return "silu_mul";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// registry and selection

const std::vector<KernelInfo>& kernel_registry() {
  static const std::vector<KernelInfo> list = [] {
    std::vector<KernelInfo> v;
#define LUTLLM_DEQUANT(type, fn, isa) \
  v.push_back({KernelOp::DEQUANT, int(GgmlType::type), #fn, Isa::isa, reinterpret_cast<void*>(&fn)});
#define LUTLLM_QUANT_ACT(fn, isa) \
  v.push_back({KernelOp::QUANT_ACT, -1, #fn, Isa::isa, reinterpret_cast<void*>(&fn)});
#define LUTLLM_MATMUL_Q8(type, fn, isa) \
  v.push_back({KernelOp::MATMUL_Q8, int(GgmlType::type), #fn, Isa::isa, reinterpret_cast<void*>(&fn)});
#define LUTLLM_MATMUL_F32(type, fn, isa) \
  v.push_back({KernelOp::MATMUL_F32, int(GgmlType::type), #fn, Isa::isa, reinterpret_cast<void*>(&fn)});
#define LUTLLM_LUT_BUILD(fn, isa) \
  v.push_back({KernelOp::LUT_BUILD, -1, #fn, Isa::isa, reinterpret_cast<void*>(&fn)});
#define LUTLLM_LUT_GEMV(kind, fn, isa) \
  v.push_back({KernelOp::LUT_GEMV, int(LutKind::kind), #fn, Isa::isa, reinterpret_cast<void*>(&fn)});
#define LUTLLM_LUT_GEMM(kind, fn, isa) \
  v.push_back({KernelOp::LUT_GEMM, int(LutKind::kind), #fn, Isa::isa, reinterpret_cast<void*>(&fn)});
#define LUTLLM_ATTN_HEAD(fn, isa) \
  v.push_back({KernelOp::ATTN_HEAD, -1, #fn, Isa::isa, reinterpret_cast<void*>(&fn)});
#define LUTLLM_SILU_MUL(fn, isa) \
  v.push_back({KernelOp::SILU_MUL, -1, #fn, Isa::isa, reinterpret_cast<void*>(&fn)});
#include "kernels.inc"
    return v;
  }();
  return list;
}

const KernelInfo* find_kernel(const std::string& name) {
  for (const auto& k : kernel_registry())
    if (name == k.name) return &k;
  return nullptr;
}

namespace {

KernelTable g_table;
std::once_flag g_once;

Isa best_supported_isa() {
  Isa best = Isa::REF;
  for (Isa i : available_isas())
    if (isa_rank(i) >= isa_rank(best)) best = i;
  return best;
}

void fill_table(Isa cap) {
  KernelTable t{};
  t.isa_cap = cap;
  int best_q8[kGgmlTypeCount], best_f32[kGgmlTypeCount], best_dq[kGgmlTypeCount], best_qa = -1;
  for (int i = 0; i < kGgmlTypeCount; ++i) best_q8[i] = best_f32[i] = best_dq[i] = -1;
  int best_lb = -1, best_at = -1, best_sm = -1, best_lv[kLutKindCount], best_lm[kLutKindCount];
  for (int i = 0; i < kLutKindCount; ++i) best_lv[i] = best_lm[i] = -1;
  for (const auto& k : kernel_registry()) {
    if (!isa_supported(k.isa) || !isa_allowed(k.isa, cap)) continue;
    const int r = isa_rank(k.isa);
    switch (k.op) {
      case KernelOp::DEQUANT:
        if (r > best_dq[k.wtype]) { best_dq[k.wtype] = r; t.dequant[k.wtype] = reinterpret_cast<DequantRowFn>(k.fn); }
        break;
      case KernelOp::QUANT_ACT:
        if (r > best_qa) { best_qa = r; t.quantize_act = reinterpret_cast<QuantizeActFn>(k.fn); }
        break;
      case KernelOp::MATMUL_Q8:
        if (r > best_q8[k.wtype]) { best_q8[k.wtype] = r; t.matmul_q8[k.wtype] = reinterpret_cast<MatmulQ8Fn>(k.fn); }
        break;
      case KernelOp::MATMUL_F32:
        if (r > best_f32[k.wtype]) { best_f32[k.wtype] = r; t.matmul_f32[k.wtype] = reinterpret_cast<MatmulF32Fn>(k.fn); }
        break;
      case KernelOp::LUT_BUILD:
        if (r > best_lb) { best_lb = r; t.lut_build = reinterpret_cast<LutBuildFn>(k.fn); }
        break;
      case KernelOp::LUT_GEMV:
        if (r > best_lv[k.wtype]) { best_lv[k.wtype] = r; t.lut_gemv[k.wtype] = reinterpret_cast<LutGemvFn>(k.fn); }
        break;
      case KernelOp::LUT_GEMM:
        if (r > best_lm[k.wtype]) { best_lm[k.wtype] = r; t.lut_gemm[k.wtype] = reinterpret_cast<LutGemmFn>(k.fn); }
        break;
      case KernelOp::ATTN_HEAD:
        if (r > best_at) { best_at = r; t.attn_head = reinterpret_cast<AttnHeadFn>(k.fn); }
        break;
      case KernelOp::SILU_MUL:
        if (r > best_sm) { best_sm = r; t.silu_mul = reinterpret_cast<SiluMulFn>(k.fn); }
        break;
    }
  }
  g_table = t;
}

Isa cap_from_env() {
  const char* env = std::getenv("LUTLLM_ISA");
  if (!env || !*env) return best_supported_isa();
  Isa cap;
  if (!isa_from_name(env, &cap))
    throw std::runtime_error(std::string("LUTLLM_ISA='") + env + "' is not one of ref, avx2, avx512, neon, dotprod");
  if (!isa_supported(cap))
    throw std::runtime_error(std::string("LUTLLM_ISA='") + env + "' is not supported by this CPU");
  return cap;
}

}  // namespace

const KernelTable& kernels() {
  std::call_once(g_once, [] { fill_table(cap_from_env()); });
  return g_table;
}

void select_isa(Isa cap) {
  kernels();  // make sure the one-time init has run, so it cannot overwrite this choice later
  if (!isa_supported(cap)) throw std::runtime_error(std::string("ISA '") + isa_name(cap) + "' is not supported by this CPU");
  fill_table(cap);
}

}  // namespace lutllm
