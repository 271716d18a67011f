// The MoE layer on a GPU: P logical ranks on device 0 (or spread over the devices there
// are) through PeerCopy, CudaExec and cuBLAS experts, against the dense MoE computed on
// the host in double (tests/common/dense_moe.hpp), for every planner.
#include <doctest/doctest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "../common/dense_moe.hpp"
#include "device_array.hpp"
#include "llep/codec/block_scaled.hpp"
#include "llep/codec/exchange.cuh"
#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/experts/grouped_swiglu.cuh"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/peer_copy.cuh"

namespace {

using llep::count_t;

template <class T>
T from_float(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16(v);
  else if constexpr (std::is_same_v<T, __half>) return __float2half(v);
  else return v;
}
template <class T>
float to_float(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return v;
}

// Max |error| over max |reference|. bf16 keeps 8 significant bits: the tokens, the
// weights, the activation h and the output are each rounded once (relative error up to
// 2^-9 each), with fp32 accumulation in between, so a few roundings of 2^-9 ~ 0.2% add up
// to well under 3e-2 of the output scale; a misplaced row is O(1). fp16 has 11 bits: 5e-3.
// fp32 (cuBLAS in full fp32, no TF32) is held to 1e-4 like the host float layer.
template <class T>
double tolerance() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return 3e-2;
  else if constexpr (std::is_same_v<T, __half>) return 5e-3;
  else return 1e-4;
}

using gputest::DeviceArray;

enum class Routing { uniform, hot_one_expert, one_rank_experts, empty_ranks };

struct RankInput {
  std::vector<float> x, gates;  // as drawn; the device gets them rounded to T
  std::vector<std::int32_t> ids;
};

// One rank's layer inputs on the device: its native experts' weights and tokens in T, fp32
// gates, the ids, and an output buffer. DeviceArray's uploads end with a device sync: the
// rank's non-blocking stream does not wait for the legacy stream they ran on.
template <class T>
struct RankOnDevice {
  DeviceArray<T> w, x, out;
  DeviceArray<float> gates;
  DeviceArray<std::int32_t> ids;

  RankOnDevice(const dense::Moe& moe, int rank, int ranks, const RankInput& in)
      : w(cast(moe.packed_rank<float>(rank, ranks))),
        x(cast(in.x)),
        out(in.x.size()),
        gates(in.gates),
        ids(in.ids) {}

  [[nodiscard]] std::span<const T> weights() const { return {w.get(), w.size()}; }

  template <class Layer>
  const llep::StepReport& forward(Layer& layer) {
    return layer.forward(std::span<const T>(x.get(), x.size()), std::span<const std::int32_t>(ids.get(), ids.size()),
                         std::span<const float>(gates.get(), gates.size()), std::span<T>(out.get(), out.size()));
  }

  static std::vector<T> cast(const std::vector<float>& v) {
    std::vector<T> o(v.size());
    std::transform(v.begin(), v.end(), o.begin(), from_float<T>);
    return o;
  }
};


std::vector<RankInput> make_inputs(int P, int N, int K, int D, Routing routing, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> tokens(1, 96);
  llep::sim::Skew skew;
  if (routing == Routing::hot_one_expert && N > 1) skew = {1, 0.95};
  if (routing == Routing::one_rank_experts) skew = {N / P, 1.0};
  std::vector<RankInput> in(static_cast<std::size_t>(P));
  for (int p = 0; p < P; ++p) {
    auto& r = in[static_cast<std::size_t>(p)];
    int B = tokens(rng);
    if (routing == Routing::empty_ranks && (p % 2 == 1 || P == 1)) B = 0;
    r.x.resize(static_cast<std::size_t>(B) * D);
    for (float& v : r.x) v = u(rng);
    r.ids.resize(static_cast<std::size_t>(B) * K);
    r.gates.resize(r.ids.size());
    llep::sim::random_routing(rng(), N, K, skew, std::span<std::int32_t>(r.ids), std::span<float>(r.gates));
  }
  return in;
}

