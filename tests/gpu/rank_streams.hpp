#pragma once
// P logical ranks on device 0 for PeerCopy tests: one non-blocking stream each, owned here.
#include <cuda_runtime.h>

#include <vector>

#include "llep/core/cuda_check.hpp"
#include "llep/transport/peer_copy.cuh"

namespace gputest {

struct RankStreams {
  std::vector<cudaStream_t> s;
  explicit RankStreams(int P) : s(static_cast<std::size_t>(P), nullptr) {
    for (auto& x : s) LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking));
  }
  RankStreams(const RankStreams&) = delete;
  RankStreams& operator=(const RankStreams&) = delete;
  ~RankStreams() {
    for (auto x : s) (void)cudaStreamDestroy(x);
  }
  [[nodiscard]] std::vector<llep::PeerCopyRank> ranks() const {
    std::vector<llep::PeerCopyRank> r;
    for (auto x : s) r.push_back({0, x});
    return r;
  }
};

}  // namespace gputest
