#pragma once
// Device encode/decode of the weight codecs, enqueued on a stream. They produce the same
// bytes as the host members (the element routines are shared, codec/formats.hpp; a
// group's largest magnitude is exact whatever the reduction order).
// Non-finite weights cannot throw on the device: the kernel sets *nonfinite to 1 (when
// given) and writes a NaN scale for that group; check the flag after synchronising.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "llep/codec/block_scaled.hpp"
#include "llep/codec/formats.hpp"
#include "llep/codec/identity.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"

namespace llep {

namespace detail::device_kernels {

constexpr unsigned kCodecThreads = 256;

// One thread block per group (grid-stride over groups).
template <class Format, class T>
LLEP_KERNEL void block_scaled_encode(const T* src, std::size_t elems, std::size_t group, float* scales,
                                     std::uint8_t* codes, int* nonfinite) {
  __shared__ float warp_max[kCodecThreads / 32];
  __shared__ int warp_bad[kCodecThreads / 32];
  __shared__ float scale;
  const std::size_t groups = (elems + group - 1) / group;
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (std::size_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const std::size_t begin = g * group, end = begin + group < elems ? begin + group : elems;
    float amax = 0.0f;
    int bad = 0;
    for (std::size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const float x = static_cast<float>(src[i]);
      if (!isfinite(x))
        bad = 1;
      else
        amax = fmaxf(amax, fabsf(x));
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
      bad |= __shfl_xor_sync(0xffffffffu, bad, offset);
    }
    if (lane == 0) {
      warp_max[warp] = amax;
      warp_bad[warp] = bad;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (unsigned w = 1; w < blockDim.x / 32; ++w) {
        amax = fmaxf(amax, warp_max[w]);
        bad |= warp_bad[w];
      }
      scale = bad ? float_from_bits(0x7FC00000u) : group_scale(amax, Format::max);
      scales[g] = scale;
      if (bad && nonfinite != nullptr) atomicOr(nonfinite, 1);
    }
    __syncthreads();
    const float s = scale;
    for (std::size_t i = begin + threadIdx.x; i < end; i += blockDim.x)
      codes[i] = isnan(s) ? std::uint8_t{0} : Format::encode(static_cast<float>(src[i]) / s);
    __syncthreads();  // `scale` is rewritten for the next group
  }
}

template <class Format, class T>
LLEP_KERNEL void block_scaled_decode(const float* scales, const std::uint8_t* codes, std::size_t elems,
                                     std::size_t group, T* out) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < elems; i += stride)
    out[i] = static_cast<T>(Format::decode(codes[i]) * scales[i / group]);
}

}  // namespace detail::device_kernels

namespace detail {
inline void check_codec_launch(cudaStream_t stream, const void* encoded) {
  LLEP_EXPECTS(stream != nullptr, "codec: refuses the legacy default stream (0); pass a stream");
  LLEP_EXPECTS(reinterpret_cast<std::uintptr_t>(encoded) % alignof(float) == 0,
               "codec: the encoded buffer must be aligned to ", alignof(float), " bytes on the device");
}
inline unsigned codec_grid(std::size_t blocks) { return static_cast<unsigned>(blocks < 65535 ? blocks : 65535); }
}  // namespace detail

/// Device encode of `elems` elements at `src` into codec.encoded_bytes(elems) bytes at
/// `dst` (both device memory), on `stream`.
template <class T>
void device_encode(const Identity<T>& codec, const T* src, std::size_t elems, std::byte* dst, int* /*nonfinite*/,
                   cudaStream_t stream) {
  detail::check_codec_launch(stream, dst);
  if (elems > 0)
    LLEP_CUDA_CHECK(cudaMemcpyAsync(dst, src, codec.encoded_bytes(elems), cudaMemcpyDeviceToDevice, stream));
}
template <class T>
void device_decode(const Identity<T>& codec, const std::byte* src, std::size_t elems, T* out, cudaStream_t stream) {
  detail::check_codec_launch(stream, src);
  if (elems > 0)
    LLEP_CUDA_CHECK(cudaMemcpyAsync(out, src, codec.encoded_bytes(elems), cudaMemcpyDeviceToDevice, stream));
}

template <class Tag, class T>
void device_encode(const BlockScaled<Tag, T>& codec, const T* src, std::size_t elems, std::byte* dst, int* nonfinite,
                   cudaStream_t stream) {
  detail::check_codec_launch(stream, dst);
  if (elems == 0) return;
  const std::size_t G = codec.groups(elems);
  auto* scales = reinterpret_cast<float*>(dst);
  auto* codes = reinterpret_cast<std::uint8_t*>(dst + G * sizeof(float));
  detail::device_kernels::block_scaled_encode<typename BlockScaled<Tag, T>::Format, T>
      <<<detail::codec_grid(G), detail::device_kernels::kCodecThreads, 0, stream>>>(src, elems, codec.group(), scales,
                                                                                   codes, nonfinite);
  LLEP_CUDA_CHECK(cudaGetLastError());
}
template <class Tag, class T>
void device_decode(const BlockScaled<Tag, T>& codec, const std::byte* src, std::size_t elems, T* out,
                   cudaStream_t stream) {
  detail::check_codec_launch(stream, src);
  if (elems == 0) return;
  const std::size_t G = codec.groups(elems);
  const auto* scales = reinterpret_cast<const float*>(src);
  const auto* codes = reinterpret_cast<const std::uint8_t*>(src + G * sizeof(float));
  constexpr unsigned threads = detail::device_kernels::kCodecThreads;
  detail::device_kernels::block_scaled_decode<typename BlockScaled<Tag, T>::Format, T>
      <<<detail::codec_grid((elems + threads - 1) / threads), threads, 0, stream>>>(scales, codes, elems,
                                                                                   codec.group(), out);
  LLEP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace llep
