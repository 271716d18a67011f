#pragma once
// A cost model of one MoE forward step: the time and memory a plan costs every rank,
// predicted from a hardware profile instead of measured. It runs on any machine and covers
// any P (several nodes included), so benchmarks can print the paper's table at P = 8 and
// beyond. docs/cost-model.md states the model and its assumptions.
//
//  - compute of a rank: the sum, over the plan's segments on it, of one expert's SwiGLU FFN
//    on that many rows (gate-up GEMM rows x D x 2H, activation, down GEMM rows x H x D),
//    timed by a GEMM profile: a measured curve (achieved FLOP/s vs rows, from the GPU
//    benchmark's CSV, read by llep/sim/gemm_csv.hpp) or, by default, a roofline with stated
//    H100 SXM numbers;
//  - communication of a rank: the counts all-gather, the weight transfers of the plan, the
//    token dispatch and the combine, each a round of bytes / link bandwidth + a latency;
//    NVLink inside a node and the network between nodes are separate links, so a round
//    lasts as long as the slower of the two; send and receive directions are concurrent;
//  - step = max over ranks of compute + communication: no overlap of the two (the layer
//    runs them one after the other);
//  - peak bytes of a rank: expert input and output rows, the intermediate of its largest
//    GEMM, foreign expert weights (what StepReport::peak_bytes counts).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/counts.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan.hpp"
#include "llep/core/topology.hpp"

namespace llep::sim {

/// One expert's SwiGLU FFN: gate and up D x H each (one fused D x 2H GEMM), down H x D.
/// `name` selects the measured GEMM curve of this shape (the CSV's shape column).
struct FfnShape {
  std::string name;
  int hidden = 0;        ///< D
  int intermediate = 0;  ///< H

  void check() const {
    LLEP_EXPECTS(hidden > 0 && intermediate > 0, "FFN shape '", name, "': D = ", hidden, " and H = ", intermediate,
                 " must be > 0");
  }
  /// FLOPs of the FFN on `rows` rows: 2 rows D 2H (gate-up) + 2 rows H D (down).
  [[nodiscard]] double flops(double rows) const noexcept {
    return 6.0 * rows * static_cast<double>(hidden) * static_cast<double>(intermediate);
  }
  /// Elements of one expert's weights: D 2H + H D.
  [[nodiscard]] double weight_elems() const noexcept {
    return 3.0 * static_cast<double>(hidden) * static_cast<double>(intermediate);
  }
};

/// The default GEMM profile: a roofline. Numbers are assumptions for an H100 SXM (80 GB):
/// NVIDIA's data sheet gives 989 TFLOP/s dense BF16 tensor-core peak and 3.35 TB/s HBM3;
/// real cuBLAS GEMMs achieve less than that peak, so the default is optimistic for compute
/// (calibrate with a measured curve). `launch_s` is the fixed cost of one kernel (launch
/// plus ramp), about 5 microseconds.
struct Roofline {
  double peak_flops = 989e12;
  double hbm_bytes_per_s = 3.35e12;
  double launch_s = 5e-6;

