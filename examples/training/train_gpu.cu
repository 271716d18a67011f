// training on a GPU: llep-train's toy run (toy.hpp: same batches, teacher, student, loss
// and SGD step) with P logical ranks on device 0: PeerCopy, CudaExec and CublasSwiGlu
// (fp32, fp32 weight gradients). Standard EP and LLEP must agree at every step, and LLEP's
// busiest rank must compute fewer rows. Without a device it says so and exits 77 (skipped).
//
//   llep-train-gpu [--steps S] [--lr L] [--check]
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <span>
#include <utility>
#include <vector>

#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/peer_copy.cuh"
#include "toy.hpp"

namespace {

// Device memory on one rank's stream: put and get complete before they return, and get
// runs after the work queued on the stream before it.
template <class U>
class DeviceBuf {
 public:
  explicit DeviceBuf(std::size_t n) : n_(n) { LLEP_CUDA_CHECK(cudaMalloc(&p_, std::max<std::size_t>(n, 1) * sizeof(U))); }
  DeviceBuf(DeviceBuf&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(o.n_) {}
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  DeviceBuf& operator=(DeviceBuf&&) = delete;
  ~DeviceBuf() { (void)cudaFree(p_); }
  [[nodiscard]] U* data() const noexcept { return p_; }
  [[nodiscard]] std::size_t size() const noexcept { return n_; }

 private:
  U* p_ = nullptr;
  std::size_t n_;
};

struct DeviceMem {
  cudaStream_t stream;
  template <class U>
  using Buf = DeviceBuf<U>;
  template <class U>
  Buf<U> alloc(std::size_t n) {
    return Buf<U>(n);
  }
  template <class U>
  void put(Buf<U>& b, const std::vector<U>& v) {
    LLEP_EXPECTS(v.size() == b.size(), "put of ", v.size(), " elements into a buffer of ", b.size());
    LLEP_CUDA_CHECK(cudaMemcpyAsync(b.data(), v.data(), v.size() * sizeof(U), cudaMemcpyHostToDevice, stream));
    LLEP_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  template <class U>
  std::vector<U> get(const Buf<U>& b) {
    std::vector<U> v(b.size());
    LLEP_CUDA_CHECK(cudaMemcpyAsync(v.data(), b.data(), v.size() * sizeof(U), cudaMemcpyDeviceToHost, stream));
    LLEP_CUDA_CHECK(cudaStreamSynchronize(stream));
    return v;
  }
  template <class U>
  static std::span<U> span(Buf<U>& b) {
    return {b.data(), b.size()};
  }
};

using Experts = llep::CublasSwiGlu<float, llep::SiluGlu>;
template <class Plnr>
using Layer = llep::MoeLayer<llep::ExactCounts, Plnr, llep::PeerCopy, Experts, llep::CudaExec>;

template <class Plnr>
toy::Curve train(Plnr planner, const toy::Options& o) {
  const llep::Topology topo(toy::P, toy::N);
  std::vector<cudaStream_t> streams(toy::P);
  std::vector<llep::PeerCopyRank> ranks;
  for (auto& s : streams) {
    LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    ranks.push_back({0, s});
  }
  llep::PeerCopyGroup group(ranks);
  toy::Run run(o.steps);
  const toy::Curve c = toy::timed(run, o, [&] {
    llep::run_ranks(group, [&](llep::PeerCopy& t) {
      const cudaStream_t s = streams[static_cast<std::size_t>(t.rank())];
      Layer<Plnr> layer(topo, toy::K, planner, Experts(toy::kShape), t, llep::CudaExec(s));
      Layer<llep::StandardEp> teacher(topo, toy::K, llep::StandardEp{}, Experts(toy::kShape), t, llep::CudaExec(s));
      DeviceMem mem{s};
      toy::train_rank(mem, layer, teacher, t, run, o);
    });
  });
  for (auto& s : streams) (void)cudaStreamDestroy(s);
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  toy::Options o;
  if (const int rc = toy::parse(argc, argv, "llep-train-gpu", o)) return rc;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("llep-train-gpu: no CUDA device here: nothing to run (skipped)\n");
    return 77;
  }
  try {
    const toy::Curve ep = train(llep::StandardEp{}, o);
    const toy::Curve ll = train(llep::LeastLoaded{1.0, 8}, o);
    return toy::report(ep, ll, o, "logical ranks of one GPU");
  } catch (const llep::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
