// dmol CUDA kernels instantiated for __nv_bfloat16 storage (one file per dtype: parallel builds).
#include "dmol_cuda.cuh"

namespace dqk {
namespace dmol {
DQK_DMOL_INSTANTIATE(__nv_bfloat16)
}  // namespace dmol
}  // namespace dqk
