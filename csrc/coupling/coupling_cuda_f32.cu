// coupling CUDA kernels instantiated for float storage (one file per dtype: parallel builds).
#include "coupling_cuda.cuh"

namespace dqk {
namespace coupling {
DQK_COUPLING_INSTANTIATE(float)
}  // namespace coupling
}  // namespace dqk