  void check() const {
    LLEP_EXPECTS(std::isfinite(peak_flops) && peak_flops > 0, "roofline peak_flops = ", peak_flops, " must be > 0");
    LLEP_EXPECTS(std::isfinite(hbm_bytes_per_s) && hbm_bytes_per_s > 0, "roofline hbm_bytes_per_s = ",
                 hbm_bytes_per_s, " must be > 0");
    LLEP_EXPECTS(std::isfinite(launch_s) && launch_s >= 0, "roofline launch_s = ", launch_s, " must be >= 0");
  }
  /// One GEMM [m x k] x [k x n]: max(flops / peak, bytes / HBM) + launch, where bytes are
  /// the weights (read once), the input rows and the output rows.
  [[nodiscard]] double gemm_seconds(double m, double k, double n, double elem_bytes) const noexcept {
    const double flops = 2.0 * m * k * n;
    const double bytes = (k * n + m * k + m * n) * elem_bytes;
    return std::max(flops / peak_flops, bytes / hbm_bytes_per_s) + launch_s;
  }
  /// One expert's FFN: gate-up GEMM, the SwiGLU activation (reads rows x 2H, writes
  /// rows x H: memory-bound), down GEMM.
  [[nodiscard]] double ffn_seconds(double rows, const FfnShape& s, double elem_bytes) const noexcept {
    const double D = s.hidden, H = s.intermediate;
    return gemm_seconds(rows, D, 2 * H, elem_bytes) + rows * 3 * H * elem_bytes / hbm_bytes_per_s + launch_s +
           gemm_seconds(rows, H, D, elem_bytes);
  }
};

/// A measured point: one expert's FFN on `rows` rows took `seconds`.
struct GemmPoint {
  double rows = 0;
  double seconds = 0;
};

/// Time of one expert's FFN versus rows: the roofline, or measured curves (one per shape).
///
/// A measured curve interpolates the achieved FLOP/s piecewise-linearly in log(rows) and
/// log(FLOP/s) (equivalently log time): between two points with t1 <= t2, time then stays
/// monotone in rows, which interpolating FLOP/s linearly would not guarantee. Below the
/// smallest measured rows the time is that of the smallest point (a GEMM that small is
/// bound by launch and weight reads); above the largest, FLOP/s stays at the last point's.
/// A point measured faster than a smaller one is raised to the smaller one's time, so that
/// time never falls as rows grow (measurement noise).
class GemmProfile {
 public:
  /// The roofline default.
  GemmProfile() = default;
  [[nodiscard]] static GemmProfile roofline(const Roofline& r = {}) {
    r.check();
    GemmProfile p;
    p.roofline_ = r;
    return p;
  }

  /// Measured curves, one per shape name (names distinct, points in any order); `source`
  /// names where they come from in describe() and errors. The GEMM curve CSV reader
  /// (llep/sim/gemm_csv.hpp) builds profiles this way.
  [[nodiscard]] static GemmProfile measured(std::string source,
                                            std::vector<std::pair<std::string, std::vector<GemmPoint>>> curves) {
    GemmProfile p;
    p.source_ = std::move(source);
    for (auto& [name, pts] : curves) {
      check_points(name, pts);
      normalise(pts);
    }
    p.curves_ = std::move(curves);
    p.calibrated_ = true;
    return p;
  }

  /// Adds (or replaces) the measured curve of one shape; points in any order.
  void set_curve(const std::string& shape, std::vector<GemmPoint> points) {
    check_points(shape, points);
    normalise(points);
    curve(shape) = std::move(points);
    calibrated_ = true;
  }

  /// True when the times come from measured curves, false for the roofline.
  [[nodiscard]] bool calibrated() const noexcept { return calibrated_; }
  [[nodiscard]] const Roofline& roofline_params() const noexcept { return roofline_; }
  /// One line saying where the times come from.
  [[nodiscard]] std::string describe() const {
    if (!calibrated_)
      return detail::concat("roofline default (not measured): peak ", roofline_.peak_flops / 1e12,
                            " TFLOP/s, HBM ", roofline_.hbm_bytes_per_s / 1e12, " TB/s, ", roofline_.launch_s * 1e6,
                            " us per kernel");
    return detail::concat("measured GEMM curves from ", source_.empty() ? std::string("set_curve") : source_);
  }

  /// Seconds of one expert's FFN on `rows` rows (0 for no rows).
  [[nodiscard]] double ffn_seconds(double rows, const FfnShape& shape, double elem_bytes) const {
    if (rows <= 0) return 0;
    if (!calibrated_) return roofline_.ffn_seconds(rows, shape, elem_bytes);
    const std::vector<GemmPoint>* pts = nullptr;
    for (const auto& [name, c] : curves_)
      if (name == shape.name) pts = &c;
    LLEP_EXPECTS(pts != nullptr, "no measured GEMM curve for shape '", shape.name, "' in ", source_);
    const auto& c = *pts;
    if (rows <= c.front().rows) return c.front().seconds;
    if (rows >= c.back().rows) return c.back().seconds * rows / c.back().rows;
    const auto hi = std::upper_bound(c.begin(), c.end(), rows, [](double r, const GemmPoint& p) { return r < p.rows; });
    const auto lo = hi - 1;
    const double u = std::log(rows / lo->rows) / std::log(hi->rows / lo->rows);
    return lo->seconds * std::pow(hi->seconds / lo->seconds, u);
  }

