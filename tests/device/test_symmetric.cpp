// The sync-free exchanges over symmetric memory (device/symmetric_exchange.hpp) on the host:
// rank threads with HostExec over HostSymmetricMemory, the very functors a device step runs
// with CudaExec. Many consecutive steps reuse the buffers with new ids, sizes and weights,
// each rank's counts matrix, dispatched rows, combined rows and pulled weights equal the
// brute-force ones (and the counts gather_counts's over HostThreads) in every step; a rank
// that never arrives gives every waiting rank the timeout error at its check, no hang; rows
// that do not fit give an overflow error and are not written. The CI's TSan build runs this
// suite, which checks the signals order every read after the write it needs.
#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "llep/device/gather_counts.hpp"
#include "llep/device/signal.hpp"
#include "llep/device/status_word.hpp"
#include "llep/device/symmetric.hpp"
#include "llep/device/symmetric_exchange.hpp"
#include "llep/exec/host.hpp"
#include "llep/transport/host_threads.hpp"
#include "symmetric_cases.hpp"

namespace {

using llep::count_t;
using llep::status_word_t;

// One rank's exec memory on the host.
struct HostBuffers {
  std::vector<std::int32_t> ids;
  std::vector<count_t> pairs;
  std::vector<std::byte> counts_memory, recv, back, foreign, places;
  std::vector<count_t> tables;
  llep::PlanView plan;
  std::vector<llep::WeightTransfer> transfers;
  std::vector<std::int32_t> native_slot;
  std::vector<status_word_t> words;
  HostBuffers(const symtest::Rig& rig, std::size_t max_ids)
      : ids(max_ids), pairs(1), counts_memory(llep::SharedCounts::bytes(rig.P, rig.N)), recv(rig.rows_bytes()),
        back(rig.rows_bytes()), foreign(rig.max_transfers() * rig.expert_bytes), places(rig.places_bytes()),
        tables(4 * static_cast<std::size_t>(rig.P)), transfers(rig.max_transfers()),
        native_slot(symtest::native_slots(rig.P, rig.N)), words(llep::StatusWords::bytes(rig.P) / sizeof(status_word_t)) {}
  [[nodiscard]] symtest::RankBuffers view() {
    return {ids.data(), pairs.data(), counts_memory.data(), tables.data(), recv.data(), back.data(), &plan, transfers.data(),
            native_slot.data(), foreign.data(), places.data()};
  }
};

using symtest::kMaxIds;

}  // namespace

TEST_CASE("a timeout word decodes to its peer and step, sorts after bad ids, and never reads as clear") {
  for (const int peer : {0, 1, 7, 1000})
    for (const std::uint64_t e : {1ull, 2ull, 12345ull, 0xFFFFFFFFull}) {
      const status_word_t w = llep::peer_timeout_word(peer, e);
      const llep::BadExpert b = llep::decode_status(w);
      CHECK(b.found);
      CHECK(b.kind == llep::BadExpert::peer_timeout);
      CHECK(b.peer == peer);
      CHECK(b.value == static_cast<std::uint32_t>(e));
      CHECK(llep::is_timeout_word(w));
      CHECK(w != llep::kStatusClear);
      CHECK(llep::bad_expert_word(0x7fffffff, -1) < w);  // a bad id is named first
      CHECK(w < llep::peer_timeout_word(peer + 1, 0));   // the lowest silent peer first
      const llep::BadExpert o = llep::decode_status(llep::overflow_word(peer, e));
      CHECK(o.kind == llep::BadExpert::overflow);
      CHECK(o.peer == peer);
      CHECK_FALSE(llep::is_timeout_word(llep::overflow_word(peer, e)));
    }
  CHECK_FALSE(llep::is_timeout_word(llep::kStatusClear));
  CHECK(llep::decode_status(llep::bad_expert_word(5, 3)).kind == llep::BadExpert::bad_id);
  // The plan's and the layout's failures, named by the one decoder.
  const status_word_t plan = llep::status_code_word(llep::StatusCode::plan_failed, 3, 2),
                      layout = llep::status_code_word(llep::StatusCode::layout_failed, 3, 4);
  CHECK(llep::decode_status(plan).kind == llep::BadExpert::plan_failed);
  CHECK(llep::decode_status(layout).kind == llep::BadExpert::layout_failed);
  CHECK(llep::decode_status(layout).peer == 3);
  CHECK(llep::decode_status(layout).value == 4);
  // Every code round-trips through the one decoder (the Kind list follows StatusCode's).
  const llep::BadExpert past = llep::decode_status(llep::past_bound_word(6, 9));
  CHECK(past.kind == llep::BadExpert::past_bound);
  CHECK(past.peer == 6);
  CHECK(past.value == 9);
  CHECK(llep::status_code_word(llep::StatusCode::count_mismatch, 1000, 7) < llep::past_bound_word(0, 0));
  CHECK(testutil::error_of([&] { llep::throw_if_set(llep::past_bound_word(2, 3), 0, 8); })
            .rfind("llep: rank 0: the step's plan needs room for 3 foreign experts' weights or gradients (transfers "
                   "with peer 2), past the rooms sized from its planner's bounds",
                   0) == 0);
  CHECK(testutil::error_of([&] { llep::throw_if_set(llep::past_bound_word(1, 0), 1, 8); })
            .rfind("llep: rank 1: a foreign expert's task of the step has no weight transfer to the rank", 0) == 0);
  CHECK(llep::peer_timeout_word(1000, 7) < llep::overflow_word(0, 0));
  CHECK(llep::overflow_word(1000, 7) < plan);
  CHECK(plan < layout);
  CHECK(layout < llep::kStatusClear);
  CHECK(testutil::error_of([&] { llep::throw_if_set(plan, 3, 8); })
            .rfind("llep: rank 3: the device plan failed (StepStatus code 2", 0) == 0);
  CHECK(testutil::error_of([&] { llep::throw_if_set(layout, 3, 8); })
            .rfind("llep: rank 3: the device layout failed (LayoutStatus code 4", 0) == 0);
}

