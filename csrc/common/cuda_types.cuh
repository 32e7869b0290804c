// Device-side storage types and their load/store to the accumulate type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace dqk {

template <typename S>
struct DScalar;
template <>
struct DScalar<float> {
  using acc = float;
  static __device__ __forceinline__ float load(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
};
template <>
struct DScalar<double> {
  using acc = double;
  static __device__ __forceinline__ double load(const double* p) { return __ldg(p); }
  static __device__ __forceinline__ void store(double* p, double v) { *p = v; }
};
template <>
struct DScalar<__half> {
  using acc = float;
  static __device__ __forceinline__ float load(const __half* p) { return __half2float(__ldg(p)); }
  static __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
};
template <>
struct DScalar<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) {
    return __bfloat162float(__ldg(p));
  }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float v) {
    *p = __float2bfloat16_rn(v);
  }
};

}  // namespace dqk
