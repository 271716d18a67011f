// The fixed-capacity exchange (device/collective_exchange.hpp) over HostThreads with
// HostExec, the functors a CUDA step runs over Nccl: steps with new ids, rows and weight
// transfers reuse one exchange; each rank's counts, dispatched rows, combined rows and
// received weights equal the brute-force ones of symmetric_cases.hpp; a capacity too small
// is named in the status word of the sender and of the receiver and writes nothing past a
// buffer (poisoned guards); a receive count that disagrees with the carried one is named.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "llep/device/collective_exchange.hpp"
#include "llep/exec/host.hpp"
#include "llep/transport/host_threads.hpp"
#include "symmetric_cases.hpp"

namespace {

using llep::count_t;
using llep::status_word_t;
using X = llep::CollectiveExchange<llep::HostThreads>;
static_assert(llep::check_step_exchange<X, llep::HostExec>());

constexpr std::byte kPoison{0xEE};

// n bytes at a 256-byte boundary followed by a poisoned guard of 256 bytes.
struct Guarded {
  explicit Guarded(std::size_t n_) : n(n_), bytes(n_ + 512, kPoison) {}
  std::span<std::byte> span() {
    const auto p = reinterpret_cast<std::uintptr_t>(bytes.data());
    return {bytes.data() + (256 - p % 256) % 256, n};
  }
  [[nodiscard]] bool guard_intact() {
    const std::span<std::byte> s = span();
    return std::all_of(s.data() + n, s.data() + n + 256, [](std::byte b) { return b == kPoison; });
  }
  std::size_t n;
  std::vector<std::byte> bytes;
};

// A plan never moves an expert to a rank twice: keep the first of each (expert, dst).
symtest::StepCase unique_transfers(symtest::StepCase c) {
  std::vector<llep::WeightTransfer> kept;
  for (const auto& t : c.transfers)
    if (std::none_of(kept.begin(), kept.end(), [&](const auto& k) { return k.expert == t.expert && k.dst == t.dst; }))
      kept.push_back(t);
  c.transfers = kept;
  return c;
}

// Backward's weight gradient of `expert` from helper `helper` in a step: bytes that name both.
std::byte grad_byte(const symtest::StepCase& c, int helper, std::int32_t expert, std::size_t b) {
  return symtest::payload(c.step, helper, -1000 - expert, 7, b);
}
// What native rank p receives: the gradient of each transfer from it, in plan order.
std::vector<std::byte> received_grads(const symtest::StepCase& c, int p, std::size_t grad_bytes) {
  std::vector<std::byte> out;
  for (const llep::WeightTransfer& t : c.transfers)
    if (t.src == p)
      for (std::size_t b = 0; b < grad_bytes; ++b) out.push_back(grad_byte(c, t.dst, t.expert, b));
  return out;
}

// The exchange's sizes for a rig; grad_bytes > 0 for steps that return weight gradients.
llep::StepExchangeSizes sizes_of(const symtest::Rig& rig, std::size_t grad_bytes = 0) {
  return llep::StepExchangeSizes{rig.P,
                                 rig.N,
                                 rig.capacity_rows(),
                                 rig.capacity_rows(),
                                 rig.row_bytes,
                                 symtest::experts_per_rank(rig.P, rig.N),
                                 static_cast<int>(rig.max_transfers()),
                                 rig.expert_bytes,
                                 grad_bytes};
}

// One rank: its exec, exchange and status word, its buffers and its calls of one step;
// results read back into a StepResult.
struct RankStep {
  RankStep(const symtest::Rig& rig_, llep::HostThreads& tr, const llep::StepExchangeSizes& sizes,
           const X::Capacity& capacity = {})
      : rig(rig_), p(tr.rank()), memory(X::bytes(sizes, capacity)), x(tr, sizes, memory.span(), capacity),
        words(llep::StatusWords::bytes(rig.P) / sizeof(status_word_t)), status(exec, words.data(), rig.P) {}
  const symtest::Rig& rig;
  int p;
  llep::HostExec exec;
  Guarded memory;
  X x;
  std::vector<status_word_t> words;
  llep::StatusWords status;
  Guarded counts_memory{llep::SharedCounts::bytes(rig.P, rig.N)}, recv{rig.rows_bytes()}, back{rig.rows_bytes()},
      foreign{rig.max_transfers() * rig.expert_bytes}, received{rig.max_transfers() * x.sizes().grad_bytes};
  std::vector<std::byte> received_got;  // with grad_bytes: what grads() delivered, as received_grads() sizes it
  std::vector<std::int32_t> native_slot = symtest::native_slots(rig.P, rig.N);
  std::vector<std::byte> places_memory = std::vector<std::byte>(llep::TransferPlaces::bytes(rig.P, rig.N));

