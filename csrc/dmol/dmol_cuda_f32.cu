// dmol CUDA kernels instantiated for float storage (one file per dtype: parallel builds).
#include "dmol_cuda.cuh"

namespace dqk {
namespace dmol {
DQK_DMOL_INSTANTIATE(float)
}  // namespace dmol
}  // namespace dqk
