#pragma once
// Random steps for the symmetric exchanges (device/symmetric_exchange.hpp) and their
// brute-force results, shared by the host test (tests/device/test_symmetric.cpp) and the
// GPU one (tests/gpu/test_device_step.cu): ids, rows each rank sends each rank, weight
// transfers, and payload bytes that name (step, source, destination, row, byte), so a row
// from the wrong step, rank or place cannot pass.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/plan_view.hpp"
#include "llep/device/gather_counts.hpp"
#include "llep/device/status_word.hpp"
#include "llep/device/symmetric.hpp"
#include "llep/device/symmetric_exchange.hpp"

namespace symtest {

using llep::count_t;

/// Ids per rank and step: fewer than this.
inline constexpr std::size_t kMaxIds = 150;
/// enqueue_step's pair count when it is read from exec memory (RankBuffers::pairs).
inline constexpr std::size_t kPairsOnDevice = ~std::size_t{0};

struct StepCase {
  int P = 1, N = 1, step = 0;
  std::vector<std::vector<std::int32_t>> ids;       // [rank]
  std::vector<count_t> rows;                        // [src * P + dst]
  std::vector<llep::WeightTransfer> transfers;      // expert, native src, dst
  [[nodiscard]] count_t rows_of(int src, int dst) const {
    return rows[static_cast<std::size_t>(src) * static_cast<std::size_t>(P) + static_cast<std::size_t>(dst)];
  }
};

/// Native experts per rank: N / P, expert e on rank e / M at slot e % M.
inline int experts_per_rank(int P, int N) { return N / P; }

/// One step of every rank: up to `max_rows` rows per (src, dst), ids in [0, N) with one
/// bad id on `bad_rank` (none when -1), up to 2P weight transfers (N a multiple of P).
inline StepCase make_step(std::mt19937_64& rng, int P, int N, int step, count_t max_rows, int bad_rank = -1) {
  StepCase c;
  c.P = P;
  c.N = N;
  c.step = step;
  for (int r = 0; r < P; ++r) {
    std::vector<std::int32_t> ids(rng() % kMaxIds);
    for (auto& id : ids) id = static_cast<std::int32_t>(rng() % static_cast<unsigned>(N));
    if (r == bad_rank) {
      if (ids.empty()) ids.push_back(0);
      ids[rng() % ids.size()] = N + 2;
    }
    c.ids.push_back(std::move(ids));
  }
  for (int i = 0; i < P * P; ++i)
    c.rows.push_back(rng() % 4 == 0 ? 0 : static_cast<count_t>(rng() % static_cast<std::uint64_t>(max_rows + 1)));
  const int M = experts_per_rank(P, N);
  if (P > 1)
    for (int t = 0, n = static_cast<int>(rng() % static_cast<unsigned>(2 * P + 1)); t < n; ++t) {
      const auto e = static_cast<std::int32_t>(rng() % static_cast<unsigned>(N));
      const std::int32_t src = e / M;
      auto dst = static_cast<std::int32_t>(rng() % static_cast<unsigned>(P - 1));
      if (dst >= src) ++dst;
      c.transfers.push_back(llep::WeightTransfer{e, src, dst});
    }
  return c;
}

/// Rank p's tables (P entries): what it sends, where from, what it receives, where to.
struct Tables {
  std::vector<count_t> send_counts, send_offsets, recv_counts, recv_offsets;
};
inline Tables tables(const StepCase& c, int p) {
  Tables t;
  count_t s = 0, r = 0;
  for (int q = 0; q < c.P; ++q) {
    t.send_counts.push_back(c.rows_of(p, q));
    t.send_offsets.push_back(s);
    s += c.rows_of(p, q);
    t.recv_counts.push_back(c.rows_of(q, p));
    t.recv_offsets.push_back(r);
    r += c.rows_of(q, p);
  }
  return t;
}

inline std::byte payload(int step, int src, int dst, count_t row, std::size_t b) {
  const std::uint64_t h = static_cast<std::uint64_t>(step) * 1000003u + static_cast<std::uint64_t>(src) * 7919u +
                          static_cast<std::uint64_t>(dst) * 104729u + static_cast<std::uint64_t>(row) * 31u + b;
  return static_cast<std::byte>((h ^ (h >> 8) ^ (h >> 16)) & 0xFF);
}

/// Rank p's send rows of a step (row_bytes each) in destination order, or (incoming) what
/// it receives in the dispatch: every source's rows for p, in source order.
inline std::vector<std::byte> rows_of(const StepCase& c, int p, std::size_t row_bytes, bool incoming) {
  std::vector<std::byte> out;
  for (int q = 0; q < c.P; ++q) {
    const int src = incoming ? q : p, dst = incoming ? p : q;
    for (count_t j = 0; j < c.rows_of(src, dst); ++j)
      for (std::size_t b = 0; b < row_bytes; ++b) out.push_back(payload(c.step, src, dst, j, b));
  }
  return out;
}
inline std::vector<std::byte> send_rows(const StepCase& c, int p, std::size_t row_bytes) {
  return rows_of(c, p, row_bytes, false);
}
inline std::vector<std::byte> recv_rows(const StepCase& c, int p, std::size_t row_bytes) {
  return rows_of(c, p, row_bytes, true);
}

/// The brute-force counts matrix (P x N), ids outside [0, N) left out.
inline std::vector<count_t> counts_matrix(const StepCase& c) {
  std::vector<count_t> m(static_cast<std::size_t>(c.P) * static_cast<std::size_t>(c.N), 0);
  for (int r = 0; r < c.P; ++r)
    for (const std::int32_t id : c.ids[static_cast<std::size_t>(r)])
      if (id >= 0 && id < c.N) ++m[static_cast<std::size_t>(r) * static_cast<std::size_t>(c.N) + static_cast<std::size_t>(id)];
  return m;
}

/// Rank q's native weights of a step: M experts of expert_bytes.
inline std::vector<std::byte> native_weights(const StepCase& c, int q, std::size_t expert_bytes) {
  std::vector<std::byte> out;
  for (int s = 0; s < experts_per_rank(c.P, c.N); ++s)
    for (std::size_t b = 0; b < expert_bytes; ++b) out.push_back(payload(c.step, q, -1 - s, 0, b));
  return out;
}

/// What rank p's foreign slots hold after the pull: its transfers in plan order.
inline std::vector<std::byte> foreign_weights(const StepCase& c, int p, std::size_t expert_bytes) {
  std::vector<std::byte> out;
  const int M = experts_per_rank(c.P, c.N);
  for (const llep::WeightTransfer& t : c.transfers)
    if (t.dst == p)
      for (std::size_t b = 0; b < expert_bytes; ++b) out.push_back(payload(c.step, t.src, -1 - t.expert % M, 0, b));
  return out;
}

/// native_slot[e] for the layout above.
inline std::vector<std::int32_t> native_slots(int P, int N) {
  std::vector<std::int32_t> s;
  for (int e = 0; e < N; ++e) s.push_back(e % experts_per_rank(P, N));
  return s;
}

/// The region layout every rank shares and the sizes of one test: counts slots, a table
/// and a send area for the dispatch and the combine each, the native weights.
struct Rig {
  int P, N;
  count_t max_rows;  // per (src, dst)
  std::size_t row_bytes, expert_bytes;
  llep::SymmetricLayout layout;
  std::size_t slots, table_dispatch, table_combine, send_dispatch, send_combine, weights;
  Rig(int P_, int N_, count_t max_rows_, std::size_t row_bytes_, std::size_t expert_bytes_)
      : P(P_), N(N_), max_rows(max_rows_), row_bytes(row_bytes_), expert_bytes(expert_bytes_), layout(P_) {
    slots = layout.reserve(llep::symmetric_counts_bytes(N));
    table_dispatch = layout.reserve(llep::symmetric_table_bytes(P));
    table_combine = layout.reserve(llep::symmetric_table_bytes(P));
    send_dispatch = layout.reserve(rows_bytes());
    send_combine = layout.reserve(rows_bytes());
    weights = layout.reserve(static_cast<std::size_t>(experts_per_rank(P, N)) * expert_bytes);
  }
  [[nodiscard]] count_t capacity_rows() const { return static_cast<count_t>(P) * max_rows; }
  [[nodiscard]] std::size_t rows_bytes() const { return static_cast<std::size_t>(capacity_rows()) * row_bytes; }
  [[nodiscard]] std::size_t max_transfers() const { return 2 * static_cast<std::size_t>(P); }
  [[nodiscard]] std::size_t places_bytes() const {
    return llep::TransferPlaces::bytes(P, N, static_cast<std::int64_t>(max_transfers()));
  }
};

/// One rank's exec memory (host vectors or device arrays), sized by the Rig.
struct RankBuffers {
  std::int32_t* ids = nullptr;         // kMaxIds: the step's ids
  count_t* pairs = nullptr;            // 1: how many
  std::byte* counts_memory = nullptr;  // SharedCounts::bytes(P, N)
  count_t* tables = nullptr;           // 4P: send counts, send offsets, recv counts, recv offsets
  std::byte* recv = nullptr;           // rows_bytes(): the dispatch's result
  std::byte* back = nullptr;           // rows_bytes(): the combine's result
  llep::PlanView* plan = nullptr;      // one PlanView whose transfers are `transfers`
  llep::WeightTransfer* transfers = nullptr;  // max_transfers()
  std::int32_t* native_slot = nullptr;        // N
  std::byte* foreign = nullptr;               // max_transfers() * expert_bytes
  std::byte* places = nullptr;                // places_bytes(): the step's place table
};

/// The combine's input: every received byte transformed (LLEP_HOST_DEVICE: a test kernel).
struct TransformRows {
  const std::byte* src;
  std::byte* dst;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    dst[i] = static_cast<std::byte>(static_cast<unsigned char>(src[i]) ^ 0x5Au);
  }
};

