// CPU instruction-set paths of the kernels that pick their vector code at run time
// (the GEMM engine of cpu_gemm.h: masked_linear, vq): the codes their `isa` arguments
// take, which ones the running CPU supports, and the path that runs for a request.
#pragma once

#include <stdexcept>
#include <string>

namespace dqk {

// 0 picks the best the running CPU supports; tests force each one the CPU supports to
// cover them all. kIsaAvx512Bf16 is AVX-512 plus, for bf16 inputs, vdpbf16ps on bf16 pairs
// (other dtypes run the AVX-512 path).
enum Isa { kIsaAuto = 0, kIsaGeneric = 1, kIsaAvx2 = 2, kIsaAvx512 = 3, kIsaAvx512Bf16 = 4 };

// bit i set: path i runs on this CPU (generic always does); the CPU is asked once
inline int supported_cpu_isas() {
  static const int bits = [] {
    int b = 1 << kIsaGeneric;
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v3")) b |= 1 << kIsaAvx2;
    if (__builtin_cpu_supports("x86-64-v4")) {
      b |= 1 << kIsaAvx512;
      if (__builtin_cpu_supports("avx512bf16")) b |= 1 << kIsaAvx512Bf16;
    }
#endif
    return b;
  }();
  return bits;
}

// The path for a requested `isa` (kIsaAuto: the best supported one); one that is unknown
// or does not run here throws std::invalid_argument "<who>: instruction-set path N ...".
inline int pick_cpu_isa(int isa, const char* who) {
  const int bits = supported_cpu_isas();
  if (isa == kIsaAuto) {
    for (int i : {kIsaAvx512Bf16, kIsaAvx512, kIsaAvx2, kIsaGeneric})
      if (bits & (1 << i)) return i;
  }
  if (isa < kIsaGeneric || isa > kIsaAvx512Bf16 || !(bits & (1 << isa)))
    throw std::invalid_argument(std::string(who) + ": instruction-set path " + std::to_string(isa) +
                                " does not run on this CPU (supported "
                                "bit set " +
                                std::to_string(bits) + ")");
  return isa;
}

}  // namespace dqk
