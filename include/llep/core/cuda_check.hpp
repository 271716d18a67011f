#pragma once
// LLEP_CUDA_CHECK / LLEP_CUBLAS_CHECK: a failing CUDA runtime or cuBLAS status becomes
// llep::Error naming the call, the error's name and text, file and line. A plain .hpp so
// that g++ translation units (transport/nccl.hpp) can use it: it needs only the CUDA
// include folder on the path, never nvcc. Each macro sits behind #ifndef so an engine can
// route failures into its own error type.
#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include "llep/core/error.hpp"

namespace llep::detail {

[[noreturn]] inline void cuda_fail(cudaError_t e, const char* call, const char* file, int line) {
  throw Error(concat("llep: CUDA call ", call, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") at ",
                     file, ":", line));
}

[[noreturn]] inline void cublas_fail(cublasStatus_t s, const char* call, const char* file, int line) {
  throw Error(concat("llep: cuBLAS call ", call, " failed: ", cublasGetStatusName(s), " (", cublasGetStatusString(s),
                     ") at ", file, ":", line));
}

}  // namespace llep::detail

/// Throws llep::Error unless `call` returns cudaSuccess. Not for destructors: they ignore
/// failures instead (a destructor never throws).
#ifndef LLEP_CUDA_CHECK
#define LLEP_CUDA_CHECK(call)                                                                  \
  do {                                                                                         \
    const cudaError_t llep_cuda_error_ = (call);                                               \
    if (llep_cuda_error_ != cudaSuccess) ::llep::detail::cuda_fail(llep_cuda_error_, #call, __FILE__, __LINE__); \
  } while (0)
#endif

/// Throws llep::Error unless `call` returns CUBLAS_STATUS_SUCCESS.
#ifndef LLEP_CUBLAS_CHECK
#define LLEP_CUBLAS_CHECK(call)                                                                \
  do {                                                                                         \
    const cublasStatus_t llep_cublas_status_ = (call);                                         \
    if (llep_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                          \
      ::llep::detail::cublas_fail(llep_cublas_status_, #call, __FILE__, __LINE__);             \
  } while (0)
#endif