/// The step's inputs of rank p into its buffers and its region: outside a captured graph.
template <class Exec>
void upload_step(Exec& exec, const llep::SymmetricView& v, const Rig& rig, const StepCase& c, const RankBuffers& b) {
  const int p = v.rank;
  const auto& ids = c.ids[static_cast<std::size_t>(p)];
  exec.from_host(b.ids, ids.data(), ids.size() * sizeof(std::int32_t));
  const auto pairs = static_cast<count_t>(ids.size());
  exec.from_host(b.pairs, &pairs, sizeof pairs);
  const Tables t = tables(c, p);
  std::vector<count_t> all = t.send_counts;
  for (const auto* part : {&t.send_offsets, &t.recv_counts, &t.recv_offsets}) all.insert(all.end(), part->begin(), part->end());
  exec.from_host(b.tables, all.data(), all.size() * sizeof(count_t));
  const std::vector<std::byte> send = send_rows(c, p, rig.row_bytes), native = native_weights(c, p, rig.expert_bytes);
  exec.from_host(v.self + rig.send_dispatch, send.data(), send.size());
  exec.from_host(v.self + rig.weights, native.data(), native.size());
  exec.from_host(b.transfers, c.transfers.data(), c.transfers.size() * sizeof(llep::WeightTransfer));
  llep::PlanView plan;
  plan.transfers = b.transfers;
  plan.num_transfers = static_cast<std::int32_t>(c.transfers.size());
  plan.ranks = c.P;
  plan.experts = c.N;
  exec.from_host(b.plan, &plan, sizeof plan);
  exec.synchronize();  // the host vectors above die here
}