TEST_CASE("symmetric exchanges over many steps equal brute force and gather_counts, on every rank") {
  std::mt19937_64 rng(2026);
  for (const int P : {1, 2, 3, 4, 8}) {
    for (const std::size_t row_bytes : {std::size_t{32}, std::size_t{12}}) {  // 16-byte words, and bytes
      const int N = 2 * P;
      const symtest::Rig rig(P, N, 5, row_bytes, row_bytes * 3);
      const int steps = 15;
      std::vector<symtest::StepCase> cases;
      for (int s = 0; s < steps; ++s) {
        const int bad = s % 5 == 3 ? static_cast<int>(rng() % static_cast<unsigned>(P)) : -1;
        cases.push_back(symtest::make_step(rng, P, N, s, rig.max_rows, bad));
      }
      llep::HostSymmetricMemory sym(rig.layout);
      llep::HostGroup group(P);
      std::vector<int> wrong(static_cast<std::size_t>(P), 0), wrong_gather(static_cast<std::size_t>(P), 0);
      std::vector<std::vector<std::string>> errors(static_cast<std::size_t>(P));
      llep::run_ranks(group, [&](llep::HostThreads& t) {
        const int p = t.rank();
        llep::HostExec exec;
        HostBuffers mem(rig, kMaxIds);
        const symtest::RankBuffers b = mem.view();
        llep::StatusWords status(exec, mem.words.data(), P);
        const llep::SymmetricView v = sym.view(p);
        std::vector<std::byte> gc(llep::gather_counts_bytes(P, N));
        std::vector<status_word_t> gw(llep::StatusWords::bytes(P) / sizeof(status_word_t));
        llep::StatusWords gather_status(exec, gw.data(), P);
        std::vector<std::vector<count_t>> matrices;
        // Only the checks after steps 3 and 4 (mod 5) meet the other ranks: between them
        // ranks run steps apart, reusing buffers peers may still be reading.
        for (const symtest::StepCase& c : cases) {
          symtest::upload_step(exec, v, rig, c, b);
          // Odd steps read the pair count from memory, as a replayed graph does.
          const std::size_t pairs = c.step % 2 == 1 ? symtest::kPairsOnDevice : c.ids[static_cast<std::size_t>(p)].size();
          symtest::enqueue_step(exec, v, rig, b, pairs, status, 3, {});
          const symtest::StepResult got = symtest::download_step(exec, rig, c, p, b);
          wrong[static_cast<std::size_t>(p)] += got == symtest::expected_step(rig, c, p) ? 0 : 1;
          matrices.push_back(got.counts);
          if (c.step % 5 == 3 || c.step % 5 == 4)  // a bad id at step 3 stays in the word until the check
            errors[static_cast<std::size_t>(p)].push_back(testutil::error_of([&] { status.check(exec, t, N); }));
        }
        // The host-transport gather of the same ids gives the same matrices.
        for (const symtest::StepCase& c : cases) {
          const auto& ids = c.ids[static_cast<std::size_t>(p)];
          const llep::GatheredCounts g = llep::GatheredCounts::carve(gc.data(), N);
          llep::gather_counts(exec, t, ids.data(), ids.size(), N, g, &gather_status);
          const auto& m = matrices[static_cast<std::size_t>(c.step)];
          wrong_gather[static_cast<std::size_t>(p)] += std::equal(m.begin(), m.end(), g.counts) ? 0 : 1;
          (void)testutil::error_of([&] { gather_status.check(exec, t, N); });
        }
      });
      for (int p = 0; p < P; ++p) {
        CAPTURE(P);
        CAPTURE(row_bytes);
        CAPTURE(p);
        CHECK(wrong[static_cast<std::size_t>(p)] == 0);
        CHECK(wrong_gather[static_cast<std::size_t>(p)] == 0);
        const auto& e = errors[static_cast<std::size_t>(p)];
        REQUIRE(e.size() == 6);
        for (std::size_t i = 0; i < e.size(); i += 2) {
          CHECK(e[i].find(" routed expert id " + std::to_string(N + 2)) != std::string::npos);
          CHECK(e[i + 1] == testutil::kNoError);  // cleared by the check, clean the next step
        }
      }
    }
  }
}

