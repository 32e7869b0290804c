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
  switch (a.dtype) {
    case DType::kFloat32: launch<float>(kind, a, s); return;
    case DType::kFloat64: launch<double>(kind, a, s); return;
    case DType::kFloat16: launch<__half>(kind, a, s); return;
    case DType::kBFloat16: launch<__nv_bfloat16>(kind, a, s); return;
  }
  throw std::invalid_argument("coupling cuda kernels: unsupported dtype code " +
                              std::to_string(int(a.dtype)));
}

}  // namespace coupling
}  // namespace dqk
