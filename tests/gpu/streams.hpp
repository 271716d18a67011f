#pragma once
// P logical ranks on one device for PeerCopy tests: a non-blocking stream each, owned here.
#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "llep/core/cuda_check.hpp"
#include "llep/transport/peer_copy.cuh"

namespace gputest {

struct Streams {
  std::vector<cudaStream_t> streams;
  Streams(int P, int device) {
    LLEP_CUDA_CHECK(cudaSetDevice(device));
    streams.resize(static_cast<std::size_t>(P));
    for (auto& s : streams) LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  }
  Streams(const Streams&) = delete;
  Streams& operator=(const Streams&) = delete;
  ~Streams() {
    for (auto s : streams) (void)cudaStreamDestroy(s);
  }
  std::vector<llep::PeerCopyRank> ranks(int device) const {
    std::vector<llep::PeerCopyRank> r;
    for (auto s : streams) r.push_back({device, s});
    return r;
  }
};

}  // namespace gputest
