// The layer's backward on a GPU: P logical ranks on device 0 through PeerCopy, CudaExec and
// CublasSwiGlu or GroupedSwiGlu (fp32 weight gradients), against the dense MoE's analytic
// gradients in double (tests/common/dense_moe.hpp) on the inputs the device saw; under
// skew so that helpers return gradients; repeated runs give the same bits; the two
// functors agree on the same inputs.
#include <doctest/doctest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "../common/dense_moe.hpp"
#include "device_array.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/experts/grouped_swiglu.cuh"
#include "llep/layer/backward.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/peer_copy.cuh"

namespace {

using gputest::DeviceArray;

template <class T>
using Cublas = llep::CublasSwiGlu<T, llep::SiluGlu>;
template <class T>
using Grouped = llep::GroupedSwiGlu<T, llep::SiluGlu>;

template <class T>
T to_t(double v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16(static_cast<float>(v));
  else if constexpr (std::is_same_v<T, __half>) return __float2half(static_cast<float>(v));
  else return static_cast<T>(v);
}
template <class T>
double to_d(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return static_cast<double>(v);
}
template <class T>
const char* type_name() {
  return std::is_same_v<T, __nv_bfloat16> ? "bf16" : std::is_same_v<T, __half> ? "fp16" : "fp32";
}

// Max |error| / max |reference| per result. fp32 (no TF32) as the host float layer: 1e-4.
// bf16: tokens, weights, upstream gradients, a, dgu and the results are rounded to 8 bits
// (2^-9 relative each) with fp32 sums between: a few of those stay well under 3e-2 of the
// scale, while a lost or misplaced contribution is O(1). fp16 rounds the same values to
// 11 bits, 8 times finer: 4e-3.
template <class T>
double tolerance() {
  return std::is_same_v<T, __nv_bfloat16> ? 3e-2 : std::is_same_v<T, __half> ? 4e-3 : 1e-4;
}

// A non-finite result (the NaN the gradient buffers are filled with before each run, left
// unwritten) is an infinite error.
double rel_error(const std::vector<double>& got, const std::vector<double>& ref) {
  REQUIRE(got.size() == ref.size());
  double scale = 1e-3, err = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::abs(ref[i]));
    err = std::max(err, std::isfinite(got[i]) ? std::abs(got[i] - ref[i]) : std::numeric_limits<double>::infinity());
  }
  return err / scale;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// What one rank's backward gave (the second of two runs, which equalled the first).
struct Got {
  std::vector<double> hidden, gates, weights;
  std::size_t grad_bytes = 0;  // helpers' weight gradients received
};