/// Rank p's step, enqueue-only: counts gather, dispatch, transform, combine, weights. The
/// pair count is `pairs`, or with kPairsOnDevice read from b.pairs.
template <class Exec>
void enqueue_step(Exec& exec, const llep::SymmetricView& v, const Rig& rig, const RankBuffers& b, std::size_t pairs,
                  llep::StatusWords& status, std::size_t workers, const llep::SignalOptions& options) {
  const int P = rig.P;
  const count_t* t = b.tables;
  llep::begin_step(exec, v);
  const llep::SharedCounts counts = llep::SharedCounts::carve(b.counts_memory, P, rig.N);
  if (pairs == kPairsOnDevice)
    llep::gather_counts_symmetric(exec, v, rig.slots, b.ids, b.pairs, kMaxIds, rig.N, counts, status, options);
  else
    llep::gather_counts_symmetric(exec, v, rig.slots, b.ids, pairs, rig.N, counts, status, options);
  llep::RowsExchange dispatch;
  dispatch.send = rig.send_dispatch;
  dispatch.send_capacity = rig.capacity_rows();
  dispatch.table = rig.table_dispatch;
  dispatch.send_counts = t;
  dispatch.send_offsets = t + P;
  dispatch.recv_offsets = t + 3 * P;
  dispatch.recv = b.recv;
  dispatch.recv_capacity = rig.capacity_rows();
  dispatch.row_bytes = rig.row_bytes;
  llep::rows_all_to_all(exec, v, dispatch, status, workers, options);
  exec.for_each_n(rig.rows_bytes(), TransformRows{b.recv, v.self + rig.send_combine});
  llep::RowsExchange combine = dispatch;  // the reverse: receive tables as the send side
  combine.send = rig.send_combine;
  combine.table = rig.table_combine;
  combine.send_counts = t + 2 * P;
  combine.send_offsets = t + 3 * P;
  combine.recv_offsets = t + P;
  combine.recv = b.back;
  combine.channel = llep::SignalChannel::combine;
  llep::rows_all_to_all(exec, v, combine, status, workers, options);
  llep::WeightsExchange w;
  w.places = llep::TransferPlaces::carve(b.places, b.plan, v.rank, P, rig.N, static_cast<std::int64_t>(rig.max_transfers()));
  llep::place_transfers(exec, w.places, status.word());
  w.native_slot = b.native_slot;
  w.weights = rig.weights;
  w.expert_bytes = rig.expert_bytes;
  w.foreign = b.foreign;
  w.foreign_capacity = static_cast<std::int32_t>(rig.max_transfers());
  llep::pull_weights(exec, v, w, status, workers, options);
}

