// dmol CUDA kernels instantiated for double storage (one file per dtype: parallel builds).
#include "dmol_cuda.cuh"

namespace dqk {
namespace dmol {
DQK_DMOL_INSTANTIATE(double)
}  // namespace dmol
}  // namespace dqk