struct Streams {
  std::vector<cudaStream_t> s;
  std::vector<int> device;
  explicit Streams(int P) {
    int devices = 0;
    LLEP_CUDA_CHECK(cudaGetDeviceCount(&devices));
    for (int p = 0; p < P; ++p) {
      device.push_back(p % devices);
      LLEP_CUDA_CHECK(cudaSetDevice(device.back()));
      cudaStream_t st = nullptr;
      LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
      s.push_back(st);
    }
    LLEP_CUDA_CHECK(cudaSetDevice(0));
  }
  ~Streams() {
    for (cudaStream_t st : s) (void)cudaStreamDestroy(st);
  }
  std::vector<llep::PeerCopyRank> ranks() const {
    std::vector<llep::PeerCopyRank> r;
    for (std::size_t p = 0; p < s.size(); ++p) r.push_back({device[p], s[p]});
    return r;
  }
};

template <class T, llep::GemmMode Mode, class Plnr>
struct Outcome {
  std::vector<std::vector<float>> out;
  std::vector<llep::StepReport> reports;
  bool deterministic = true;
};

// Two steps on P logical ranks; returns rank outputs (as float) of the second. With
// `prepare`, the second step's routing is prepared (MoeLayer::prepare) before it.
template <class T, llep::GemmMode Mode, class Plnr, class Codec = llep::Identity<T>,
          class Experts = llep::CublasSwiGlu<T, llep::SiluGlu, Mode>>
Outcome<T, Mode, Plnr> run_layer(const dense::Moe& moe, int P, int K, const std::vector<RankInput>& in, Plnr planner,
                                 Codec codec = {}, bool prepare = false) {
  using Layer = llep::MoeLayer<llep::ExactCounts, Plnr, llep::PeerCopy, Experts, llep::CudaExec, Codec>;
  const llep::Topology topo(P, moe.experts);
  const llep::ExpertShape shape{moe.hidden, moe.intermediate, false};
  Streams streams(P);
  llep::PeerCopyGroup group(streams.ranks(), llep::HostGroupOptions{std::chrono::milliseconds(30'000)});
  Outcome<T, Mode, Plnr> res;
  res.out.resize(static_cast<std::size_t>(P));
  res.reports.resize(static_cast<std::size_t>(P));
  std::vector<int> same(static_cast<std::size_t>(P), 1);
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    RankOnDevice<T> d(moe, t.rank(), P, in[p]);
    Layer layer(topo, K, planner, Experts(shape), t, llep::CudaExec(streams.s[p]));
    layer.set_native_weights(d.weights());
    layer.set_codec(codec);
    DeviceArray<std::byte> ahead(Layer::prepare_bytes(layer.limits(96)));  // make_inputs: at most 96 tokens
    std::vector<T> first;
    for (int s = 0; s < 2; ++s) {
      if (prepare && s == 1)
        layer.prepare(std::span<const std::int32_t>(d.ids.get(), d.ids.size()),
                      std::span<std::byte>(ahead.get(), ahead.size()));
      res.reports[p] = d.forward(layer);
      LLEP_CUDA_CHECK(cudaStreamSynchronize(streams.s[p]));
      auto got = d.out.download();
      if (s == 0) first = got;
      else same[p] = std::equal(first.begin(), first.end(), got.begin(), [](T a, T b) {
        return std::memcmp(&a, &b, sizeof(T)) == 0;
      });
      res.out[p].resize(got.size());
      std::transform(got.begin(), got.end(), res.out[p].begin(), to_float<T>);
    }
  });
  res.deterministic = std::all_of(same.begin(), same.end(), [](int v) { return v == 1; });
  return res;
}

template <class T, llep::GemmMode Mode, class Plnr, class Experts = llep::CublasSwiGlu<T, llep::SiluGlu, Mode>>
void check_against_dense(int P, int N, int K, Routing routing, Plnr planner, std::uint64_t seed) {
  const int D = 64, H = 32;  // multiples of 8: the 16-byte alignment cuBLAS prefers
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, seed);
  const auto in = make_inputs(P, N, K, D, routing, seed * 13 + 1);
  const auto got = run_layer<T, Mode, Plnr, llep::Identity<T>, Experts>(moe, P, K, in, planner);
  double err = 0, scale = 0;
  for (int p = 0; p < P; ++p) {
    const auto& r = in[static_cast<std::size_t>(p)];
    std::vector<double> x(r.x.size()), g(r.gates.begin(), r.gates.end());
    // The reference sees the tokens the device saw (rounded to T); the weights stay exact.
    std::transform(r.x.begin(), r.x.end(), x.begin(), [](float v) { return double(to_float(from_float<T>(v))); });
    const auto ref = moe.forward(x, r.ids, g, K);
    const auto& out = got.out[static_cast<std::size_t>(p)];
    REQUIRE(out.size() == ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) {
      scale = std::max(scale, std::abs(ref[i]));
      err = std::max(err, std::abs(double(out[i]) - ref[i]));
    }
  }
  INFO("P = ", P, ", N = ", N, ", K = ", K, ", routing ", int(routing), ", plan ", got.reports[0].policy);
  CHECK(err <= tolerance<T>() * std::max(scale, 1e-3));
  CHECK(got.deterministic);
  count_t pairs = 0, rows = 0;
  for (const auto& r : in) pairs += static_cast<count_t>(r.ids.size());
  for (int q = 0; q < P; ++q) rows += got.reports[0].rows(q);
  CHECK(rows == pairs);
}