 private:
  static void check_points(const std::string& shape, const std::vector<GemmPoint>& points) {
    LLEP_EXPECTS(!points.empty(), "GEMM curve of '", shape, "' has no points");
    for (const GemmPoint& pt : points)
      LLEP_EXPECTS(std::isfinite(pt.rows) && pt.rows > 0 && std::isfinite(pt.seconds) && pt.seconds > 0,
                   "GEMM curve of '", shape, "': point (rows ", pt.rows, ", seconds ", pt.seconds,
                   ") must have rows > 0 and seconds > 0");
  }
  // Sorted by rows; a time below a smaller GEMM's is raised to it.
  static void normalise(std::vector<GemmPoint>& pts) {
    std::sort(pts.begin(), pts.end(), [](const GemmPoint& a, const GemmPoint& b) { return a.rows < b.rows; });
    for (std::size_t i = 1; i < pts.size(); ++i) pts[i].seconds = std::max(pts[i].seconds, pts[i - 1].seconds);
  }
  std::vector<GemmPoint>& curve(const std::string& shape) {
    for (auto& [name, c] : curves_)
      if (name == shape) return c;
    curves_.emplace_back(shape, std::vector<GemmPoint>{});
    return curves_.back().second;
  }

  Roofline roofline_{};
  bool calibrated_ = false;
  std::string source_;
  std::vector<std::pair<std::string, std::vector<GemmPoint>>> curves_;
};

/// Links between ranks. Assumptions: inside a node NVLink 4 through NVSwitch, of which NCCL
/// reaches about 370 GB/s per direction per GPU; between nodes one 400 Gb/s NIC per GPU,
/// 50 GB/s per direction. A round (one collective or one group of point-to-point copies)
/// also costs a fixed latency, larger when it crosses nodes.
struct LinkModel {
  double intra_bytes_per_s = 370e9;
  double inter_bytes_per_s = 50e9;
  double intra_latency_s = 10e-6;
  double inter_latency_s = 25e-6;

  void check() const {
    LLEP_EXPECTS(std::isfinite(intra_bytes_per_s) && intra_bytes_per_s > 0, "intra-node bandwidth ",
                 intra_bytes_per_s, " B/s must be > 0");
    LLEP_EXPECTS(std::isfinite(inter_bytes_per_s) && inter_bytes_per_s > 0, "inter-node bandwidth ",
                 inter_bytes_per_s, " B/s must be > 0");
    LLEP_EXPECTS(std::isfinite(intra_latency_s) && intra_latency_s >= 0 && std::isfinite(inter_latency_s) &&
                     inter_latency_s >= 0,
                 "link latencies (", intra_latency_s, ", ", inter_latency_s, " s) must be >= 0");
  }
};

/// Bytes one rank moves in one round, by link class and direction.
struct RoundBytes {
  double intra_sent = 0, intra_received = 0, inter_sent = 0, inter_received = 0;
  [[nodiscard]] bool empty() const noexcept {
    return intra_sent == 0 && intra_received == 0 && inter_sent == 0 && inter_received == 0;
  }
  [[nodiscard]] double total() const noexcept { return intra_sent + intra_received + inter_sent + inter_received; }
};

/// What one rank costs in a step.
struct RankCost {
  count_t rows = 0;          ///< rows it computes (native and foreign)
  int gemms = 0;             ///< expert FFNs it runs (one per segment)
  int foreign_experts = 0;   ///< experts whose weights it receives
  double compute_s = 0;
  double comm_s = 0;         ///< counts + weights + dispatch + combine rounds
  double weight_comm_s = 0;  ///< the weight round alone (0 without weight traffic)
  RoundBytes counts, weights, dispatch, combine;
  double peak_bytes = 0;     ///< expert rows in + out, largest GEMM's intermediate, foreign weights
  [[nodiscard]] double total_s() const noexcept { return compute_s + comm_s; }
};

/// The model's verdict on one plan.
struct StepCost {
  std::vector<RankCost> ranks;
  double step_s = 0;       ///< max over ranks of compute + comm (no overlap)
  int critical_rank = 0;   ///< the rank that sets step_s (lowest on ties)
  [[nodiscard]] double max_compute_s() const noexcept { return max_of(&RankCost::compute_s); }
  [[nodiscard]] double max_comm_s() const noexcept { return max_of(&RankCost::comm_s); }
  [[nodiscard]] double max_peak_bytes() const noexcept { return max_of(&RankCost::peak_bytes); }
  [[nodiscard]] std::vector<double> compute_s() const { return column(&RankCost::compute_s); }
  [[nodiscard]] std::vector<double> comm_s() const { return column(&RankCost::comm_s); }
  [[nodiscard]] std::vector<double> peak_bytes() const { return column(&RankCost::peak_bytes); }