  // The collective status check; this rank's error text (testutil::kNoError when none).
  std::string check(llep::HostThreads& tr) {
    return testutil::error_of([&] { status.check(exec, tr, rig.N); });
  }
  symtest::StepResult run(const symtest::StepCase& c, const symtest::Tables& t) {
    for (Guarded* g : {&recv, &back, &foreign}) std::fill(g->bytes.begin(), g->bytes.end(), kPoison);
    const llep::SharedCounts counts = llep::SharedCounts::carve(counts_memory.span().data(), rig.P, rig.N);
    // This rank's bins, counted here (the layer's histogram is not under test).
    std::fill(counts.local, counts.local + rig.N + 1, count_t{0});
    for (const std::int32_t id : c.ids[static_cast<std::size_t>(p)]) ++counts.local[id >= 0 && id < rig.N ? id : rig.N];
    x.begin_step(exec);
    x.share_counts(exec, counts, status);
    const std::vector<std::byte> send = symtest::send_rows(c, p, rig.row_bytes);
    std::copy(send.begin(), send.end(), x.send_rows(llep::SignalChannel::dispatch));
    x.rows(exec,
           llep::RowsStep{llep::SignalChannel::dispatch, t.send_counts.data(), t.send_offsets.data(),
                          t.recv_counts.data(), t.recv_offsets.data(), recv.span().data(), rig.capacity_rows()},
           status);
    for (std::size_t i = 0; i < rig.rows_bytes(); ++i)  // the combine sends back what arrived, transformed
      x.send_rows(llep::SignalChannel::combine)[i] =
          static_cast<std::byte>(static_cast<unsigned char>(recv.span()[i]) ^ 0x5Au);
    x.rows(exec,
           llep::RowsStep{llep::SignalChannel::combine, t.recv_counts.data(), t.recv_offsets.data(),
                          t.send_counts.data(), t.send_offsets.data(), back.span().data(), rig.capacity_rows()},
           status);
    const std::vector<std::byte> native = symtest::native_weights(c, p, rig.expert_bytes);
    std::copy(native.begin(), native.end(), x.native_weights());
    llep::PlanView plan;
    std::vector<llep::WeightTransfer> transfers = c.transfers;
    plan.transfers = transfers.data();
    plan.num_transfers = static_cast<std::int32_t>(transfers.size());
    const llep::TransferPlaces places = llep::TransferPlaces::carve(places_memory.data(), &plan, p, rig.P, rig.N);
    llep::place_transfers(exec, places, status.word());
    x.weights(exec,
              llep::WeightsStep{places, native_slot.data(), foreign.span().data(),
                                static_cast<std::int32_t>(rig.max_transfers())},
              status);
    const std::size_t gb = x.sizes().grad_bytes;
    if (gb > 0) {  // the helper's gradient of the j-th transfer to it at j; back to the natives
      std::fill(received.bytes.begin(), received.bytes.end(), kPoison);
      std::byte* g = x.foreign_grads();
      for (const llep::WeightTransfer& w : c.transfers)
        if (w.dst == p)
          for (std::size_t b = 0; b < gb; ++b) *g++ = grad_byte(c, p, w.expert, b);
      x.grads(exec, llep::GradsStep{places, received.span().data(), static_cast<std::int32_t>(rig.max_transfers())},
              status);
      const std::size_t n = received_grads(c, p, gb).size();
      received_got.assign(received.span().data(), received.span().data() + n);
    }
    symtest::StepResult r;
    r.counts.assign(counts.counts, counts.counts + rig.P * rig.N);
    r.bad.assign(counts.bad, counts.bad + rig.P);
    const symtest::StepResult want = symtest::expected_step(rig, c, p);
    r.recv.assign(recv.span().data(), recv.span().data() + want.recv.size());
    r.back.assign(back.span().data(), back.span().data() + want.back.size());
    r.foreign.assign(foreign.span().data(), foreign.span().data() + want.foreign.size());
    return r;
  }
  [[nodiscard]] bool guards_intact() {
    return memory.guard_intact() && counts_memory.guard_intact() && recv.guard_intact() && back.guard_intact() &&
           foreign.guard_intact() && received.guard_intact();
  }
};

}  // namespace

