// coupling CUDA kernels instantiated for __nv_bfloat16 storage (one file per dtype: parallel
// builds).
#include "coupling_cuda.cuh"

namespace dqk {
namespace coupling {
DQK_COUPLING_INSTANTIATE(__nv_bfloat16)
}  // namespace coupling
}  // namespace dqk
