#pragma once
// Device memory for the GPU tests, filled and read back with cudaMemcpy (independent of the
// exec under test). Execs run on non-blocking streams, which do not wait for the legacy
// stream, so every fill ends with cudaDeviceSynchronize.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "llep/core/cuda_check.hpp"

namespace gputest {

template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t n) : n_(n) {
    if (n_ > 0) LLEP_CUDA_CHECK(cudaMalloc(&p_, n_ * sizeof(T)));
  }
  explicit DeviceArray(const std::vector<T>& v) : DeviceArray(v.size()) { upload(v); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { (void)cudaFree(p_); }
  void upload(const std::vector<T>& v) {
    REQUIRE(v.size() == n_);
    if (n_ > 0) LLEP_CUDA_CHECK(cudaMemcpy(p_, v.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
    LLEP_CUDA_CHECK(cudaDeviceSynchronize());
  }
  [[nodiscard]] std::vector<T> download() const {
    std::vector<T> v(n_);
    if (n_ > 0) LLEP_CUDA_CHECK(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  void fill_bytes(int byte) {
    if (n_ > 0) LLEP_CUDA_CHECK(cudaMemset(p_, byte, n_ * sizeof(T)));
    LLEP_CUDA_CHECK(cudaDeviceSynchronize());
  }
  [[nodiscard]] T* get() const { return static_cast<T*>(p_); }
  [[nodiscard]] std::size_t size() const noexcept { return n_; }

 private:
  void* p_ = nullptr;
  std::size_t n_;
};

}  // namespace gputest