// Runs forward and backward twice on P logical ranks with `Experts` (T = its value_type)
// and checks the gradients against the dense MoE and the two runs' bits; returns each
// rank's gradients. `empty_last`: the last expert's pairs go to expert 0, so that one
// expert (native to the last rank) has no rows and its weight gradient must be written 0.
template <class Experts, class Plnr>
std::vector<Got> check(int P, int K, Plnr planner, std::uint64_t seed, bool empty_last = false) {
  using T = typename Experts::value_type;
  const int N = 2 * P, D = 64, H = 32;
  const dense::Moe moe = dense::Moe::random(N, D, H, dense::Act::silu, seed);
  // The reference sees the values the device sees: weights, tokens and gradients in T.
  dense::Moe seen = moe;
  for (auto& e : seen.w)
    for (auto* v : {&e.w_gate, &e.w_up, &e.w_down})
      for (double& x : *v) x = to_d(to_t<T>(x));
  std::mt19937_64 rng(seed + 1);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  struct Input {
    std::vector<double> x, go;
    std::vector<float> gates;
    std::vector<std::int32_t> ids;
  };
  std::vector<Input> in(static_cast<std::size_t>(P));
  for (auto& r : in) {
    const int B = 8 + static_cast<int>(rng() % 64);
    r.x.resize(static_cast<std::size_t>(B * D));
    r.go.resize(r.x.size());
    for (double& v : r.x) v = to_d(to_t<T>(u(rng)));
    for (double& v : r.go) v = to_d(to_t<T>(u(rng)));
    r.ids.resize(static_cast<std::size_t>(B * K));
    r.gates.resize(r.ids.size());
    llep::sim::random_routing(rng(), N, K, llep::sim::Skew{1, 0.9}, std::span<std::int32_t>(r.ids),
                              std::span<float>(r.gates));
    if (empty_last) std::replace(r.ids.begin(), r.ids.end(), N - 1, 0);
  }

  using Layer = llep::MoeLayer<llep::ExactCounts, Plnr, llep::PeerCopy, Experts, llep::CudaExec>;
  const llep::Topology topo(P, N);
  std::vector<cudaStream_t> streams(static_cast<std::size_t>(P));
  std::vector<llep::PeerCopyRank> ranks;
  for (auto& s : streams) {
    LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    ranks.push_back({0, s});
  }
  llep::PeerCopyGroup group(ranks, llep::HostGroupOptions{std::chrono::milliseconds(30'000)});
  std::vector<Got> got(static_cast<std::size_t>(P));
  std::vector<int> same(static_cast<std::size_t>(P), 1);
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    const auto& r = in[p];
    auto cast = [](const auto& v) {
      std::vector<T> o(v.size());
      std::transform(v.begin(), v.end(), o.begin(), [](auto x) { return to_t<T>(static_cast<double>(x)); });
      return o;
    };
    DeviceArray<T> w(cast(moe.packed_rank<double>(t.rank(), P))), x(cast(r.x)), go(cast(r.go)), out(r.x.size()),
        gh(r.x.size());
    DeviceArray<float> gates(r.gates), gg(r.gates.size()), gw(w.size());
    DeviceArray<std::int32_t> ids(r.ids);
    Layer layer(topo, K, planner, Experts(llep::ExpertShape{D, H, false}), t, llep::CudaExec(streams[p]));
    layer.set_native_weights(std::span<const T>(w.get(), w.size()));
    const bool save = t.rank() % 2 == 0;  // ranks that keep their experts' inputs, and ranks that do not
    DeviceArray<std::byte> memory(Layer::handle_bytes(layer.limits(72), save));
    llep::ForwardHandle<T> handle(std::span<std::byte>(memory.get(), memory.size()), save);
    std::vector<float> first;
    for (int s = 0; s < 2; ++s) {
      // NaN in every result (all-ones bits in float, bf16 and fp16), on the layer's stream
      // before its step: overwrite must write every element.
      for (const auto& [ptr, bytes] : {std::pair<void*, std::size_t>{gh.get(), gh.size() * sizeof(T)},
                                       std::pair<void*, std::size_t>{gg.get(), gg.size() * sizeof(float)},
                                       std::pair<void*, std::size_t>{gw.get(), gw.size() * sizeof(float)}})
        LLEP_CUDA_CHECK(cudaMemsetAsync(ptr, 0xFF, bytes, streams[p]));
      layer.forward(std::span<const T>(x.get(), x.size()), std::span<const std::int32_t>(ids.get(), ids.size()),
                    std::span<const float>(gates.get(), gates.size()), std::span<T>(out.get(), out.size()), handle);
      const llep::BackwardArgs<T, float, float> args{
          {x.get(), x.size()},   {gates.get(), gates.size()}, {go.get(), go.size()},      {gh.get(), gh.size()},
          {gg.get(), gg.size()}, {gw.get(), gw.size()},       llep::GradMode::overwrite};
      const auto rep = llep::backward(layer, handle, args);
      LLEP_CUDA_CHECK(cudaStreamSynchronize(streams[p]));
      const auto h = gh.download();
      const auto g = gg.download();
      const auto wg = gw.download();
      std::vector<float> all(wg);
      for (const T& v : h) all.push_back(static_cast<float>(to_d(v)));
      all.insert(all.end(), g.begin(), g.end());
      if (s == 0) first = all;
      else same[p] = std::memcmp(first.data(), all.data(), all.size() * sizeof(float)) == 0;
      got[p].hidden.clear();
      for (const T& v : h) got[p].hidden.push_back(to_d(v));
      got[p].gates.assign(g.begin(), g.end());
      got[p].weights.assign(wg.begin(), wg.end());
      got[p].grad_bytes = rep.grad_bytes_received;
    }
  });
  for (auto& s : streams) (void)cudaStreamDestroy(s);

  std::vector<dense::Expert> total(static_cast<std::size_t>(N), seen.zero_expert());
  double e_hidden = 0, e_gates = 0, e_weights = 0;
  for (int p = 0; p < P; ++p) {
    const auto& r = in[static_cast<std::size_t>(p)];
    const std::vector<double> g(r.gates.begin(), r.gates.end());
    const auto ref = seen.backward(r.x, r.ids, g, K, r.go);
    e_hidden = std::max(e_hidden, rel_error(got[static_cast<std::size_t>(p)].hidden, ref.hidden));
    e_gates = std::max(e_gates, rel_error(got[static_cast<std::size_t>(p)].gates, ref.gates));
    for (int e = 0; e < N; ++e) {
      auto& tt = total[static_cast<std::size_t>(e)];
      const auto& s = ref.experts[static_cast<std::size_t>(e)];
      for (std::size_t i = 0; i < tt.w_down.size(); ++i) tt.w_down[i] += s.w_down[i];
      for (std::size_t i = 0; i < tt.w_gate.size(); ++i) tt.w_gate[i] += s.w_gate[i], tt.w_up[i] += s.w_up[i];
    }
  }
  const std::size_t W = llep::ExpertShape{D, H, false}.elems();
  for (int e = 0; e < N; ++e) {
    const int p = topo.native_rank(e);
    const auto& wg = got[static_cast<std::size_t>(p)].weights;
    const std::size_t slot = static_cast<std::size_t>(e - p * (N / P));
    e_weights = std::max(e_weights, rel_error(std::vector<double>(wg.begin() + static_cast<std::ptrdiff_t>(slot * W),
                                                                  wg.begin() + static_cast<std::ptrdiff_t>((slot + 1) * W)),
                                              seen.packed_of<double>(total[static_cast<std::size_t>(e)])));
  }
  INFO("P = ", P, ", K = ", K, ", planner ", Plnr::name, ", ", type_name<T>(), ", ",
       std::is_same_v<Experts, Grouped<T>> ? "GroupedSwiGlu" : "CublasSwiGlu");
  CHECK(e_hidden <= tolerance<T>());
  CHECK(e_gates <= tolerance<T>());
  CHECK(e_weights <= tolerance<T>());
  CHECK(std::all_of(same.begin(), same.end(), [](int v) { return v == 1; }));
  // Nonzero gradients: within tolerance of the references, which are then not passed by
  // rel_error's 1e-3 floor either.
  double s_hidden = 0, s_gates = 0, s_weights = 0;
  for (const Got& g : got) {
    s_hidden = std::max(s_hidden, max_abs(g.hidden));
    s_gates = std::max(s_gates, max_abs(g.gates));
    s_weights = std::max(s_weights, max_abs(g.weights));
  }
  CHECK(s_hidden > 1e-2);
  CHECK(s_gates > 1e-2);
  CHECK(s_weights > 1e-2);
  if (empty_last) {  // the empty expert's gradient: exactly 0 (written, not left NaN)
    const auto& wg = got[static_cast<std::size_t>(P - 1)].weights;
    CHECK(std::all_of(wg.end() - static_cast<std::ptrdiff_t>(W), wg.end(), [](double v) { return v == 0.0; }));
  }
  return got;
}

// GroupedSwiGlu and CublasSwiGlu on the same inputs, each checked against the dense MoE,
// then against each other. Both round at the same points (h, dgu, outputs, input gradients
// in T; fp32 sums), so they differ only where fp32 summation order flips one of those
// roundings; each flip is up to 2 units of T's rounding (1 ulp just above a power of two)
// and three or so can meet in one result: the dense tolerance (about 8 units) bounds it,
// where a lost or misplaced contribution is O(1). The inputs (seeds) give every P > 1 a
// plan with weight transfers under skew with LeastLoaded, so helpers return gradients,
// and the same plan moves the same gradient bytes for both functors.
template <class T>
void check_grouped(int P, int K, std::uint64_t seed) {
  const llep::LeastLoaded planner{1.0, 8};
  const std::vector<Got> grouped = check<Grouped<T>>(P, K, planner, seed, true);
  const std::vector<Got> cublas = check<Cublas<T>>(P, K, planner, seed, true);
  INFO("P = ", P, ", K = ", K, ", ", type_name<T>(), ": GroupedSwiGlu against CublasSwiGlu");
  REQUIRE(grouped.size() == cublas.size());
  std::size_t received = 0;
  for (std::size_t p = 0; p < grouped.size(); ++p) {
    CHECK(rel_error(grouped[p].hidden, cublas[p].hidden) <= tolerance<T>());
    CHECK(rel_error(grouped[p].gates, cublas[p].gates) <= tolerance<T>());
    CHECK(rel_error(grouped[p].weights, cublas[p].weights) <= tolerance<T>());
    CHECK(grouped[p].grad_bytes == cublas[p].grad_bytes);
    received += grouped[p].grad_bytes;
  }
  if (P > 1) CHECK(received > 0);
}

}  // namespace

TEST_CASE("GPU backward equals the dense gradients (fp32 and bf16, fp32 weight gradients)") {
  for (int P : {1, 2, 4})
    for (int K : {1, 4}) {
      check<Cublas<float>>(P, K, llep::StandardEp{}, 10 + static_cast<std::uint64_t>(P * K));
      check<Cublas<float>>(P, K, llep::LeastLoaded{1.0, 8}, 20 + static_cast<std::uint64_t>(P * K));
      check<Cublas<__nv_bfloat16>>(P, K, llep::LeastLoaded{1.0, 8}, 30 + static_cast<std::uint64_t>(P * K));
    }
}

TEST_CASE("GPU backward with GroupedSwiGlu experts equals the dense gradients and CublasSwiGlu's (bf16, fp16)") {
  for (int P : {1, 2, 4})
    for (int K : {1, 4}) {
      check_grouped<__nv_bfloat16>(P, K, 40 + static_cast<std::uint64_t>(P * K));
      check_grouped<__half>(P, K, 50 + static_cast<std::uint64_t>(P * K));
    }
}
