#pragma once
// The element types of the device expert functors (float, __half, __nv_bfloat16): their
// cuBLAS data type and the conversions to and from float that kernels use, shared by
// CublasSwiGlu and GroupedSwiGlu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <library_types.h>

namespace llep::detail {

template <class T>
struct element;
template <>
struct element<float> {
  static constexpr cudaDataType_t type = CUDA_R_32F;
  static __device__ float to_float(float v) { return v; }
  static __device__ float from_float(float v) { return v; }
};
template <>
struct element<__half> {
  static constexpr cudaDataType_t type = CUDA_R_16F;
  static __device__ float to_float(__half v) { return __half2float(v); }
  static __device__ __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct element<__nv_bfloat16> {
  static constexpr cudaDataType_t type = CUDA_R_16BF;
  static __device__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

}  // namespace llep::detail
