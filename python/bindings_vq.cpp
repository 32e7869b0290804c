// pybind11 bindings of the VQ kernels (csrc/vq/vq.h). Tensors arrive as TensorArg
// (python/binding.h) and must be contiguous: z [N, D], codebook [K, D], indices int64, the
// accumulate-dtype sqdist and u, and the EMA state (float32 or float64). vq_nearest_cuda
// also takes its scratch, a uint8 workspace of vq_nearest_workspace_cuda(...) bytes.
#include <pybind11/pybind11.h>

#include <string>

#include "../csrc/vq/vq.h"
#include "binding.h"

namespace py = pybind11;

namespace dqk {
namespace {

// a contiguous tensor of the given shape and dtype
const TensorArg& dense(ArgCheck& c, const char* name, const TensorArg& t,
                       std::initializer_list<int64_t> shape, DType dtype) {
  c.tensor(name, t, shape, dtype);
  c.contiguous(name, t);
  return t;
}

void need_sizes(ArgCheck& c, int64_t N, int64_t K, int64_t D, int64_t S) {
  c.require(N > 0 && K > 0 && D > 0 && S > 0,
            "the kernels need N, K, D, S >= 1; got N=" + std::to_string(N) + ", K=" +
                std::to_string(K) + ", D=" + std::to_string(D) + ", S=" + std::to_string(S));
}

// z [N, D] and codebook [K, D], one floating dtype
template <typename A>
A pair_args(ArgCheck& c, const TensorArg& z, const TensorArg& codebook) {
  c.floating("z", z, {kAny, kAny});
  c.contiguous("z", z);
  A a;
  a.dtype = z.dtype;
  a.N = z.size(0);
  a.D = z.size(1);
  a.K = dense(c, "codebook", codebook, {kAny, a.D}, a.dtype).size(0);
  a.z = z.data;
  a.codebook = codebook.data;
  return a;
}

vq::NearestArgs nearest_args(ArgCheck& c, const TensorArg& z, const TensorArg& codebook,
                             const TensorArg& indices, const TensorArg& sqdist) {
  auto a = pair_args<vq::NearestArgs>(c, z, codebook);
  need_sizes(c, a.N, a.K, a.D, 1);
  a.indices = dense(c, "indices", indices, {a.N}, DType::kInt64).ptr<int64_t>();
  a.sqdist = dense(c, "sqdist", sqdist, {a.N}, accumulate_dtype(a.dtype)).data;
  return a;
}

vq::SampleArgs sample_args(ArgCheck& c, const TensorArg& z, const TensorArg& codebook,
                           const TensorArg& u, const TensorArg& out, double inv_temperature) {
  auto a = pair_args<vq::SampleArgs>(c, z, codebook);
  a.S = dense(c, "u", u, {a.N, kAny}, accumulate_dtype(a.dtype)).size(1);
  need_sizes(c, a.N, a.K, a.D, a.S);
  a.u = u.data;
  a.out = dense(c, "out", out, {a.N, a.S}, DType::kInt64).ptr<int64_t>();
  a.inv_temperature = inv_temperature;
  return a;
}

vq::EmaArgs ema_args(ArgCheck& c, const TensorArg& cluster_size, const TensorArg& embed_sum,
                     const TensorArg& z, const TensorArg& indices, double decay) {
  c.floating("embed_sum", embed_sum, {kAny, kAny});
  vq::EmaArgs a;
  a.state_dtype = embed_sum.dtype;
  if (a.state_dtype != DType::kFloat32 && a.state_dtype != DType::kFloat64)
    c.type_fail(std::string("embed_sum must be float32 or float64 (the EMA state); got ") +
                dtype_name(a.state_dtype));
  a.K = embed_sum.size(0);
  a.D = embed_sum.size(1);
  dense(c, "embed_sum", embed_sum, {a.K, a.D}, a.state_dtype);
  dense(c, "cluster_size", cluster_size, {a.K}, a.state_dtype);
  c.floating("z", z, {kAny, a.D});
  c.contiguous("z", z);
  a.dtype = z.dtype;
  a.N = z.size(0);
  a.S = dense(c, "indices", indices, {a.N, kAny}, DType::kInt64).size(1);
  need_sizes(c, a.N, a.K, a.D, a.S);
  a.cluster_size = cluster_size.data;
  a.embed_sum = embed_sum.data;
  a.z = z.data;
  a.indices = indices.ptr<const int64_t>();
  a.decay = decay;
  return a;
}

template <typename A, void (*Kernel)(const A&, int, int)>
void run_cpu(ArgCheck&, const A& a, int nt, int isa) {
  Kernel(a, nt, isa);
}

#ifdef DQK_WITH_CUDA
// vq_nearest_workspace_cuda: the bytes of scratch vq_nearest_cuda needs for these tensors
int64_t nearest_workspace(ArgCheck&, const vq::NearestArgs& a) {
  return vq::nearest_cuda_workspace(a);
}

// vq_nearest_cuda(..., workspace, stream): workspace a uint8 tensor on z's device with at
// least vq_nearest_workspace_cuda's bytes (the caller takes it from torch's allocator)
void nearest_cuda_launch(ArgCheck& c, const vq::NearestArgs& a, const TensorArg& workspace,
                         uintptr_t stream) {
  c.tensor("workspace", workspace, {kAny}, DType::kUInt8);
  c.contiguous("workspace", workspace);
  const int64_t need = vq::nearest_cuda_workspace(a);
  c.require(workspace.size(0) >= need, "workspace has " + std::to_string(workspace.size(0)) +
                                           " bytes; these tensors need " + std::to_string(need) +
                                           " (vq_nearest_workspace_cuda)");
  vq::nearest_cuda(a, workspace.data, workspace.size(0), cuda_stream(stream));
}
#endif

}  // namespace

void bind_vq(py::module_& m) {
  m.def("vq_cpu_isas", &vq::cpu_isas,
        "bit set of the CPU paths that run here (1: generic, 2: AVX2, 3: AVX-512, 4: "
        "AVX-512 with AVX512-BF16 for bf16 inputs)");
  // isa: the CPU instruction-set path (0: the best this CPU runs)
  auto nearest = entry(m, "vq_nearest", nearest_args, "z, codebook, indices, sqdist");
  nearest.cpu<int, int>(run_cpu<vq::NearestArgs, vq::nearest_cpu>, "num_threads, isa");
  auto sample = entry(m, "vq_sample", sample_args, "z, codebook, u, out, inv_temperature");
  sample.cpu<int, int>(run_cpu<vq::SampleArgs, vq::sample_cpu>, "num_threads, isa");
  auto ema = entry(m, "vq_ema_update", ema_args, "cluster_size, embed_sum, z, indices, decay");
  ema.cpu<int>(cpu_launch<vq::EmaArgs, vq::ema_update_cpu>, "num_threads");
#ifdef DQK_WITH_CUDA
  nearest.cuda<const TensorArg&, uintptr_t>(nearest_cuda_launch, "workspace, stream");
  entry(m, "vq_nearest_workspace", nearest_args, "z, codebook, indices, sqdist")
      .cuda<>(nearest_workspace, "");
  sample.cuda<uintptr_t>(cuda_launch<vq::SampleArgs, vq::sample_cuda>, "stream");
  ema.cuda<uintptr_t>(cuda_launch<vq::EmaArgs, vq::ema_update_cuda>, "stream");
#endif
}

}  // namespace dqk
