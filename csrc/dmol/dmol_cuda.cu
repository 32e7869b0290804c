// Host entry points of the dmol CUDA kernels: pick the instantiation for the dtype.
#include "dmol_cuda.cuh"

namespace dqk {
namespace dmol {

DQK_DMOL_DECLARE(float)
DQK_DMOL_DECLARE(double)
DQK_DMOL_DECLARE(__half)
DQK_DMOL_DECLARE(__nv_bfloat16)

namespace {
template <typename Launch>
void by_dtype(const Args& a, Launch launch) {
  visit_dtype<__half, __nv_bfloat16>(a.dtype, "dmol cuda kernels", launch);
}
}  // namespace

void nll_forward_cuda(const Args& a, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  by_dtype(a, [&](auto tag) { launch_forward<decltype(tag)>(a, s); });
}
void nll_backward_cuda(const Args& a, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  by_dtype(a, [&](auto tag) { launch_backward<decltype(tag)>(a, s); });
}
void sample_cuda(const Args& a, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  by_dtype(a, [&](auto tag) { launch_sample<decltype(tag)>(a, s); });
}

}  // namespace dmol
}  // namespace dqk
