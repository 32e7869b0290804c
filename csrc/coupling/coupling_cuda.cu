// Host entry point of the coupling CUDA kernels: pick the instantiation for the dtype.
#include "coupling_cuda.cuh"

namespace dqk {
namespace coupling {

DQK_COUPLING_DECLARE(float)
DQK_COUPLING_DECLARE(double)
DQK_COUPLING_DECLARE(__half)
DQK_COUPLING_DECLARE(__nv_bfloat16)

void run_cuda(Kind kind, const Args& a, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  visit_dtype<__half, __nv_bfloat16>(a.dtype, "coupling cuda kernels",
                                     [&](auto t) { launch<decltype(t)>(kind, a, s); });
}

}  // namespace coupling
}  // namespace dqk