bool have_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

const llep::LeastLoaded kSmallGemm{1.0, 8};

}  // namespace

TEST_CASE("GPU MoeLayer (bf16, per-expert GEMMs) equals the dense MoE for every planner") {
  REQUIRE(have_device());
  std::uint64_t seed = 1;
  for (int P : {1, 2, 4, 8})
    for (int NP : {1, 4})
      for (int K : {1, 4, 8})
        for (Routing r : {Routing::uniform, Routing::hot_one_expert, Routing::one_rank_experts, Routing::empty_ranks}) {
          const int N = NP * P;
          if (K > N) continue;
          ++seed;
          check_against_dense<__nv_bfloat16, llep::GemmMode::per_expert>(P, N, K, r, llep::StandardEp{}, seed);
          check_against_dense<__nv_bfloat16, llep::GemmMode::per_expert>(P, N, K, r, kSmallGemm, seed);
          check_against_dense<__nv_bfloat16, llep::GemmMode::per_expert>(
              P, N, K, r, llep::Adaptive<llep::LeastLoaded>{1.3, kSmallGemm}, seed);
        }
}

TEST_CASE("GPU MoeLayer: grouped GEMMs, fp16 and fp32 agree with the dense MoE under skew") {
  REQUIRE(have_device());
  std::uint64_t seed = 500;
  for (int P : {2, 4})
    for (Routing r : {Routing::hot_one_expert, Routing::empty_ranks}) {
      ++seed;
      check_against_dense<__nv_bfloat16, llep::GemmMode::grouped>(P, 4 * P, 4, r, kSmallGemm, seed);
      check_against_dense<__half, llep::GemmMode::per_expert>(P, 4 * P, 4, r, kSmallGemm, seed);
      check_against_dense<float, llep::GemmMode::grouped>(P, 4 * P, 4, r, kSmallGemm, seed);
    }
}

TEST_CASE("GPU MoeLayer with GroupedSwiGlu as its experts equals the dense MoE") {
  REQUIRE(have_device());
  std::uint64_t seed = 700;
  for (int P : {1, 4})
    for (Routing r : {Routing::hot_one_expert, Routing::empty_ranks}) {
      ++seed;
      check_against_dense<__nv_bfloat16, llep::GemmMode::per_expert, llep::LeastLoaded,
                          llep::GroupedSwiGlu<__nv_bfloat16>>(P, 4 * P, 4, r, kSmallGemm, seed);
      check_against_dense<float, llep::GemmMode::per_expert, llep::LeastLoaded, llep::GroupedSwiGlu<float>>(
          P, 4 * P, 4, r, kSmallGemm, seed);
    }
}