 private:
  [[nodiscard]] double max_of(double RankCost::*m) const noexcept {
    double v = 0;
    for (const RankCost& r : ranks) v = std::max(v, r.*m);
    return v;
  }
  [[nodiscard]] std::vector<double> column(double RankCost::*m) const {
    std::vector<double> v;
    v.reserve(ranks.size());
    for (const RankCost& r : ranks) v.push_back(r.*m);
    return v;
  }
};

/// Counts matrix C[P][N] where every rank routes l[e] / P pairs of expert e (remainders to
/// the lowest ranks): what a loads-only caller assumes about where the pairs start.
[[nodiscard]] inline std::vector<count_t> even_counts(std::span<const count_t> loads, int ranks) {
  LLEP_EXPECTS(ranks > 0, "ranks P = ", ranks, " must be > 0");
  const std::size_t N = loads.size(), P = static_cast<std::size_t>(ranks);
  std::vector<count_t> c(P * N);
  for (std::size_t e = 0; e < N; ++e)
    for (std::size_t p = 0; p < P; ++p)
      c[p * N + e] = loads[e] / ranks + (static_cast<count_t>(p) < loads[e] % ranks ? 1 : 0);
  return c;
}

/// Token rows each rank sends to and receives from other ranks in the dispatch, by link
/// class (the combine is the same traffic reversed). Pairs of an expert are ordered by
/// source rank, so source s holds positions [sum_{q<s} C[q][e], + C[s][e]) and a segment
/// (rank, begin, end) receives the overlap of that range with [begin, end): the rows
/// llep::Layout puts in its send and receive counts, without its per-pair tables.
struct TokenTraffic {
  std::vector<count_t> intra_sent, intra_received, inter_sent, inter_received;
};

/// Calls flow(s, d, n) for the n > 0 rows of each expert that source s sends to rank d != s,
/// where count(s, e) is how many of e's pairs s holds (the traffic token_traffic sums).
template <class Count, class Flow>
void for_each_token_flow(const Plan& plan, const Topology& topo, Count count, Flow flow) {
  const int P = topo.ranks(), N = topo.experts();
  LLEP_EXPECTS(plan.finished() && plan.ranks() == P && plan.experts() == N, "plan does not match the topology (P = ",
               P, ", N = ", N, ") or is unfinished");
  for (int e = 0; e < N; ++e) {
    const auto segs = plan.segments(e);
    count_t load = 0;
    for (int s = 0; s < P; ++s) load += count(s, e);
    count_t planned = 0;
    for (const Segment& g : segs) planned = std::max(planned, g.end);
    LLEP_EXPECTS(planned == load, "expert ", e, ": the plan covers ", planned, " pairs but the counts hold ", load);
    std::size_t j = 0;
    count_t lo = 0;
    for (int s = 0; s < P; ++s) {
      const count_t hi = lo + count(s, e);
      while (j < segs.size() && segs[j].end <= lo) ++j;
      for (std::size_t k = j; k < segs.size() && segs[k].begin < hi; ++k) {
        const count_t n = std::min(hi, segs[k].end) - std::max(lo, segs[k].begin);
        if (n > 0 && segs[k].rank != s) flow(s, segs[k].rank, n);
      }
      lo = hi;
    }
  }
}

[[nodiscard]] inline TokenTraffic token_traffic(CountsView counts, const Plan& plan, const Topology& topo) {
  const int P = topo.ranks(), N = topo.experts();
  LLEP_EXPECTS(counts.ranks() == P && counts.experts() == N, "counts are ", counts.ranks(), " x ", counts.experts(),
               " but the topology is P = ", P, ", N = ", N);
  TokenTraffic t;
  for (auto* v : {&t.intra_sent, &t.intra_received, &t.inter_sent, &t.inter_received})
    v->assign(static_cast<std::size_t>(P), 0);
  for_each_token_flow(plan, topo, [&](int s, int e) { return counts(s, e); }, [&](int s, int d, count_t n) {
    const bool intra = topo.node_of(s) == topo.node_of(d);
    (intra ? t.intra_sent : t.inter_sent)[static_cast<std::size_t>(s)] += n;
    (intra ? t.intra_received : t.inter_received)[static_cast<std::size_t>(d)] += n;
  });
  return t;
}

/// The cost model: a GEMM profile, a link model and the element size (bf16 by default).
struct CostModel {
  GemmProfile gemm{};
  LinkModel link{};
  double elem_bytes = 2;
  /// Bytes a weight transfer puts on the wire per byte of decoded weights (a weight codec:
  /// its encoded size / (elements x elem_bytes)); the receiver holds them decoded, so the
  /// peak still counts decoded bytes.
  double weight_wire_ratio = 1;
  /// The weight round overlaps the previous step (plan-ahead): it is left out of comm_s
  /// and the step time; RankCost::weight_comm_s still says what it costs.
  bool weights_prefetched = false;