TEST_CASE("a rank that never arrives gives every waiting rank the timeout error at its check, no hang") {
  for (const int P : {2, 3, 4}) {
    const int N = P;
    const symtest::Rig rig(P, N, 3, 16, 16);
    std::mt19937_64 rng(static_cast<unsigned>(P));
    const symtest::StepCase c = symtest::make_step(rng, P, N, 0, rig.max_rows);
    const int absent = P - 1;
    llep::HostSymmetricMemory sym(rig.layout);
    llep::HostGroup group(P);
    std::vector<std::string> errors(static_cast<std::size_t>(P));
    llep::SignalOptions quick;
    quick.timeout_ns = 300'000'000;  // 300 ms
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      const int p = t.rank();
      t.barrier();              // every thread runs: only the absent rank can be silent
      if (p == absent) return;  // never signals anything
      llep::HostExec exec;
      HostBuffers mem(rig, kMaxIds);
      const symtest::RankBuffers b = mem.view();
      llep::StatusWords status(exec, mem.words.data(), P);
      const llep::SymmetricView v = sym.view(p);
      symtest::upload_step(exec, v, rig, c, b);
      symtest::enqueue_step(exec, v, rig, b, c.ids[static_cast<std::size_t>(p)].size(), status, 2, quick);
      errors[static_cast<std::size_t>(p)] = testutil::error_of([&] { status.check_mine(exec, p, N); });
    });
    for (int p = 0; p < absent; ++p) {
      CAPTURE(P);
      CAPTURE(p);
      CHECK(errors[static_cast<std::size_t>(p)].rfind("llep: rank " + std::to_string(p) + ": peer " +
                                                          std::to_string(absent) + " did not signal step 1",
                                                      0) == 0);
    }
  }
}

TEST_CASE("rows that do not fit the receive buffer are not written and give an overflow error") {
  const int P = 2, N = 2;
  const symtest::Rig rig(P, N, 4, 16, 16);
  llep::HostSymmetricMemory sym(rig.layout);
  llep::HostGroup group(P);
  std::vector<std::string> errors(static_cast<std::size_t>(P));
  std::vector<int> untouched(static_cast<std::size_t>(P), 0);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    llep::HostExec exec;
    std::vector<status_word_t> words(llep::StatusWords::bytes(P) / sizeof(status_word_t));
    llep::StatusWords status(exec, words.data(), P);
    const llep::SymmetricView v = sym.view(p);
    // Each rank sends 4 rows to each; rank 1 receives into room for 6 rows only.
    const std::vector<count_t> send_counts{4, 4}, send_offsets{0, 4}, recv_offsets{0, 4};
    std::vector<std::byte> recv(8 * 16, std::byte{0xEE});
    llep::RowsExchange x;
    x.send = rig.send_dispatch;
    x.send_capacity = rig.capacity_rows();
    x.table = rig.table_dispatch;
    x.send_counts = send_counts.data();
    x.send_offsets = send_offsets.data();
    x.recv_offsets = recv_offsets.data();
    x.recv = recv.data();
    x.recv_capacity = p == 1 ? 6 : 8;
    x.row_bytes = 16;
    llep::begin_step(exec, v);
    llep::rows_all_to_all(exec, v, x, status, 4);
    untouched[static_cast<std::size_t>(p)] =
        static_cast<int>(std::count(recv.begin() + 4 * 16, recv.end(), std::byte{0xEE}));
    errors[static_cast<std::size_t>(p)] = testutil::error_of([&] { status.check(exec, t, N); });
  });
  CHECK(untouched[0] == 0);
  CHECK(untouched[1] == 4 * 16);  // rows 4..7 from rank 1 would pass row 6: none written
  for (const std::string& e : errors)
    CHECK(e.rfind("llep: rank 1: the 4 rows (or experts' weights) from peer 1 do not fit the receive buffer", 0) == 0);
}