TEST_CASE("GPU MoeLayer: a bad expert id on one rank is llep::Error on every rank, no hang") {
  REQUIRE(have_device());
  const int P = 4, N = 8, K = 2, D = 64, H = 32;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 3);
  auto in = make_inputs(P, N, K, D, Routing::uniform, 4);
  in[2].ids[0] = N + 5;
  using Experts = llep::CublasSwiGlu<__nv_bfloat16>;
  Streams streams(P);
  llep::PeerCopyGroup group(streams.ranks(), llep::HostGroupOptions{std::chrono::milliseconds(10'000)});
  std::vector<std::string> errors(P);
  const auto start = std::chrono::steady_clock::now();
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    RankOnDevice<__nv_bfloat16> d(moe, t.rank(), P, in[p]);
    llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::PeerCopy, Experts, llep::CudaExec> layer(
        llep::Topology(P, N), K, kSmallGemm, Experts(llep::ExpertShape{D, H, false}), t,
        llep::CudaExec(streams.s[p]));
    layer.set_native_weights(d.weights());
    try {
      d.forward(layer);
    } catch (const llep::Error& e) {
      errors[p] = e.what();
    }
  });
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(8));
  for (int p = 0; p < P; ++p) {
    INFO("rank ", p, ": ", errors[static_cast<std::size_t>(p)]);
    // The device histogram counts bad ids without finding the first one: the message
    // names the rank, the count and the range.
    CHECK(errors[static_cast<std::size_t>(p)].find("rank 2 routed 1 expert id(s) outside [0, 8)") != std::string::npos);
  }
}

TEST_CASE("GPU MoeLayer: an engine-supplied workspace too small for the plan fails on every rank, naming bytes") {
  REQUIRE(have_device());
  const int P = 2, N = 8, K = 2, D = 64, H = 32;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 31);
  const auto in = make_inputs(P, N, K, D, Routing::hot_one_expert, 32);
  using Experts = llep::CublasSwiGlu<__nv_bfloat16>;
  Streams streams(P);
  llep::PeerCopyGroup group(streams.ranks(), llep::HostGroupOptions{std::chrono::milliseconds(10'000)});
  std::vector<std::string> errors(P);
  constexpr std::size_t kSmall = 16 << 10;  // enough for the counts, not for the step's rows
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    RankOnDevice<__nv_bfloat16> d(moe, t.rank(), P, in[p]);
    DeviceArray<std::byte> fixed(kSmall);
    auto ws = p == 1 ? llep::CudaWorkspace::fixed(fixed.get(), kSmall) : llep::CudaWorkspace{};
    llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::PeerCopy, Experts, llep::CudaExec> layer(
        llep::Topology(P, N), K, kSmallGemm, Experts(llep::ExpertShape{D, H, false}), t,
        llep::CudaExec(streams.s[p], std::move(ws)));
    layer.set_native_weights(d.weights());
    try {
      d.forward(layer);
    } catch (const llep::Error& e) {
      errors[p] = e.what();
    }
  });
  for (int p = 0; p < P; ++p) {
    INFO("rank ", p, ": ", errors[static_cast<std::size_t>(p)]);
    CHECK(errors[static_cast<std::size_t>(p)].find("bytes of workspace but the engine-supplied buffer holds 16384") !=
          std::string::npos);
  }
}

#ifdef LLEP_TEST_NCCL
#include "llep/transport/nccl.hpp"
#include "llep/transport/nccl_bootstrap.hpp"

// NCCL refuses two ranks on one GPU, so the layer meets Nccl with one rank here: the whole
// step (counts through ncclAllGather, the token all-to-all as grouped send/recv, the weights
// path) against the dense MoE. Several ranks need several GPUs (docs/gpu-status.md).
TEST_CASE("GPU MoeLayer over the Nccl transport, one rank, equals the dense MoE") {
  REQUIRE(have_device());
  const int N = 8, K = 4, D = 64, H = 32;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 21);
  const auto in = make_inputs(1, N, K, D, Routing::hot_one_expert, 22);
  using Experts = llep::CublasSwiGlu<__nv_bfloat16>;
  Streams streams(1);
  auto nccl = llep::Nccl::init(1, 0, llep::new_unique_id(), streams.s[0]);
  RankOnDevice<__nv_bfloat16> d(moe, 0, 1, in[0]);
  llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::Nccl, Experts, llep::CudaExec> layer(
      llep::Topology(1, N), K, kSmallGemm, Experts(llep::ExpertShape{D, H, false}), nccl, llep::CudaExec(streams.s[0]));
  layer.set_native_weights(d.weights());
  for (int s = 0; s < 2; ++s) d.forward(layer);
  nccl.synchronize();
  const auto got = d.out.download();
  const auto xh = d.x.download();
  std::vector<double> xd(xh.size()), g(in[0].gates.begin(), in[0].gates.end());
  std::transform(xh.begin(), xh.end(), xd.begin(), [](__nv_bfloat16 v) { return double(__bfloat162float(v)); });
  const auto ref = moe.forward(xd, in[0].ids, g, K);
  double err = 0, scale = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::abs(ref[i]));
    err = std::max(err, std::abs(double(__bfloat162float(got[i])) - ref[i]));
  }
  CHECK(err <= tolerance<__nv_bfloat16>() * std::max(scale, 1e-3));
}
#endif

