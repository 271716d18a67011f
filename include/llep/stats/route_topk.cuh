#pragma once
// route_topk on a CUDA stream: one thread per token running route_token (route_topk.hpp).
// Device expf differs from the host's in the last bits, so device and host gates agree
// to a few ulp, not bit for bit; the selection agrees unless two biased scores tie that
// closely.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/stats/route_topk.hpp"

namespace llep {

namespace detail::device_kernels {

template <class Id>
LLEP_KERNEL void route_topk(const float* logits, const float* bias, std::size_t tokens, int experts, int top_k,
                            GateNorm norm, Id* ids, float* gates) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  const auto uN = static_cast<std::size_t>(experts), uK = static_cast<std::size_t>(top_k);
  for (std::size_t t = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens; t += stride)
    route_token(logits + t * uN, bias, experts, top_k, norm, ids + t * uK, gates + t * uK);
}

}  // namespace detail::device_kernels

/// Routes `tokens` tokens whose logits ([tokens x N], device memory) are at `logits`;
/// `bias` is N device floats or nullptr; writes tokens x K ids and gates (device memory).
/// Enqueued on `stream`; the legacy default stream (0) is refused as in CudaExec. The
/// logits are not checked for NaN or Inf on the device: a NaN logit gives unspecified
/// (but in-range) ids.
inline void route_topk(cudaStream_t stream, const float* logits, const float* bias, std::size_t tokens, int experts,
                       int top_k, GateNorm norm, std::int32_t* ids, float* gates) {
  LLEP_EXPECTS(stream != nullptr, "route_topk: refuses the legacy default stream (0); pass a stream");
  const std::size_t logit_count = tokens * static_cast<std::size_t>(experts > 0 ? experts : 1);
  detail::check_route_shape(logit_count, bias != nullptr ? static_cast<std::size_t>(experts) : 0, experts, top_k,
                            tokens * static_cast<std::size_t>(top_k > 0 ? top_k : 0),
                            tokens * static_cast<std::size_t>(top_k > 0 ? top_k : 0));
  if (tokens == 0) return;
  LLEP_EXPECTS(logits != nullptr && ids != nullptr && gates != nullptr, "route_topk: null device pointer for ",
               tokens, " tokens");
  constexpr unsigned threads = 128;
  const std::size_t blocks = (tokens + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 ? blocks : 65535);
  detail::device_kernels::route_topk<std::int32_t>
      <<<grid, threads, 0, stream>>>(logits, bias, tokens, experts, top_k, norm, ids, gates);
  LLEP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace llep