TEST_CASE("collective exchange over host threads: counts, rows both ways and weights equal brute force") {
  std::mt19937_64 rng(77);
  for (const int P : {1, 2, 3, 4}) {
    for (const std::size_t row_bytes : {std::size_t{32}, std::size_t{12}}) {  // 16-byte words, and bytes
      const int N = 2 * P;
      const symtest::Rig rig(P, N, 5, row_bytes, row_bytes * 3);
      std::vector<symtest::StepCase> cases;
      for (int s = 0; s < 5; ++s)
        cases.push_back(unique_transfers(symtest::make_step(rng, P, N, s, rig.max_rows, s == 3 ? P - 1 : -1)));
      const llep::StepExchangeSizes sizes = sizes_of(rig, row_bytes + 4);  // with gradients: 36 and 16 bytes
      llep::HostGroup group(P);
      std::vector<int> wrong(static_cast<std::size_t>(P), 0), guards(static_cast<std::size_t>(P), 0);
      std::vector<std::string> names(static_cast<std::size_t>(P));
      llep::run_ranks(group, [&](llep::HostThreads& tr) {
        const int p = tr.rank();
        RankStep rs(rig, tr, sizes);
        for (const symtest::StepCase& c : cases) {
          const symtest::StepResult got = rs.run(c, symtest::tables(c, p));
          wrong[static_cast<std::size_t>(p)] += got == symtest::expected_step(rig, c, p) ? 0 : 1;
          wrong[static_cast<std::size_t>(p)] += rs.received_got == received_grads(c, p, sizes.grad_bytes) ? 0 : 1;
          rs.status.check(rs.exec, tr, N);  // nothing recorded: bad ids are the layer's scan
        }
        guards[static_cast<std::size_t>(p)] = rs.guards_intact() ? 1 : 0;
        names[static_cast<std::size_t>(p)] = rs.x.name();
      });
      for (int p = 0; p < P; ++p) {
        CAPTURE(P);
        CAPTURE(row_bytes);
        CAPTURE(p);
        CHECK(wrong[static_cast<std::size_t>(p)] == 0);
        CHECK(guards[static_cast<std::size_t>(p)] == 1);
        CHECK(names[static_cast<std::size_t>(p)] == "fixed-capacity collectives (host_threads)");
      }
    }
  }
}