  /// Seconds of one round that moves `b` on a rank: the slower link class, each lasting
  /// max(sent, received) / bandwidth (directions are concurrent), plus the round latency
  /// (the inter-node one when the topology spans nodes). An empty round costs nothing.
  [[nodiscard]] double round_seconds(const RoundBytes& b, const Topology& topo) const {
    if (b.empty()) return 0;
    const double intra = std::max(b.intra_sent, b.intra_received) / link.intra_bytes_per_s;
    const double inter = std::max(b.inter_sent, b.inter_received) / link.inter_bytes_per_s;
    return std::max(intra, inter) + (topo.nodes() > 1 ? link.inter_latency_s : link.intra_latency_s);
  }

  /// Bytes of one expert's weights.
  [[nodiscard]] double expert_bytes(const FfnShape& shape) const noexcept { return shape.weight_elems() * elem_bytes; }

  /// Cost of `plan` for the counts C[P][N] (which rank holds which pairs).
  [[nodiscard]] StepCost step(const Plan& plan, CountsView counts, const Topology& topo, const FfnShape& shape) const {
    check(shape);
    const int P = topo.ranks();
    const auto sP = static_cast<std::size_t>(P);
    const TokenTraffic tt = token_traffic(counts, plan, topo);
    const double row_bytes = static_cast<double>(shape.hidden) * elem_bytes;
    const double wbytes = expert_bytes(shape);
    StepCost out;
    out.ranks.assign(sP, RankCost{});
    std::vector<double> max_seg(sP, 0);
    for (const Segment& g : plan.segments()) {
      RankCost& r = out.ranks[static_cast<std::size_t>(g.rank)];
      r.rows += g.size();
      ++r.gemms;
      r.compute_s += gemm.ffn_seconds(static_cast<double>(g.size()), shape, elem_bytes);
      max_seg[static_cast<std::size_t>(g.rank)] = std::max(max_seg[static_cast<std::size_t>(g.rank)], static_cast<double>(g.size()));
    }
    for (const WeightTransfer& w : plan.weight_transfers()) {
      const bool intra = topo.node_of(w.src) == topo.node_of(w.dst);
      RoundBytes& s = out.ranks[static_cast<std::size_t>(w.src)].weights;
      RoundBytes& d = out.ranks[static_cast<std::size_t>(w.dst)].weights;
      (intra ? s.intra_sent : s.inter_sent) += wbytes * weight_wire_ratio;
      (intra ? d.intra_received : d.inter_received) += wbytes * weight_wire_ratio;
      ++out.ranks[static_cast<std::size_t>(w.dst)].foreign_experts;
    }
    for (std::size_t p = 0; p < sP; ++p) {
      RankCost& r = out.ranks[p];
      r.counts = counts_round(topo);
      r.dispatch = token_round(tt.intra_sent[p], tt.intra_received[p], tt.inter_sent[p], tt.inter_received[p], row_bytes);
      r.combine = RoundBytes{r.dispatch.intra_received, r.dispatch.intra_sent, r.dispatch.inter_received,
                             r.dispatch.inter_sent};
      r.weight_comm_s = round_seconds(r.weights, topo);
      r.comm_s = comm_seconds(r, topo);
      r.peak_bytes = static_cast<double>(r.rows) * 2 * row_bytes + max_seg[p] * 3 * shape.intermediate * elem_bytes +
                     r.foreign_experts * wbytes;
    }
    finish(out);
    return out;
  }