/// What rank p's buffers hold after a step, read back (synchronises the exec).
struct StepResult {
  std::vector<count_t> counts, bad;
  std::vector<std::byte> recv, back, foreign;
  friend bool operator==(const StepResult&, const StepResult&) = default;
};
template <class Exec>
StepResult download_step(Exec& exec, const Rig& rig, const StepCase& c, int p, const RankBuffers& b) {
  StepResult r;
  r.counts.resize(static_cast<std::size_t>(rig.P) * static_cast<std::size_t>(rig.N));
  r.bad.resize(static_cast<std::size_t>(rig.P));
  r.recv.resize(recv_rows(c, p, rig.row_bytes).size());
  r.back.resize(send_rows(c, p, rig.row_bytes).size());
  r.foreign.resize(foreign_weights(c, p, rig.expert_bytes).size());
  const llep::SharedCounts counts = llep::SharedCounts::carve(b.counts_memory, rig.P, rig.N);
  exec.to_host(r.counts.data(), counts.counts, r.counts.size() * sizeof(count_t));
  exec.to_host(r.bad.data(), counts.bad, r.bad.size() * sizeof(count_t));
  exec.to_host(r.recv.data(), b.recv, r.recv.size());
  exec.to_host(r.back.data(), b.back, r.back.size());
  exec.to_host(r.foreign.data(), b.foreign, r.foreign.size());
  exec.synchronize();
  return r;
}

/// The brute-force result of rank p's step.
inline StepResult expected_step(const Rig& rig, const StepCase& c, int p) {
  StepResult r;
  r.counts = counts_matrix(c);
  for (const auto& ids : c.ids)
    r.bad.push_back(static_cast<count_t>(std::count_if(ids.begin(), ids.end(), [&](std::int32_t id) { return id < 0 || id >= c.N; })));
  r.recv = recv_rows(c, p, rig.row_bytes);
  r.back = send_rows(c, p, rig.row_bytes);
  for (auto& x : r.back) x = static_cast<std::byte>(static_cast<unsigned char>(x) ^ 0x5Au);
  r.foreign = foreign_weights(c, p, rig.expert_bytes);
  return r;
}

}  // namespace symtest
