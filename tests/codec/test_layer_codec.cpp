// MoeLayer with a weight codec: Identity keeps LLEP bit-identical to standard EP; a lossy
// codec changes only the spilled slices (so LLEP then differs from standard EP), within a
// stated tolerance; the step report counts the codec's wire bytes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "../common/dense_moe.hpp"
#include "llep/codec/block_scaled.hpp"
#include "llep/codec/identity.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/host_threads.hpp"

namespace {

constexpr int P = 4, N = 8, K = 2, D = 16, H = 12, B = 48;

struct Run {
  std::vector<std::vector<float>> out;  // [rank]
  std::size_t transfers = 0, weight_bytes_sent = 0, sends = 0;
};

// Every rank routes B tokens, 70% of the pairs to expert 0 (rank 0 is overloaded).
template <class Codec, class Plnr>
Run run(const dense::Moe& moe, Plnr planner, Codec codec) {
  llep::HostGroup group(P);
  Run r;
  r.out.resize(P);
  std::vector<std::size_t> sent(P, 0), sends(P, 0), transfers(P, 0);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const llep::ExpertShape shape{D, H, false};
    const auto weights = moe.packed_rank<float>(p, P);
    llep::MoeLayer<llep::ExactCounts, Plnr, llep::HostThreads, llep::HostSwiGlu<float>, llep::HostExec, Codec> layer(
        llep::Topology(P, N), K, planner, llep::HostSwiGlu<float>(shape), t);
    layer.set_native_weights(std::span<const float>(weights));
    layer.set_codec(codec);
    std::mt19937 rng(90 + static_cast<unsigned>(p));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> x(B * D), gates(B * K, 0.5f), out(B * D);
    std::vector<std::int32_t> ids(B * K);
    for (float& v : x) v = u(rng);
    for (int b = 0; b < B; ++b) {
      ids[static_cast<std::size_t>(b * K)] = rng() % 10 < 7 ? 0 : 1 + static_cast<std::int32_t>(rng() % (N - 1));
      std::int32_t second;
      do second = static_cast<std::int32_t>(rng() % N);
      while (second == ids[static_cast<std::size_t>(b * K)]);
      ids[static_cast<std::size_t>(b * K + 1)] = second;
    }
    const auto rep = layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids),
                                   std::span<const float>(gates), std::span<float>(out));
    r.out[static_cast<std::size_t>(p)] = out;
    sent[static_cast<std::size_t>(p)] = rep.weight_bytes_sent;
    transfers[static_cast<std::size_t>(p)] = layer.plan().weight_transfers().size();
    for (const auto& w : layer.plan().weight_transfers()) sends[static_cast<std::size_t>(p)] += w.src == p ? 1 : 0;
  });
  r.transfers = transfers[0];
  for (int p = 0; p < P; ++p) {
    r.weight_bytes_sent += sent[static_cast<std::size_t>(p)];
    r.sends += sends[static_cast<std::size_t>(p)];
  }
  return r;
}

double max_abs(const Run& r) {
  double m = 0;
  for (const auto& o : r.out)
    for (float v : o) m = std::max(m, std::fabs(static_cast<double>(v)));
  return m;
}
double max_diff(const Run& a, const Run& b) {
  double m = 0;
  for (std::size_t p = 0; p < a.out.size(); ++p)
    for (std::size_t i = 0; i < a.out[p].size(); ++i)
      m = std::max(m, std::fabs(static_cast<double>(a.out[p][i]) - static_cast<double>(b.out[p][i])));
  return m;
}
bool same_bits(const Run& a, const Run& b) {
  for (std::size_t p = 0; p < a.out.size(); ++p)
    if (a.out[p].size() != b.out[p].size() ||
        std::memcmp(a.out[p].data(), b.out[p].data(), a.out[p].size() * sizeof(float)) != 0)
      return false;
  return true;
}

}  // namespace

TEST_CASE("MoeLayer with a weight codec: Identity exact, lossy codecs within tolerance, wire bytes reported") {
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 21);
  const llep::LeastLoaded lla{1.0, 1};
  const std::size_t welems = llep::ExpertShape{D, H, false}.elems();

  const Run ep = run(moe, llep::StandardEp{}, llep::Identity<float>());
  const Run exact = run(moe, lla, llep::Identity<float>());
  REQUIRE(exact.transfers > 0);  // the skew makes LLEP spill
  CHECK(same_bits(exact, ep));   // exact codec: LLEP is standard EP, bit for bit
  CHECK(exact.weight_bytes_sent == exact.sends * welems * sizeof(float));

  // Standard EP moves no weights: a lossy codec changes nothing there.
  CHECK(same_bits(run(moe, llep::StandardEp{}, llep::Fp8Blocks<float>()), ep));

  const double scale = max_abs(ep);
  const Run fp8 = run(moe, lla, llep::Fp8Blocks<float>());
  const Run int8 = run(moe, lla, llep::Int8Rows<float>::for_expert({D, H, false}));
  // Lossy: the spilled slices differ from standard EP's, within the stated tolerance
  // (docs/balancers.md: 5% of the largest output for FP8, 1% for int8 rows).
  CHECK(!same_bits(fp8, ep));
  CHECK(max_diff(fp8, ep) <= 0.05 * scale);
  CHECK(max_diff(int8, ep) <= 0.01 * scale);
  // The report counts the encoded bytes: the wire bytes.
  CHECK(fp8.weight_bytes_sent == fp8.sends * llep::Fp8Blocks<float>().encoded_bytes(welems));
  CHECK(fp8.weight_bytes_sent < exact.weight_bytes_sent / 3);
}
