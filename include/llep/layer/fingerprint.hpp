#pragma once
// A fingerprint of a layer's configuration, carried by the counts exchange (StepShape::
// config) so that ranks configured differently (another placement, replica set, planner
// setting) fail the step on every rank instead of computing a silently wrong one.
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <sstream>
#include <string_view>

#include "llep/core/topology.hpp"

namespace llep {

namespace detail {
/// FNV-1a, 64-bit: deterministic across ranks and processes.
struct Fnv1a {
  std::uint64_t h = 0xcbf29ce484222325ull;
  void bytes(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  }
  void value(std::int64_t v) { bytes(&v, sizeof v); }
  void text(std::string_view s) {
    value(static_cast<std::int64_t>(s.size()));
    bytes(s.data(), s.size());
  }
};
}  // namespace detail

/// Hash of a weight codec as the layer uses it: its name, exactness, encoded bytes of one
/// expert (`elems` elements; a different group size changes them) and, when it has them,
/// its group size and printed settings. Goes into config_fingerprint's `extra`, so ranks
/// with different codecs fail the step on every rank.
template <class Codec>
[[nodiscard]] std::int64_t codec_fingerprint(const Codec& codec, std::size_t elems) {
  detail::Fnv1a f;
  f.text(Codec::name);
  f.value(Codec::exact ? 1 : 0);
  f.value(static_cast<std::int64_t>(codec.encoded_bytes(elems)));
  if constexpr (requires { codec.group(); }) f.value(static_cast<std::int64_t>(codec.group()));
  if constexpr (requires(std::ostream& os) { os << codec; }) {
    std::ostringstream os;
    os.precision(17);
    os << codec;
    f.text(os.str());
  }
  return static_cast<std::int64_t>(f.h);
}

/// Hash of P, N, K, nodes, every expert's native rank and holders (replicas), the
/// planner's name and, when it prints with operator<<, its settings (17 digits), and
/// `extra` (the layer adds the expert shape, element size and codec_fingerprint). Never 0.
template <class Plnr>
[[nodiscard]] std::uint64_t config_fingerprint(const Topology& topo, int top_k, const Plnr& planner,
                                               std::initializer_list<std::int64_t> extra) {
  detail::Fnv1a f;
  f.value(topo.ranks());
  f.value(topo.experts());
  f.value(top_k);
  f.value(topo.ranks_per_node());
  for (int e = 0; e < topo.experts(); ++e) {
    f.value(topo.native_rank(e));
    const auto holders = topo.holders(e);
    f.value(static_cast<std::int64_t>(holders.size()));
    for (int r : holders) f.value(r);
  }
  f.text(Plnr::name);
  if constexpr (requires(std::ostream& os) { os << planner; }) {
    std::ostringstream os;
    os.precision(17);
    os << planner;
    f.text(os.str());
  }
  for (std::int64_t v : extra) f.value(v);
  return f.h == 0 ? 1 : f.h;
}

}  // namespace llep