TEST_CASE("collective exchange: a capacity too small is named by sender and receiver, nothing written past it") {
  // P = 3: rank 0 sends 3 rows to rank 1 with room for 2 per peer, and two experts where
  // one fits (whose gradients come back likewise); every other pair fits.
  const int P = 3, N = 6;
  const symtest::Rig rig(P, N, 3, 16, 32);
  symtest::StepCase c;
  c.P = P;
  c.N = N;
  c.step = 1;
  c.ids.assign(static_cast<std::size_t>(P), std::vector<std::int32_t>{0, 5});
  c.rows = {1, 3, 0, 2, 0, 1, 0, 2, 2};                 // [src * P + dst]
  c.transfers = {{0, 0, 1}, {1, 0, 1}, {2, 1, 2}};      // experts 0, 1 of rank 0 to rank 1
  const llep::StepExchangeSizes sizes = sizes_of(rig, 16);
  const X::Capacity small{2, 1};
  CHECK(X::bytes(sizes, small) < X::bytes(sizes));
  CHECK(X::bytes_per_step(sizes, small) < X::bytes_per_step(sizes));
  llep::HostGroup group(P);
  std::vector<std::vector<status_word_t>> rows_words(P), weight_words(P);
  std::vector<std::string> errors(P);
  std::vector<symtest::StepResult> got(P);
  std::vector<std::vector<std::byte>> received(P);
  std::vector<int> guards(P, 0);
  llep::run_ranks(group, [&](llep::HostThreads& tr) {
    const int p = tr.rank();
    RankStep rs(rig, tr, sizes, small);
    symtest::StepCase rows_only = c, weights_only = c;
    rows_only.transfers.clear();
    weights_only.rows.assign(static_cast<std::size_t>(P * P), 0);
    got[static_cast<std::size_t>(p)] = rs.run(rows_only, symtest::tables(rows_only, p));
    errors[static_cast<std::size_t>(p)] = rs.check(tr);
    rows_words[static_cast<std::size_t>(p)].assign(rs.status.last().begin(), rs.status.last().end());
    const symtest::StepResult w = rs.run(weights_only, symtest::tables(weights_only, p));
    got[static_cast<std::size_t>(p)].foreign = w.foreign;
    received[static_cast<std::size_t>(p)] = rs.received_got;
    (void)rs.check(tr);
    weight_words[static_cast<std::size_t>(p)].assign(rs.status.last().begin(), rs.status.last().end());
    guards[static_cast<std::size_t>(p)] = rs.guards_intact() ? 1 : 0;
  });
  const auto decoded = [](status_word_t w) { return llep::decode_status(w); };
  for (int p = 0; p < P; ++p) {
    CAPTURE(p);
    const auto& rw = rows_words[static_cast<std::size_t>(p)];
    const auto& ww = weight_words[static_cast<std::size_t>(p)];
    REQUIRE(rw.size() == 3);
    REQUIRE(ww.size() == 3);
    // Rows: rank 0 (sender) names peer 1 in both channels' dispatch; rank 1 (receiver)
    // names peer 0; in the combine the roles swap, and the words keep the smaller.
    CHECK(decoded(rw[0]).kind == llep::BadExpert::capacity_exceeded);
    CHECK(decoded(rw[0]).peer == 1);
    CHECK(decoded(rw[0]).value == 3);
    CHECK(decoded(rw[1]).kind == llep::BadExpert::capacity_exceeded);
    CHECK(decoded(rw[1]).peer == 0);
    CHECK(rw[2] == llep::kStatusClear);
    CHECK(errors[static_cast<std::size_t>(p)].rfind("llep: rank 0: the 3 rows (or experts' weights) between it and "
                                                    "peer 1 exceed the fixed-capacity exchange's room per peer",
                                                    0) == 0);
    // Weights: the second expert from 0 to 1 does not fit.
    CHECK(decoded(ww[0]).kind == llep::BadExpert::capacity_exceeded);
    CHECK(decoded(ww[0]).peer == 1);
    CHECK(decoded(ww[0]).value == 2);
    CHECK(decoded(ww[1]).kind == llep::BadExpert::capacity_exceeded);
    CHECK(decoded(ww[1]).peer == 0);
    CHECK(ww[2] == llep::kStatusClear);
    CHECK(guards[static_cast<std::size_t>(p)] == 1);
  }
  // Rank 1's receive: rank 0's 3 rows are not written, rank 2's 2 rows are, after them.
  const symtest::StepResult want1 = symtest::expected_step(rig, c, 1);
  const std::size_t rb = rig.row_bytes;
  const auto& r1 = got[1].recv;
  REQUIRE(r1.size() == 5 * rb);
  CHECK(std::all_of(r1.begin(), r1.begin() + 3 * static_cast<long>(rb), [](std::byte b) { return b == kPoison; }));
  CHECK(std::equal(r1.begin() + 3 * static_cast<long>(rb), r1.end(), want1.recv.begin() + 3 * static_cast<long>(rb)));
  // Its weights: the first expert from 0 arrives, the second is left as it was.
  const auto& f1 = got[1].foreign;
  REQUIRE(f1.size() == 2 * rig.expert_bytes);
  CHECK(std::equal(f1.begin(), f1.begin() + static_cast<long>(rig.expert_bytes), want1.foreign.begin()));
  CHECK(std::all_of(f1.begin() + static_cast<long>(rig.expert_bytes), f1.end(), [](std::byte b) { return b == kPoison; }));
  // Rank 2's weights (from rank 1, within the capacity) arrive.
  CHECK(got[2].foreign == symtest::expected_step(rig, c, 2).foreign);
  // Gradients: rank 0 gets expert 0's back from rank 1, not expert 1's; rank 1 gets rank 2's.
  const std::vector<std::byte> g0 = received_grads(c, 0, 16);
  REQUIRE(received[0].size() == 32);
  CHECK(std::equal(g0.begin(), g0.begin() + 16, received[0].begin()));
  CHECK(std::all_of(received[0].begin() + 16, received[0].end(), [](std::byte b) { return b == kPoison; }));
  CHECK(received[1] == received_grads(c, 1, 16));
}

