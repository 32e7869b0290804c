// pybind11 bindings exposing the csrc kernels as dqkernels._C. Tensors cross as raw
// addresses, sizes and element strides (the package's kernels/ modules build them from
// torch tensors), so neither this file nor csrc needs torch at build time.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../csrc/coupling/coupling.h"
#include "../csrc/dmol/dmol.h"

namespace py = pybind11;

// Masked autoregressive ops bind themselves (python/bindings_masked_*.cpp).
void bind_masked_linear(py::module_& m);
void bind_masked_conv2d(py::module_& m);
void bind_vq(py::module_& m);

namespace {

using Strides = std::vector<int64_t>;

template <size_t N>
void copy_strides(const char* name, const Strides& from, int64_t (&to)[N], size_t expected) {
  if (from.size() != expected) {
    throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(expected) +
                                " strides, got " + std::to_string(from.size()));
  }
  for (size_t i = 0; i < expected; ++i) to[i] = from[i];
}

const void* cptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* mptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

// sizes = (B, C, H, W, M, L)
dqk::dmol::Args make_args(int dtype, const Strides& sizes, double min_log_scale) {
  if (dtype < 0 || dtype > 3) throw std::invalid_argument("dtype code must be 0..3");
  if (sizes.size() != 6) throw std::invalid_argument("sizes must be (B, C, H, W, M, L)");
  dqk::dmol::Args a;
  a.dtype = static_cast<dqk::DType>(dtype);
  a.B = sizes[0]; a.C = sizes[1]; a.H = sizes[2]; a.W = sizes[3]; a.M = sizes[4]; a.L = sizes[5];
  if (a.C != 1 && a.C != 3) throw std::invalid_argument("C must be 1 or 3");
  if (a.M < 1 || a.L < 2) throw std::invalid_argument("need M >= 1 and L >= 2");
  a.min_log_scale = min_log_scale;
  return a;
}

dqk::dmol::Args forward_args(int dtype, const Strides& sizes, double mls, uintptr_t x,
                             const Strides& xs, uintptr_t p, const Strides& ps, uintptr_t out,
                             const Strides& os) {
  auto a = make_args(dtype, sizes, mls);
  a.x = cptr(x); copy_strides("x", xs, a.x_stride, 4);
  a.params = cptr(p); copy_strides("params", ps, a.p_stride, 4);
  a.out = mptr(out); copy_strides("out", os, a.out_stride, 3);
  return a;
}

dqk::dmol::Args backward_args(int dtype, const Strides& sizes, double mls, uintptr_t x,
                              const Strides& xs, uintptr_t p, const Strides& ps, uintptr_t go,
                              const Strides& gs, uintptr_t gp, const Strides& gps) {
  auto a = make_args(dtype, sizes, mls);
  a.x = cptr(x); copy_strides("x", xs, a.x_stride, 4);
  a.params = cptr(p); copy_strides("params", ps, a.p_stride, 4);
  a.grad_out = cptr(go); copy_strides("grad_out", gs, a.g_stride, 3);
  a.grad_params = mptr(gp); copy_strides("grad_params", gps, a.gp_stride, 4);
  return a;
}

dqk::dmol::Args sample_args(int dtype, const Strides& sizes, double mls, uintptr_t p,
                            const Strides& ps, uintptr_t u, const Strides& us, uintptr_t out,
                            const Strides& os) {
  auto a = make_args(dtype, sizes, mls);
  a.params = cptr(p); copy_strides("params", ps, a.p_stride, 4);
  a.u = cptr(u); copy_strides("u", us, a.u_stride, 4);
  a.out = mptr(out); copy_strides("out", os, a.out_stride, 4);
  return a;
}

// Coupling kernels: sizes = (B, n1, n2, n3, K); slots = 16 (address, strides) pairs in
// the order of csrc/coupling/coupling.h (address 0 = unused).
dqk::coupling::Args coupling_args(int dtype, const Strides& sizes, bool inverse,
                                  const std::vector<uintptr_t>& ptrs,
                                  const std::vector<Strides>& strides) {
  namespace c = dqk::coupling;
  if (dtype < 0 || dtype > 3) throw std::invalid_argument("dtype code must be 0..3");
  if (sizes.size() != 5) throw std::invalid_argument("sizes must be (B, n1, n2, n3, K)");
  if (ptrs.size() != c::kSlots || strides.size() != c::kSlots)
    throw std::invalid_argument("coupling kernels take 16 (address, strides) slots");
  c::Args a;
  a.dtype = static_cast<dqk::DType>(dtype);
  a.B = sizes[0]; a.n1 = sizes[1]; a.n2 = sizes[2]; a.n3 = sizes[3]; a.K = sizes[4];
  if (a.B < 1 || a.n1 < 1 || a.n2 < 1 || a.n3 < 1 || a.K < 1)
    throw std::invalid_argument("coupling kernels need positive sizes");
  a.inverse = inverse;
  for (int i = 0; i < c::kSlots; ++i) {
    a.t[i].p = mptr(ptrs[i]);
    if (strides[i].size() > 5) throw std::invalid_argument("at most 5 strides per slot");
    for (size_t j = 0; j < strides[i].size(); ++j) a.t[i].st[j] = strides[i][j];
  }
  return a;
}

