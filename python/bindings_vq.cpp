// pybind11 bindings of the VQ kernels (csrc/vq/vq.h). Tensors cross as addresses of
// contiguous buffers; dqkernels/kernels/cpp_vq.py and cuda_vq.py build the calls.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../csrc/vq/vq.h"

namespace py = pybind11;

namespace {

namespace vq = dqk::vq;
using Sizes = std::vector<int64_t>;

dqk::DType dtype_of(int code, const char* what) {
  if (code < 0 || code > 3)
    throw std::invalid_argument(std::string(what) + ": dtype code must be 0..3");
  return static_cast<dqk::DType>(code);
}

void need(const Sizes& s, size_t n, const char* names) {
  if (s.size() != n) throw std::invalid_argument(std::string("sizes must be ") + names);
  for (int64_t v : s)
    if (v < 1) throw std::invalid_argument(std::string("vq kernels need sizes >= 1: ") + names);
}

template <typename T>
T* p(uintptr_t a) { return reinterpret_cast<T*>(a); }

vq::NearestArgs nearest_args(int dt, const Sizes& s, uintptr_t z, uintptr_t e, uintptr_t idx,
                             uintptr_t dist) {
  need(s, 3, "(N, K, D)");
  vq::NearestArgs a;
  a.dtype = dtype_of(dt, "z");
  a.N = s[0]; a.K = s[1]; a.D = s[2];
  a.z = p<const void>(z); a.codebook = p<const void>(e);
  a.indices = p<int64_t>(idx); a.sqdist = p<void>(dist);
  return a;
}

vq::SampleArgs sample_args(int dt, const Sizes& s, uintptr_t z, uintptr_t e, uintptr_t u,
                           double inv_t, uintptr_t out) {
  need(s, 4, "(N, K, D, S)");
  vq::SampleArgs a;
  a.dtype = dtype_of(dt, "z");
  a.N = s[0]; a.K = s[1]; a.D = s[2]; a.S = s[3];
  a.z = p<const void>(z); a.codebook = p<const void>(e); a.u = p<const void>(u);
  a.inv_temperature = inv_t;
  a.out = p<int64_t>(out);
  return a;
}

vq::EmaArgs ema_args(int dt, int state_dt, const Sizes& s, uintptr_t cs, uintptr_t es,
                     uintptr_t z, uintptr_t idx, double decay) {
  need(s, 4, "(N, K, D, S)");
  vq::EmaArgs a;
  a.dtype = dtype_of(dt, "z");
  a.state_dtype = dtype_of(state_dt, "state");
  if (a.state_dtype != dqk::DType::kFloat32 && a.state_dtype != dqk::DType::kFloat64)
    throw std::invalid_argument("vq ema: the state must be float32 or float64");
  a.N = s[0]; a.K = s[1]; a.D = s[2]; a.S = s[3];
  a.cluster_size = p<void>(cs); a.embed_sum = p<void>(es);
  a.z = p<const void>(z); a.indices = p<const int64_t>(idx);
  a.decay = decay;
  return a;
}

}  // namespace

void bind_vq(py::module_& m) {
  auto gil = py::call_guard<py::gil_scoped_release>();
  m.def("vq_cpu_isas", &vq::cpu_isas,
        "bit set of the CPU paths that run here (1: generic, 2: AVX2, 3: AVX-512, 4: "
        "AVX-512 with AVX512-BF16 for bf16 inputs)");
  m.def("vq_nearest_cpu",
        [](int dt, const Sizes& s, uintptr_t z, uintptr_t e, uintptr_t idx, uintptr_t dist,
           int nt, int isa) { vq::nearest_cpu(nearest_args(dt, s, z, e, idx, dist), nt, isa); },
        "(dtype, sizes=(N,K,D), z, codebook, indices, sqdist, num_threads, isa)", gil);
  m.def("vq_sample_cpu",
        [](int dt, const Sizes& s, uintptr_t z, uintptr_t e, uintptr_t u, double inv_t,
           uintptr_t out, int nt, int isa) {
          vq::sample_cpu(sample_args(dt, s, z, e, u, inv_t, out), nt, isa);
        },
        "(dtype, sizes=(N,K,D,S), z, codebook, u, inv_temperature, out, num_threads, isa)",
        gil);
  m.def("vq_ema_update_cpu",
        [](int dt, int sdt, const Sizes& s, uintptr_t cs, uintptr_t es, uintptr_t z,
           uintptr_t idx, double decay, int nt) {
          vq::ema_update_cpu(ema_args(dt, sdt, s, cs, es, z, idx, decay), nt);
        },
        "(dtype, state_dtype, sizes=(N,K,D,S), cluster_size, embed_sum, z, indices, decay, "
        "num_threads)",
        gil);
#ifdef DQK_WITH_CUDA
  m.def("vq_nearest_cuda",
        [](int dt, const Sizes& s, uintptr_t z, uintptr_t e, uintptr_t idx, uintptr_t dist,
           uintptr_t stream) {
          vq::nearest_cuda(nearest_args(dt, s, z, e, idx, dist), p<void>(stream));
        },
        "(dtype, sizes=(N,K,D), z, codebook, indices, sqdist, stream)", gil);
  m.def("vq_sample_cuda",
        [](int dt, const Sizes& s, uintptr_t z, uintptr_t e, uintptr_t u, double inv_t,
           uintptr_t out, uintptr_t stream) {
          vq::sample_cuda(sample_args(dt, s, z, e, u, inv_t, out), p<void>(stream));
        },
        "(dtype, sizes=(N,K,D,S), z, codebook, u, inv_temperature, out, stream)", gil);
  m.def("vq_ema_update_cuda",
        [](int dt, int sdt, const Sizes& s, uintptr_t cs, uintptr_t es, uintptr_t z,
           uintptr_t idx, double decay, uintptr_t stream) {
          vq::ema_update_cuda(ema_args(dt, sdt, s, cs, es, z, idx, decay), p<void>(stream));
        },
        "(dtype, state_dtype, sizes=(N,K,D,S), cluster_size, embed_sum, z, indices, decay, "
        "stream)",
        gil);
#endif
}