  /// Scratch step_seconds needs for P ranks, in bytes.
  [[nodiscard]] static std::size_t step_seconds_scratch(int ranks) noexcept {
    return static_cast<std::size_t>(ranks) * (5 * sizeof(double) + 4 * sizeof(count_t));
  }

  /// step(plan, loads, topo, shape).step_s, the same arithmetic, without allocating: the
  /// per-rank sums live in `scratch` (step_seconds_scratch(P) bytes, 8-byte aligned). Unlike
  /// step() it takes +infinite link bandwidths (free links, CostAware's what-if planning);
  /// the caller checks the links otherwise.
  [[nodiscard]] double step_seconds(const Plan& plan, std::span<const count_t> loads, const Topology& topo,
                                    const FfnShape& shape, std::span<std::byte> scratch) const {
    shape.check();
    check_loads(loads, topo);
    const int P = topo.ranks();
    const auto sP = static_cast<std::size_t>(P);
    LLEP_EXPECTS(scratch.size() >= step_seconds_scratch(P), "step_seconds scratch holds ", scratch.size(),
                 " bytes; it needs ", step_seconds_scratch(P));
    auto* compute = reinterpret_cast<double*>(scratch.data());
    RankCost r;  // the weight round bytes of one rank at a time, as step() keeps them
    auto* w = compute + sP;                            // weights: 4 x P (RoundBytes' order)
    auto* t = reinterpret_cast<count_t*>(w + 4 * sP);  // tokens: 4 x P
    std::fill(compute, compute + 5 * sP, 0.0);
    std::fill(t, t + 4 * sP, count_t{0});
    for (const Segment& g : plan.segments())
      compute[static_cast<std::size_t>(g.rank)] += gemm.ffn_seconds(static_cast<double>(g.size()), shape, elem_bytes);
    const double wire = expert_bytes(shape) * weight_wire_ratio;
    for (const WeightTransfer& x : plan.weight_transfers()) {
      const bool intra = topo.node_of(x.src) == topo.node_of(x.dst);
      w[(intra ? 0 : 2) * sP + static_cast<std::size_t>(x.src)] += wire;
      w[(intra ? 1 : 3) * sP + static_cast<std::size_t>(x.dst)] += wire;
    }
    for_each_token_flow(
        plan, topo,
        [&](int s, int e) {
          const count_t l = loads[static_cast<std::size_t>(e)];
          return l / P + (s < l % P ? 1 : 0);  // even_counts
        },
        [&](int s, int d, count_t n) {
          const bool intra = topo.node_of(s) == topo.node_of(d);
          t[(intra ? 0 : 2) * sP + static_cast<std::size_t>(s)] += n;
          t[(intra ? 1 : 3) * sP + static_cast<std::size_t>(d)] += n;
        });
    const double row_bytes = static_cast<double>(shape.hidden) * elem_bytes;
    double step = 0;
    for (std::size_t q = 0; q < sP; ++q) {
      r.counts = counts_round(topo);
      r.weights = RoundBytes{w[q], w[sP + q], w[2 * sP + q], w[3 * sP + q]};
      r.dispatch = token_round(t[q], t[sP + q], t[2 * sP + q], t[3 * sP + q], row_bytes);
      r.combine = RoundBytes{r.dispatch.intra_received, r.dispatch.intra_sent, r.dispatch.inter_received,
                             r.dispatch.inter_sent};
      r.weight_comm_s = round_seconds(r.weights, topo);
      step = std::max(step, compute[q] + comm_seconds(r, topo));
    }
    return step;
  }