TEST_CASE("collective exchange: a receive count that disagrees with the carried count is named, not written") {
  const int P = 2, N = 2;
  const symtest::Rig rig(P, N, 4, 16, 16);
  std::mt19937_64 rng(5);
  symtest::StepCase c = unique_transfers(symtest::make_step(rng, P, N, 0, rig.max_rows));
  c.rows = {2, 3, 4, 1};  // [src * P + dst]
  const llep::StepExchangeSizes sizes = sizes_of(rig);
  llep::HostGroup group(P);
  std::vector<std::string> errors(P);
  std::vector<status_word_t> words(P);
  std::vector<symtest::StepResult> got(P);
  llep::run_ranks(group, [&](llep::HostThreads& tr) {
    const int p = tr.rank();
    RankStep rs(rig, tr, sizes);
    symtest::Tables t = symtest::tables(c, p);
    if (p == 1) t.recv_counts[0] = 1;  // rank 0 sends 3; rank 1's combine then sends 1 back
    got[static_cast<std::size_t>(p)] = rs.run(c, t);
    errors[static_cast<std::size_t>(p)] = rs.check(tr);
    words[static_cast<std::size_t>(p)] = rs.status.last()[static_cast<std::size_t>(p)];
  });
  CHECK(words[1] == llep::count_mismatch_word(0, 3));  // dispatch
  CHECK(words[0] == llep::count_mismatch_word(1, 1));  // combine
  for (const std::string& e : errors)
    CHECK(e.rfind("llep: rank 0: peer 1 sent 1 rows but this rank's layout expects another count", 0) == 0);
  // Rank 1: rank 0's 3 rows are not written; its own row (at 3) is.
  const symtest::StepResult want0 = symtest::expected_step(rig, c, 0), want1 = symtest::expected_step(rig, c, 1);
  const auto rb = static_cast<long>(rig.row_bytes);
  const auto poisoned = [](auto first, auto last) { return std::all_of(first, last, [](std::byte b) { return b == kPoison; }); };
  CHECK(poisoned(got[1].recv.begin(), got[1].recv.begin() + 3 * rb));
  CHECK(std::equal(got[1].recv.begin() + 3 * rb, got[1].recv.end(), want1.recv.begin() + 3 * rb));
  // Rank 0: its dispatch is right; in the combine, rank 1's rows (2..4) are not written.
  CHECK(got[0].recv == want0.recv);
  CHECK(std::equal(got[0].back.begin(), got[0].back.begin() + 2 * rb, want0.back.begin()));
  CHECK(poisoned(got[0].back.begin() + 2 * rb, got[0].back.end()));
}

TEST_CASE("collective exchange: rows past the receive buffer are not written and give an overflow") {
  const int P = 2, N = 2;
  const symtest::Rig rig(P, N, 4, 16, 16);
  const llep::StepExchangeSizes sizes = sizes_of(rig);
  llep::HostGroup group(P);
  std::vector<std::string> errors(P);
  std::vector<int> guards(P, 0), untouched(P, 0);
  llep::run_ranks(group, [&](llep::HostThreads& tr) {
    const int p = tr.rank();
    RankStep rs(rig, tr, sizes);
    // Each rank sends 4 rows to each; rank 1 receives into room for 6 rows only.
    const std::vector<count_t> counts{4, 4}, offsets{0, 4};
    const count_t room = p == 1 ? 6 : 8;
    Guarded recv(static_cast<std::size_t>(room) * 16);
    std::fill_n(rs.x.send_rows(llep::SignalChannel::dispatch), 8 * 16, std::byte{0x11});
    rs.x.begin_step(rs.exec);
    rs.x.rows(rs.exec, llep::RowsStep{llep::SignalChannel::dispatch, counts.data(), offsets.data(), counts.data(),
                                   offsets.data(), recv.span().data(), room},
              rs.status);
    guards[static_cast<std::size_t>(p)] = recv.guard_intact() ? 1 : 0;
    untouched[static_cast<std::size_t>(p)] =
        static_cast<int>(std::count(recv.span().begin() + 4 * 16, recv.span().end(), kPoison));
    errors[static_cast<std::size_t>(p)] = rs.check(tr);
  });
  CHECK(guards == std::vector<int>{1, 1});
  CHECK(untouched[0] == 0);
  CHECK(untouched[1] == 2 * 16);  // rows 4..7 from rank 1 would pass row 6: none written
  for (const std::string& e : errors)
    CHECK(e.rfind("llep: rank 1: the 4 rows (or experts' weights) from peer 1 do not fit the receive buffer", 0) == 0);
}

