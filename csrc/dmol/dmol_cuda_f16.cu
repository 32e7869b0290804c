// dmol CUDA kernels instantiated for __half storage (one file per dtype: parallel builds).
#include "dmol_cuda.cuh"

namespace dqk {
namespace dmol {
DQK_DMOL_INSTANTIATE(__half)
}  // namespace dmol
}  // namespace dqk
