// coupling CUDA kernels instantiated for __half storage (one file per dtype: parallel builds).
#include "coupling_cuda.cuh"

namespace dqk {
namespace coupling {
DQK_COUPLING_INSTANTIATE(__half)
}  // namespace coupling
}  // namespace dqk