TEST_CASE("collective exchange: rows narrower than the sized row (RowsStep::row_bytes) arrive; wider are refused") {
  std::mt19937_64 rng(9);
  const int P = 3, N = 6;
  const symtest::Rig rig(P, N, 4, 32, 32);
  const llep::StepExchangeSizes sizes = sizes_of(rig);
  std::vector<int> wrong(P, 1);
  std::vector<std::string> wider(P);
  const std::vector<symtest::StepCase> cases = {symtest::make_step(rng, P, N, 0, rig.max_rows),
                                                symtest::make_step(rng, P, N, 1, rig.max_rows)};
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& tr) {
    const int p = tr.rank();
    RankStep rs(rig, tr, sizes);
    int bad = 0;
    for (const symtest::StepCase& c : cases) {
      const std::size_t width = c.step == 0 ? 4 : 20;  // 4-byte gates; rows not a multiple of 16
      const symtest::Tables t = symtest::tables(c, p);
      const std::vector<std::byte> send = symtest::send_rows(c, p, width), want = symtest::recv_rows(c, p, width);
      std::copy(send.begin(), send.end(), rs.x.send_rows(llep::SignalChannel::dispatch));
      llep::RowsStep step{llep::SignalChannel::dispatch, t.send_counts.data(), t.send_offsets.data(),
                          t.recv_counts.data(), t.recv_offsets.data(), rs.recv.span().data(), rig.capacity_rows()};
      step.row_bytes = width;
      rs.x.rows(rs.exec, step, rs.status);
      bad += std::equal(want.begin(), want.end(), rs.recv.span().data()) ? 0 : 1;
      bad += rs.check(tr) == testutil::kNoError ? 0 : 1;
    }
    wrong[static_cast<std::size_t>(p)] = bad;
    llep::RowsStep too_wide;
    too_wide.row_bytes = 33;
    wider[static_cast<std::size_t>(p)] = testutil::error_of([&] { rs.x.rows(rs.exec, too_wide, rs.status); });
  });
  for (int p = 0; p < P; ++p) {
    CHECK(wrong[static_cast<std::size_t>(p)] == 0);
    CHECK(wider[static_cast<std::size_t>(p)].find("rows of 33 bytes through a CollectiveExchange sized for 32") !=
          std::string::npos);
  }
}

TEST_CASE("collective exchange: sizes, capacity and memory are checked on the host") {
  const symtest::Rig rig(2, 4, 3, 16, 16);
  const llep::StepExchangeSizes sizes = sizes_of(rig);
  CHECK(X::Capacity{}.resolve(sizes) == X::Capacity{6, 2});
  // P x ((N + 1) x 8 + 2 x (16 + 6 rows x 16) + 2 experts x 16), by hand.
  CHECK(X::bytes_per_step(sizes) == 2 * (5 * 8 + 2 * 112 + 32));
  CHECK(testutil::error_of([&] { (void)X::bytes(sizes, X::Capacity{7, -1}); })
            .find("rows_per_peer = 7 must lie in [0, 6]") != std::string::npos);
  llep::HostGroup group(3);
  llep::HostThreads tr = group.rank(0);
  Guarded memory(X::bytes(sizes));
  CHECK(testutil::error_of([&] { X x(tr, sizes, memory.span()); }).find("over a transport of 3 ranks") != std::string::npos);
  llep::HostGroup two(2);
  llep::HostThreads tr2 = two.rank(0);
  CHECK(testutil::error_of([&] { X x(tr2, sizes, memory.span().subspan(0, memory.n - 1)); }).find("it needs ") !=
        std::string::npos);
}