TEST_CASE("GPU MoeLayer::prepare (PeerCopy): the same bits as forward alone, the plan and weights prepared") {
  REQUIRE(have_device());
  const int D = 64, H = 32, K = 2;
  for (const int P : {1, 2, 4}) {
    const int N = 4 * P;
    const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 70 + static_cast<std::uint64_t>(P));
    const auto in = make_inputs(P, N, K, D, Routing::hot_one_expert, 71);
    auto check = [&](auto planner, const char* what) {
      INFO(what, ", P = ", P);
      const auto plain = run_layer<float, llep::GemmMode::per_expert>(moe, P, K, in, planner);
      const auto ahead = run_layer<float, llep::GemmMode::per_expert>(moe, P, K, in, planner, llep::Identity<float>{},
                                                                      true);
      for (int p = 0; p < P; ++p) {
        const auto up = static_cast<std::size_t>(p);
        CHECK(std::memcmp(plain.out[up].data(), ahead.out[up].data(), plain.out[up].size() * sizeof(float)) == 0);
        CHECK(ahead.reports[up].prepared);
        CHECK(ahead.reports[up].weight_bytes_prefetched == plain.reports[up].weight_bytes_received);
      }
    };
    check(llep::StandardEp{}, "ep");
    check(kSmallGemm, "llep");
    check(llep::Adaptive<llep::LeastLoaded>{1.3, kSmallGemm}, "adaptive");
  }
}

TEST_CASE("GPU MoeLayer with a lossy weight codec (fp32): within the host codec tests' tolerance of the exact layer") {
  REQUIRE(have_device());
  const int P = 4, N = 16, K = 2, D = 64, H = 32;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 81);
  const auto in = make_inputs(P, N, K, D, Routing::hot_one_expert, 82);
  const auto exact = run_layer<float, llep::GemmMode::per_expert>(moe, P, K, in, kSmallGemm);
  REQUIRE(exact.reports[0].weight_transfers > 0);
  auto check = [&](auto codec, double tolerance, const char* what) {
    INFO(what);
    const auto got = run_layer<float, llep::GemmMode::per_expert>(moe, P, K, in, kSmallGemm, codec);
    double err = 0, scale = 0;
    std::size_t sent = 0;
    for (int p = 0; p < P; ++p) {
      const auto up = static_cast<std::size_t>(p);
      for (std::size_t i = 0; i < exact.out[up].size(); ++i) {
        scale = std::max(scale, std::fabs(static_cast<double>(exact.out[up][i])));
        err = std::max(err, std::fabs(static_cast<double>(got.out[up][i]) - exact.out[up][i]));
      }
      sent += got.reports[up].weight_bytes_sent;
    }
    CHECK(err > 0);  // the spilled slices used decoded weights
    CHECK(err <= tolerance * scale);
    CHECK(got.deterministic);
    // Wire bytes: encoded experts (about a quarter of fp32's), where the exact layer sends fp32.
    std::size_t exact_sent = 0;
    for (const auto& r : exact.reports) exact_sent += r.weight_bytes_sent;
    CHECK(sent > 0);
    CHECK(sent < exact_sent / 3);
  };
  check(llep::Int8Rows<float>::for_expert({D, H, false}), 0.01, "int8 rows");
  check(llep::Fp8Blocks<float>(32), 0.05, "fp8 blocks");
}
