// The backward's memory options on a GPU: P logical ranks on device 0 through PeerCopy,
// CudaExec and CublasSwiGlu (fp32 weight gradients). Fetching the foreign weights again
// (refetch_weights), keeping the experts' outputs (save_outputs), inputs (save_inputs) or
// pre-activations (saved_memory) give the same bits as the default handle on every rank,
// under skew so that weights spill; the report says what each option held.
// tests/gpu/test_gpu_backward.cu proves the default against the dense MoE.
#include <doctest/doctest.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "device_array.hpp"
#include "streams.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/layer/backward.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/sim/routing.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/peer_copy.cuh"

namespace {

using gputest::DeviceArray;

struct Options {
  bool inputs = false, refetch = false, outputs = false, preacts = false;
};

struct Got {
  std::vector<std::byte> bits;  // grad_hidden, grad_gates and weight gradients, as bytes
  llep::BackwardReport report;
};

// One forward + backward on every rank with the handle set as `o` says.
template <class T>
std::vector<Got> run(int P, int K, std::uint64_t seed, Options o) {
  const int N = 2 * P, D = 64, H = 32;
  const llep::ExpertShape shape{D, H, false};
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  struct Input {
    std::vector<T> x, go, w;
    std::vector<float> gates;
    std::vector<std::int32_t> ids;
  };
  std::vector<Input> in(static_cast<std::size_t>(P));
  for (auto& r : in) {
    const int B = 8 + static_cast<int>(rng() % 64);
    for (int i = 0; i < B * D; ++i) r.x.push_back(static_cast<T>(u(rng))), r.go.push_back(static_cast<T>(u(rng)));
    r.ids.resize(static_cast<std::size_t>(B * K));
    r.gates.resize(r.ids.size());
    llep::sim::random_routing(rng(), N, K, llep::sim::Skew{1, 0.9}, std::span<std::int32_t>(r.ids),
                              std::span<float>(r.gates));
    for (std::size_t i = 0; i < (N / P) * shape.elems(); ++i) r.w.push_back(static_cast<T>(0.2f * u(rng)));
  }

  using Experts = llep::CublasSwiGlu<T, llep::SiluGlu>;
  using Layer = llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::PeerCopy, Experts, llep::CudaExec>;
  const llep::Topology topo(P, N);
  const gputest::Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0), llep::HostGroupOptions{std::chrono::milliseconds(30'000)});
  std::vector<Got> got(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    const auto& r = in[p];
    DeviceArray<T> w(r.w), x(r.x), go(r.go), out(r.x.size()), gh(r.x.size());
    DeviceArray<float> gates(r.gates), gg(r.gates.size()), gw(r.w.size());
    DeviceArray<std::int32_t> ids(r.ids);
    Layer layer(topo, K, llep::LeastLoaded{1.0, 8}, Experts(shape), t, llep::CudaExec(streams.streams[p]));
    layer.set_native_weights(std::span<const T>(w.get(), w.size()));
    const auto limits = layer.limits(72);
    llep::ForwardHandle<T> handle;
    handle.save_inputs = o.inputs, handle.refetch_weights = o.refetch, handle.save_outputs = o.outputs;
    DeviceArray<std::byte> memory(Layer::handle_bytes(limits, handle.keeps()));
    DeviceArray<std::byte> saved(o.preacts ? layer.saved_bytes(limits) : 0);
    handle.memory = std::span<std::byte>(memory.get(), memory.size());
    handle.saved_memory = std::span<std::byte>(saved.get(), saved.size());
    layer.forward(std::span<const T>(x.get(), x.size()), std::span<const std::int32_t>(ids.get(), ids.size()),
                  std::span<const float>(gates.get(), gates.size()), std::span<T>(out.get(), out.size()), handle);
    const llep::BackwardArgs<T, float, float> args{
        {x.get(), x.size()},   {gates.get(), gates.size()}, {go.get(), go.size()},      {gh.get(), gh.size()},
        {gg.get(), gg.size()}, {gw.get(), gw.size()},       llep::GradMode::overwrite};
    got[p].report = llep::backward(layer, handle, args);
    LLEP_CUDA_CHECK(cudaStreamSynchronize(streams.streams[p]));
    auto append = [&](const auto& v) {
      const auto* b = reinterpret_cast<const std::byte*>(v.data());
      got[p].bits.insert(got[p].bits.end(), b, b + v.size() * sizeof(v[0]));
    };
    append(gh.download()), append(gg.download()), append(gw.download());
  });
  return got;
}

template <class T>
void check(int P, int K, std::uint64_t seed) {
  const auto ref = run<T>(P, K, seed, {});
  std::size_t kept = 0;
  for (const auto& g : ref) kept += g.report.kept_weight_bytes;
  CHECK((kept > 0) == (P > 1));  // the hot expert spilled, so there are weights to fetch again
  for (const Options o : {Options{false, true, false, false}, Options{false, false, true, false},
                          Options{true, true, true, true}, Options{false, true, true, true}}) {
    INFO("P = ", P, ", K = ", K, ", inputs ", o.inputs, ", refetch ", o.refetch, ", outputs ", o.outputs,
         ", pre-activations ", o.preacts);
    const auto got = run<T>(P, K, seed, o);
    for (std::size_t p = 0; p < got.size(); ++p) {
      INFO("rank ", p);
      CHECK(got[p].bits == ref[p].bits);
      CHECK(got[p].report.weights_fetched_again == o.refetch);
      CHECK(got[p].report.kept_weight_bytes == (o.refetch ? 0 : ref[p].report.kept_weight_bytes));
      CHECK(got[p].report.refetch_bytes_received == (o.refetch ? ref[p].report.kept_weight_bytes : 0));
      CHECK(got[p].report.outputs_recomputed == !o.outputs);
      CHECK((got[p].report.saved_bytes > 0) == (o.preacts && got[p].report.rows > 0));
    }
  }
}

}  // namespace

TEST_CASE("GPU backward: every memory option gives the default's bits (fp32 and bf16)") {
  for (int P : {1, 2, 4})
    for (int K : {1, 4}) {
      check<float>(P, K, 40 + static_cast<std::uint64_t>(P * K));
      check<__nv_bfloat16>(P, K, 50 + static_cast<std::uint64_t>(P * K));
    }
}
