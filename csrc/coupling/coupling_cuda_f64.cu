// coupling CUDA kernels instantiated for double storage (one file per dtype: parallel builds).
#include "coupling_cuda.cuh"

namespace dqk {
namespace coupling {
DQK_COUPLING_INSTANTIATE(double)
}  // namespace coupling
}  // namespace dqk