TEST_CASE("counts gathers alone, step after step, reuse their slots by epoch parity safely") {
  // No other exchange orders the ranks between two gathers here: only the parity of the
  // epoch keeps a fast rank's next row away from the slot a slow rank still reads.
  std::mt19937_64 rng(41);
  for (const int P : {2, 3, 8}) {
    const int N = 3 * P;
    const symtest::Rig rig(P, N, 1, 16, 16);
    std::vector<symtest::StepCase> cases;
    for (int s = 0; s < 40; ++s) cases.push_back(symtest::make_step(rng, P, N, s, rig.max_rows));
    llep::HostSymmetricMemory sym(rig.layout);
    llep::HostGroup group(P);
    std::vector<int> wrong(static_cast<std::size_t>(P), 0);
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      const int p = t.rank();
      llep::HostExec exec;
      HostBuffers mem(rig, kMaxIds);
      llep::StatusWords status(exec, mem.words.data(), P);
      const llep::SymmetricView v = sym.view(p);
      const llep::SharedCounts g = llep::SharedCounts::carve(mem.counts_memory.data(), P, N);
      for (const symtest::StepCase& c : cases) {
        const auto& ids = c.ids[static_cast<std::size_t>(p)];
        llep::begin_step(exec, v);
        llep::gather_counts_symmetric(exec, v, rig.slots, ids.data(), ids.size(), N, g, status);
        const std::vector<count_t> want = symtest::counts_matrix(c);
        wrong[static_cast<std::size_t>(p)] += std::equal(want.begin(), want.end(), g.counts) ? 0 : 1;
      }
      status.check_mine(exec, p, N);
    });
    for (int p = 0; p < P; ++p) CHECK(wrong[static_cast<std::size_t>(p)] == 0);
  }
}

TEST_CASE("SymmetricExchange refuses memory smaller than its layout, and rows wider than its sized row") {
  llep::StepExchangeSizes sizes;
  sizes.ranks = 1, sizes.experts = 2, sizes.dispatch_rows = 4, sizes.combine_rows = 4, sizes.row_bytes = 16;
  sizes.natives = 2, sizes.expert_bytes = 64;
  llep::StepExchangeSizes training = sizes;
  training.ranks = 2, training.foreign = 1, training.grad_bytes = 64;
  sizes.ranks = 2;
  // Memory laid out without the gradients' room, for steps that hold them.
  llep::HostSymmetricMemory small(llep::SymmetricExchange::layout(sizes));
  CHECK(testutil::error_of([&] { llep::SymmetricExchange(small.view(0), training); })
            .find("these steps need " + std::to_string(llep::SymmetricExchange::layout(training).bytes())) !=
        std::string::npos);
  llep::SymmetricExchange x(small.view(0), sizes);
  llep::HostExec exec;
  std::vector<status_word_t> words(llep::StatusWords::bytes(2) / sizeof(status_word_t));
  llep::StatusWords status(exec, words.data(), 2);
  std::vector<count_t> table(2, 0);
  std::vector<std::byte> recv(64);
  llep::RowsStep r{llep::SignalChannel::dispatch, table.data(), table.data(), table.data(), table.data(), recv.data(), 4, 17};
  CHECK(testutil::error_of([&] { x.rows(exec, r, status); }).find("rows of 17 bytes") != std::string::npos);
}