  /// Cost of `plan` for loads alone: every rank routes l[e] / P pairs of each expert.
  [[nodiscard]] StepCost step(const Plan& plan, std::span<const count_t> loads, const Topology& topo,
                              const FfnShape& shape) const {
    check_loads(loads, topo);
    const auto c = even_counts(loads, topo.ranks());
    return step(plan, CountsView(c, topo.ranks(), topo.experts()), topo, shape);
  }

  /// The force-balanced ideal (UltraEP's reference): every rank computes exactly
  /// total / P rows, as one GEMM per native expert of total / N rows each (balanced EP's
  /// compute), with no transfers at all (no tokens, no weights, no counts). Throughput as a
  /// fraction of the ideal is ideal.step_s / plan.step_s.
  [[nodiscard]] StepCost ideal_step(std::span<const count_t> loads, const Topology& topo, const FfnShape& shape) const {
    check(shape);
    check_loads(loads, topo);
    double total = 0;
    for (count_t l : loads) total += static_cast<double>(l);
    const double per_expert = total / topo.experts(), per_rank = total / topo.ranks();
    RankCost r;
    r.rows = static_cast<count_t>(std::ceil(per_rank));
    r.gemms = per_expert > 0 ? topo.experts_per_rank() : 0;
    r.compute_s = r.gemms * gemm.ffn_seconds(per_expert, shape, elem_bytes);
    r.peak_bytes = per_rank * 2 * shape.hidden * elem_bytes + per_expert * 3 * shape.intermediate * elem_bytes;
    StepCost out;
    out.ranks.assign(static_cast<std::size_t>(topo.ranks()), r);
    finish(out);
    return out;
  }

 private:
  void check(const FfnShape& shape) const {
    shape.check();
    link.check();
    LLEP_EXPECTS(std::isfinite(elem_bytes) && elem_bytes > 0, "elem_bytes = ", elem_bytes, " must be > 0");
    LLEP_EXPECTS(std::isfinite(weight_wire_ratio) && weight_wire_ratio > 0, "weight_wire_ratio = ", weight_wire_ratio,
                 " must be > 0");
  }
  // Counts all-gather: every rank sends its row of N 64-bit counts to every other rank.
  [[nodiscard]] static RoundBytes counts_round(const Topology& topo) noexcept {
    const double row_counts = static_cast<double>(topo.experts()) * sizeof(count_t);
    const double same_node = topo.ranks_per_node() - 1, other_nodes = topo.ranks() - topo.ranks_per_node();
    return RoundBytes{row_counts * same_node, row_counts * same_node, row_counts * other_nodes,
                      row_counts * other_nodes};
  }
  [[nodiscard]] static RoundBytes token_round(count_t is, count_t ir, count_t es, count_t er, double row_bytes) noexcept {
    return RoundBytes{static_cast<double>(is) * row_bytes, static_cast<double>(ir) * row_bytes,
                      static_cast<double>(es) * row_bytes, static_cast<double>(er) * row_bytes};
  }
  // A rank's comm_s from its rounds and weight_comm_s.
  [[nodiscard]] double comm_seconds(const RankCost& r, const Topology& topo) const {
    if (topo.ranks() == 1) return 0;
    // The collectives are rounds every rank joins, even with nothing to move.
    auto collective = [&](const RoundBytes& b) {
      return b.empty() ? (topo.nodes() > 1 ? link.inter_latency_s : link.intra_latency_s) : round_seconds(b, topo);
    };
    return collective(r.counts) + (weights_prefetched ? 0 : r.weight_comm_s) + collective(r.dispatch) +
           collective(r.combine);
  }
  static void finish(StepCost& out) {
    out.step_s = 0;
    out.critical_rank = 0;
    for (std::size_t p = 0; p < out.ranks.size(); ++p)
      if (out.ranks[p].total_s() > out.step_s) {
        out.step_s = out.ranks[p].total_s();
        out.critical_rank = static_cast<int>(p);
      }
  }
};

}  // namespace llep::sim