dqk::coupling::Kind coupling_kind(int kind) {
  if (kind < 0 || kind > 4) throw std::invalid_argument("coupling kind must be 0..4");
  return static_cast<dqk::coupling::Kind>(kind);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "dqkernels compiled kernels (C++/OpenMP on CPU, CUDA on NVIDIA GPUs)";

  m.def("built_with_cuda", []() {
#ifdef DQK_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("build_info", []() {
    py::dict d;
#ifdef DQK_WITH_CUDA
    d["cuda"] = true;
    d["cuda_archs"] = std::string(DQK_CUDA_ARCHS);
    d["cuda_version"] = std::string(DQK_CUDA_VERSION);
#else
    d["cuda"] = false;
#endif
#ifdef _OPENMP
    d["openmp"] = true;
#else
    d["openmp"] = false;
#endif
    d["compiler"] = std::string(DQK_CXX_COMPILER);
    return d;
  });

  auto gil = py::call_guard<py::gil_scoped_release>();
  const char* fwd_sig = "(dtype, sizes=(B,C,H,W,M,L), min_log_scale, x, x_strides, params, "
                        "params_strides, out, out_strides[, num_threads | stream])";

  m.def("dmol_nll_forward_cpu",
        [](int dt, const Strides& sz, double mls, uintptr_t x, const Strides& xs, uintptr_t p,
           const Strides& ps, uintptr_t out, const Strides& os, int nt) {
          dqk::dmol::nll_forward_cpu(forward_args(dt, sz, mls, x, xs, p, ps, out, os), nt);
        },
        fwd_sig, gil);
  m.def("dmol_nll_backward_cpu",
        [](int dt, const Strides& sz, double mls, uintptr_t x, const Strides& xs, uintptr_t p,
           const Strides& ps, uintptr_t go, const Strides& gs, uintptr_t gp, const Strides& gps,
           int nt) {
          dqk::dmol::nll_backward_cpu(backward_args(dt, sz, mls, x, xs, p, ps, go, gs, gp, gps),
                                      nt);
        },
        gil);
  m.def("dmol_nll_forward_backward_cpu",
        [](int dt, const Strides& sz, double mls, uintptr_t x, const Strides& xs, uintptr_t p,
           const Strides& ps, uintptr_t out, const Strides& os, uintptr_t gp,
           const Strides& gps, int nt) {
          auto a = forward_args(dt, sz, mls, x, xs, p, ps, out, os);
          a.grad_params = mptr(gp);
          copy_strides("grad_params", gps, a.gp_stride, 4);
          dqk::dmol::nll_forward_backward_cpu(a, nt);
        },
        gil);
  m.def("dmol_sample_cpu",
        [](int dt, const Strides& sz, double mls, uintptr_t p, const Strides& ps, uintptr_t u,
           const Strides& us, uintptr_t out, const Strides& os, int nt) {
          dqk::dmol::sample_cpu(sample_args(dt, sz, mls, p, ps, u, us, out, os), nt);
        },
        gil);
  m.def("coupling_cpu",
        [](int kind, int dt, const Strides& sz, bool inverse, const std::vector<uintptr_t>& ptrs,
           const std::vector<Strides>& strides, int nt, bool scalar_only) {
          dqk::coupling::run_cpu(coupling_kind(kind), coupling_args(dt, sz, inverse, ptrs, strides),
                                 nt, scalar_only);
        },
        "(kind, dtype, sizes=(B,n1,n2,n3,K), inverse, ptrs[16], strides[16], num_threads, "
        "scalar_only)",
        gil);
#ifdef DQK_WITH_CUDA
  m.def("coupling_cuda",
        [](int kind, int dt, const Strides& sz, bool inverse, const std::vector<uintptr_t>& ptrs,
           const std::vector<Strides>& strides, uintptr_t work, int64_t chunk, uintptr_t stream) {
          auto a = coupling_args(dt, sz, inverse, ptrs, strides);
          a.work = mptr(work);
          a.chunk = chunk;
          dqk::coupling::run_cuda(coupling_kind(kind), a, reinterpret_cast<void*>(stream));
        },
        "(kind, dtype, sizes=(B,n1,n2,n3,K), inverse, ptrs[16], strides[16], work, chunk, "
        "stream)",
        gil);
  m.def("dmol_nll_forward_cuda",
        [](int dt, const Strides& sz, double mls, uintptr_t x, const Strides& xs, uintptr_t p,
           const Strides& ps, uintptr_t out, const Strides& os, uintptr_t stream) {
          dqk::dmol::nll_forward_cuda(forward_args(dt, sz, mls, x, xs, p, ps, out, os),
                                      reinterpret_cast<void*>(stream));
        },
        fwd_sig, gil);
  m.def("dmol_nll_backward_cuda",
        [](int dt, const Strides& sz, double mls, uintptr_t x, const Strides& xs, uintptr_t p,
           const Strides& ps, uintptr_t go, const Strides& gs, uintptr_t gp, const Strides& gps,
           uintptr_t stream) {
          dqk::dmol::nll_backward_cuda(
              backward_args(dt, sz, mls, x, xs, p, ps, go, gs, gp, gps),
              reinterpret_cast<void*>(stream));
        },
        gil);
  m.def("dmol_sample_cuda",
        [](int dt, const Strides& sz, double mls, uintptr_t p, const Strides& ps, uintptr_t u,
           const Strides& us, uintptr_t out, const Strides& os, uintptr_t stream) {
          dqk::dmol::sample_cuda(sample_args(dt, sz, mls, p, ps, u, us, out, os),
                                 reinterpret_cast<void*>(stream));
        },
        gil);
#endif
  bind_masked_linear(m);
  bind_masked_conv2d(m);
  bind_vq(m);
}
