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
  switch (a.dtype) {
    case DType::kFloat32: launch(float{}); return;
    case DType::kFloat64: launch(double{}); return;
    case DType::kFloat16: launch(__half{}); return;
    case DType::kBFloat16: launch(__nv_bfloat16{}); return;
  }
  throw std::invalid_argument("dmol cuda kernels: unsupported dtype code " +
                              std::to_string(int(a.dtype)));
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
