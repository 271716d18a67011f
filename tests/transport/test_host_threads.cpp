// HostThreads and run_ranks: collectives against brute-force expected buffers, and the
// failure paths (mismatches, a throwing rank, a rank that never arrives) never hang.
// Assertions run on the main thread after the rank threads are joined.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "llep/transport/host_threads.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using Bytes = std::vector<std::uint8_t>;

// Independent content of byte i of a message identified by (a, b, c).
std::uint8_t pattern(std::size_t a, std::size_t b, std::size_t c, std::size_t i) {
  return static_cast<std::uint8_t>((a * 131 + b * 31 + c * 7 + i * 13 + (i >> 8)) & 0xff);
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Runs `body` on every rank, catching each rank's llep::Error message (empty if none).
template <class F>
std::vector<std::string> errors_per_rank(llep::HostGroup& group, F body) {
  std::vector<std::string> msgs(static_cast<std::size_t>(group.size()));
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    try {
      body(t);
    } catch (const llep::Error& e) {
      msgs[static_cast<std::size_t>(t.rank())] = e.what();
    }
  });
  return msgs;
}

constexpr int kRankCounts[] = {1, 2, 3, 4, 8};

}  // namespace

TEST_CASE("all_gather equals the concatenation of every rank's buffer, for sizes including zero") {
  std::mt19937 rng(1);
  for (int P : kRankCounts) {
    llep::HostGroup group(P);
    for (std::size_t bytes :
         {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{4096}, static_cast<std::size_t>(rng() % 300)}) {
      std::vector<Bytes> got(static_cast<std::size_t>(P));
      llep::run_ranks(group, [&](llep::HostThreads& t) {
        const auto p = static_cast<std::size_t>(t.rank());
        Bytes src(bytes);
        for (std::size_t i = 0; i < bytes; ++i) src[i] = pattern(p, 0, 0, i);
        Bytes dst(bytes * static_cast<std::size_t>(P), 0xEE);
        t.all_gather(src.data(), bytes, dst.data());
        got[p] = dst;
      });
      Bytes expected;
      for (std::size_t q = 0; q < static_cast<std::size_t>(P); ++q)
        for (std::size_t i = 0; i < bytes; ++i) expected.push_back(pattern(q, 0, 0, i));
      for (int p = 0; p < P; ++p) {
        CAPTURE(P);
        CAPTURE(bytes);
        CAPTURE(p);
        CHECK(got[static_cast<std::size_t>(p)] == expected);
      }
    }
  }
}

TEST_CASE("all_gather in place (src = dst + rank * bytes) works") {
  const int P = 3;
  const std::size_t bytes = 5;
  llep::HostGroup group(P);
  std::vector<Bytes> got(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    Bytes buf(bytes * P, 0);
    for (std::size_t i = 0; i < bytes; ++i) buf[p * bytes + i] = pattern(p, 1, 0, i);
    t.all_gather(buf.data() + p * bytes, bytes, buf.data());
    got[p] = buf;
  });
  for (const Bytes& b : got)
    for (std::size_t q = 0; q < P; ++q)
      for (std::size_t i = 0; i < bytes; ++i) CHECK(b[q * bytes + i] == pattern(q, 1, 0, i));
}

TEST_CASE("all_to_all_v delivers every block at its offset, with zero sizes and gaps") {
  std::mt19937 rng(2);
  for (int P : kRankCounts) {
    const auto uP = static_cast<std::size_t>(P);
    llep::HostGroup group(P);
    for (int trial = 0; trial < 4; ++trial) {
      // size[s][d]: bytes from s to d; about a third are zero.
      std::vector<std::vector<std::size_t>> size(uP, std::vector<std::size_t>(uP));
      for (auto& row : size)
        for (auto& s : row) s = rng() % 3 == 0 ? 0 : rng() % 64;
      // Offsets: send blocks in reverse destination order, recv blocks in source order,
      // each followed by a gap of 3 bytes, so a wrong offset cannot go unnoticed.
      std::vector<std::vector<std::size_t>> send_off(uP, std::vector<std::size_t>(uP)),
          recv_off(uP, std::vector<std::size_t>(uP));
      std::vector<std::size_t> send_total(uP), recv_total(uP);
      for (std::size_t p = 0; p < uP; ++p) {
        std::size_t at = 0;
        for (std::size_t d = uP; d-- > 0;) send_off[p][d] = at, at += size[p][d] + 3;
        send_total[p] = at;
        at = 0;
        for (std::size_t s = 0; s < uP; ++s) recv_off[p][s] = at, at += size[s][p] + 3;
        recv_total[p] = at;
      }
      std::vector<Bytes> got(uP);
      llep::run_ranks(group, [&](llep::HostThreads& t) {
        const auto p = static_cast<std::size_t>(t.rank());
        Bytes src(send_total[p], 0);
        for (std::size_t d = 0; d < uP; ++d)
          for (std::size_t i = 0; i < size[p][d]; ++i) src[send_off[p][d] + i] = pattern(p, d, 2, i);
        std::vector<std::size_t> recv_sizes(uP);
        for (std::size_t s = 0; s < uP; ++s) recv_sizes[s] = size[s][p];
        Bytes dst(recv_total[p], 0xEE);
        t.all_to_all_v(src.data(), size[p], send_off[p], dst.data(), recv_sizes, recv_off[p]);
        got[p] = dst;
      });
      for (std::size_t p = 0; p < uP; ++p) {
        Bytes expected(recv_total[p], 0xEE);
        for (std::size_t s = 0; s < uP; ++s)
          for (std::size_t i = 0; i < size[s][p]; ++i) expected[recv_off[p][s] + i] = pattern(s, p, 2, i);
        CAPTURE(P);
        CAPTURE(p);
        CHECK(got[p] == expected);
      }
    }
  }
}

TEST_CASE("exchange matches sends and recvs per (src, dst) pair in posting order") {
  std::mt19937 rng(3);
  for (int P : kRankCounts) {
    const auto uP = static_cast<std::size_t>(P);
    llep::HostGroup group(P);
    for (int trial = 0; trial < 4; ++trial) {
      // Messages in a global order; each rank posts its sends and recvs in that order
      // (self-messages and empty messages included), which keeps per-pair order.
      struct Msg {
        std::size_t src, dst, bytes;
      };
      std::vector<Msg> msgs(rng() % (3 * uP + 1));
      for (Msg& m : msgs) m = {rng() % uP, rng() % uP, rng() % 4 == 0 ? 0 : rng() % 100};
      std::vector<std::vector<Bytes>> got(uP, std::vector<Bytes>(msgs.size()));
      llep::run_ranks(group, [&](llep::HostThreads& t) {
        const auto p = static_cast<std::size_t>(t.rank());
        std::vector<Bytes> bufs(msgs.size());
        std::vector<llep::P2pOp> ops;
        for (std::size_t k = 0; k < msgs.size(); ++k) {
          const Msg& m = msgs[k];
          if (m.src == p) {
            bufs[k].resize(m.bytes);
            for (std::size_t i = 0; i < m.bytes; ++i) bufs[k][i] = pattern(k, m.src, m.dst, i);
            ops.push_back({llep::P2pOp::Kind::send, static_cast<int>(m.dst), bufs[k].data(), m.bytes});
          }
        }
        std::vector<Bytes> recv(msgs.size());
        // Recvs posted before the sends, in reverse rank interleaving: only per-pair order matters.
        std::vector<llep::P2pOp> all;
        for (std::size_t k = 0; k < msgs.size(); ++k) {
          const Msg& m = msgs[k];
          if (m.dst == p) {
            recv[k].assign(m.bytes, 0xEE);
            all.push_back({llep::P2pOp::Kind::recv, static_cast<int>(m.src), recv[k].data(), m.bytes});
          }
        }
        all.insert(all.end(), ops.begin(), ops.end());
        t.exchange(all);
        got[p] = recv;
      });
      for (std::size_t k = 0; k < msgs.size(); ++k) {
        const Msg& m = msgs[k];
        Bytes expected(m.bytes);
        for (std::size_t i = 0; i < m.bytes; ++i) expected[i] = pattern(k, m.src, m.dst, i);
        CAPTURE(P);
        CAPTURE(k);
        CHECK(got[m.dst][k] == expected);
      }
    }
  }
}

TEST_CASE("barrier: after round k every rank sees every other rank's write of round k") {
  for (int P : kRankCounts) {
    llep::HostGroup group(P);
    std::vector<std::atomic<int>> round(static_cast<std::size_t>(P));
    std::atomic<int> violations{0};
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      for (int k = 1; k <= 50; ++k) {
        round[static_cast<std::size_t>(t.rank())].store(k);
        t.barrier();
        for (auto& r : round)
          if (r.load() < k) ++violations;
        t.barrier();  // nobody starts round k + 1 before everyone checked round k
      }
    });
    CHECK(violations.load() == 0);
  }
}

TEST_CASE("all_to_all_v size mismatch throws the same llep::Error on every rank, then the group goes on") {
  const int P = 4;
  llep::HostGroup group(P);
  std::vector<int> after(P, 0);
  const auto msgs = errors_per_rank(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    std::vector<std::size_t> send(P, 4), soff(P), recv(P, 4), roff(P);
    for (std::size_t q = 0; q < P; ++q) soff[q] = roff[q] = 8 * q;
    if (p == 1) send[2] = 8;  // rank 2 still expects 4 from rank 1
    Bytes src(8 * P, 1), dst(8 * P, 0);
    try {
      t.all_to_all_v(src.data(), send, soff, dst.data(), recv, roff);
    } catch (const llep::Error&) {
      // The failure was consistent, not an abort: the same group still works.
      send[2] = 4;
      t.all_to_all_v(src.data(), send, soff, dst.data(), recv, roff);
      after[p] = 1;
      throw;
    }
  });
  for (const std::string& m : msgs)
    CHECK(m == "llep: all_to_all_v: rank 1 sends 8 bytes to rank 2 but rank 2 expects 4 bytes from rank 1");
  CHECK(after == std::vector<int>(P, 1));
}

TEST_CASE("all_gather, exchange and collective-kind mismatches throw on every rank, naming ranks and sizes") {
  const int P = 3;
  llep::HostGroup group(P);
  SUBCASE("all_gather bytes") {
    const auto msgs = errors_per_rank(group, [&](llep::HostThreads& t) {
      const std::size_t bytes = t.rank() == 2 ? 6 : 4;
      Bytes src(bytes), dst(6 * P);
      t.all_gather(src.data(), bytes, dst.data());
    });
    for (const auto& m : msgs)
      CHECK(m == "llep: all_gather: rank 2 contributes 6 bytes but rank 0 contributes 4 bytes");
  }
  SUBCASE("exchange sizes") {
    const auto msgs = errors_per_rank(group, [&](llep::HostThreads& t) {
      Bytes buf(16);
      std::vector<llep::P2pOp> ops;
      if (t.rank() == 0) ops.push_back({llep::P2pOp::Kind::send, 1, buf.data(), 16});
      if (t.rank() == 1) ops.push_back({llep::P2pOp::Kind::recv, 0, buf.data(), 8});
      t.exchange(ops);
    });
    for (const auto& m : msgs)
      CHECK(m ==
            "llep: exchange: send #0 from rank 0 to rank 1 has 16 bytes but the matching recv on rank 1 has 8 bytes");
  }
  SUBCASE("exchange counts") {
    const auto msgs = errors_per_rank(group, [&](llep::HostThreads& t) {
      Bytes buf(16);
      std::vector<llep::P2pOp> ops;
      if (t.rank() == 2) ops.assign(2, {llep::P2pOp::Kind::send, 0, buf.data(), 16});
      if (t.rank() == 0) ops.push_back({llep::P2pOp::Kind::recv, 2, buf.data(), 16});
      t.exchange(ops);
    });
    for (const auto& m : msgs)
      CHECK(m == "llep: exchange: rank 2 posts 2 send(s) to rank 0 but rank 0 posts 1 recv(s) from rank 2");
  }
  SUBCASE("exchange peer out of range") {
    const auto msgs = errors_per_rank(group, [&](llep::HostThreads& t) {
      Bytes buf(4);
      std::vector<llep::P2pOp> ops;
      if (t.rank() == 1) ops.push_back({llep::P2pOp::Kind::send, 3, buf.data(), 4});
      t.exchange(ops);
    });
    for (const auto& m : msgs) CHECK(m == "llep: exchange: op #0 of rank 1 names peer 3 outside [0, 3)");
  }
  SUBCASE("different collectives") {
    const auto msgs = errors_per_rank(group, [&](llep::HostThreads& t) {
      if (t.rank() == 1) {
        t.barrier();
      } else {
        Bytes src(4), dst(4 * P);
        t.all_gather(src.data(), 4, dst.data());
      }
    });
    for (const auto& m : msgs)
      CHECK(doctest::String(m.c_str()) == doctest::Contains("rank 1 called barrier but rank 0 called all_gather"));
  }
  SUBCASE("all_to_all_v arrays of the wrong length") {
    const auto msgs = errors_per_rank(group, [&](llep::HostThreads& t) {
      std::vector<std::size_t> sizes(t.rank() == 0 ? 2 : P, 0);
      std::vector<std::size_t> zeros(P, 0);
      t.all_to_all_v(nullptr, sizes, zeros, nullptr, zeros, zeros);
    });
    for (const auto& m : msgs) CHECK(m == "llep: all_to_all_v: rank 0 passed send_sizes with 2 entries; P = 3");
  }
}

TEST_CASE("a rank that throws releases every rank waiting in a collective within a second") {
  const int P = 4;
  llep::HostGroup group(P);  // default 60 s timeout: only the abort can release them in time
  std::atomic<Clock::rep> thrown_at{0};
  std::vector<double> waited(P, -1);
  std::vector<int> echoed(P, 0);
  CHECK_THROWS_WITH_AS(llep::run_ranks(group,
                                       [&](llep::HostThreads& t) {
                                         if (t.rank() == 2) {
                                           std::this_thread::sleep_for(std::chrono::milliseconds(50));
                                           thrown_at = Clock::now().time_since_epoch().count();
                                           throw std::runtime_error("boom on rank 2");
                                         }
                                         try {
                                           t.barrier();
                                         } catch (const llep::GroupAborted& e) {
                                           const auto at = Clock::time_point(Clock::duration(thrown_at.load()));
                                           waited[static_cast<std::size_t>(t.rank())] = seconds_since(at);
                                           echoed[static_cast<std::size_t>(t.rank())] =
                                               std::string(e.what()).find("boom on rank 2") != std::string::npos;
                                           throw;
                                         }
                                       }),
                       "boom on rank 2", std::runtime_error);
  for (int p : {0, 1, 3}) {
    CAPTURE(p);
    CHECK(waited[static_cast<std::size_t>(p)] >= 0);
    CHECK(waited[static_cast<std::size_t>(p)] < 5.0);  // generous; the abort wakes them at once
    CHECK(echoed[static_cast<std::size_t>(p)] == 1);
  }
  CHECK(group.aborted());

  // The same group runs again.
  std::vector<Bytes> got(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::uint8_t>(t.rank());
    Bytes dst(P);
    t.all_gather(&p, 1, dst.data());
    got[p] = dst;
  });
  for (const Bytes& b : got) CHECK(b == Bytes{0, 1, 2, 3});
  CHECK_FALSE(group.aborted());
}

TEST_CASE("a rank that never arrives makes the others time out with llep::Error naming it") {
  const int P = 3;
  llep::HostGroup group(P, {.timeout = std::chrono::milliseconds(200)});
  std::atomic<int> released{0};
  const auto start = Clock::now();
  CHECK_THROWS_WITH_AS(llep::run_ranks(group,
                                       [&](llep::HostThreads& t) {
                                         if (t.rank() == 2) {  // busy elsewhere, bounded
                                           for (int i = 0; i < 1000 && released.load() < P - 1; ++i)
                                             std::this_thread::sleep_for(std::chrono::milliseconds(10));
                                           return;
                                         }
                                         try {
                                           t.barrier();
                                         } catch (...) {
                                           ++released;
                                           throw;
                                         }
                                       }),
                       doctest::Contains("for rank(s) 2 that never arrived"), llep::Error);
  CHECK(released.load() == P - 1);
  CHECK(seconds_since(start) < 8.0);

  // Reusable afterwards, with the same short timeout.
  std::atomic<int> passed{0};
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    t.barrier();
    ++passed;
  });
  CHECK(passed.load() == P);
}

TEST_CASE("a rank whose body returns while others wait releases them") {
  const int P = 3;
  llep::HostGroup group(P);
  const auto start = Clock::now();
  CHECK_THROWS_WITH_AS(llep::run_ranks(group,
                                       [&](llep::HostThreads& t) {
                                         if (t.rank() != 1) t.barrier();
                                       }),
                       doctest::Contains("returned from its run_ranks body"), llep::Error);
  CHECK(seconds_since(start) < 5.0);
}

TEST_CASE("abort from a handle releases the others with GroupAborted carrying the reason") {
  const int P = 3;
  llep::HostGroup group(P);
  CHECK_THROWS_WITH_AS(llep::run_ranks(group,
                                       [&](llep::HostThreads& t) {
                                         if (t.rank() == 0) {
                                           std::this_thread::sleep_for(std::chrono::milliseconds(20));
                                           t.abort("out of memory");
                                           return;
                                         }
                                         t.barrier();
                                       }),
                       doctest::Contains("rank 0 aborted: out of memory"), llep::GroupAborted);
  CHECK(group.abort_reason() == "rank 0 aborted: out of memory");
}

TEST_CASE("manually driven threads: abort, join, reset, reuse") {
  const int P = 2;
  llep::HostGroup group(P);
  std::vector<std::string> msgs(P);
  {
    std::vector<std::thread> threads;
    for (int p = 0; p < P; ++p)
      threads.emplace_back([&, p] {
        llep::HostThreads t = group.rank(p);
        if (p == 1) {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          t.abort("stop");
        }
        try {
          t.barrier();
        } catch (const llep::GroupAborted& e) {
          msgs[static_cast<std::size_t>(p)] = e.what();
        }
      });
    for (auto& th : threads) th.join();
  }
  for (const auto& m : msgs) CHECK(doctest::String(m.c_str()) == doctest::Contains("rank 1 aborted: stop"));
  group.reset();
  CHECK_FALSE(group.aborted());
  std::atomic<int> passed{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < P; ++p)
    threads.emplace_back([&, p] {
      llep::HostThreads t = group.rank(p);
      t.barrier();
      ++passed;
    });
  for (auto& th : threads) th.join();
  CHECK(passed.load() == P);
}

TEST_CASE("HostGroup and run_ranks reject bad arguments") {
  CHECK_THROWS_WITH_AS(llep::HostGroup(0), "llep: HostGroup ranks P = 0 must be > 0", llep::Error);
  CHECK_THROWS_WITH_AS(llep::HostGroup(2, {.timeout = std::chrono::milliseconds(0)}),
                       "llep: HostGroupOptions::timeout = 0 ms must be > 0", llep::Error);
  llep::HostGroup group(2);
  CHECK_THROWS_WITH_AS((void)group.rank(2), "llep: rank 2 is outside [0, 2)", llep::Error);
  llep::HostGroup one(1);
  CHECK_THROWS_WITH_AS(
      llep::run_ranks(one, [&](llep::HostThreads&) { llep::run_ranks(one, [](llep::HostThreads&) {}); }),
      "llep: run_ranks: this HostGroup is already running ranks", llep::Error);
}

TEST_CASE("recover: after an abort, once every rank calls it, the same threads go on collectively") {
  const int P = 4;
  llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(3'000)});
  std::vector<int> recovered(P, -1), after(P, -1);
  std::vector<std::string> failed(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    try {
      if (p == 2) throw llep::Error("rank 2's own failure");
      t.barrier();  // released by rank 2's abort
    } catch (const llep::Error& e) {
      failed[static_cast<std::size_t>(p)] = e.what();
      t.abort(e.what());
    }
    recovered[static_cast<std::size_t>(p)] = t.recover() ? 1 : 0;
    int mine = p + 1, sum = 0;
    std::vector<int> all(P);
    t.all_gather(&mine, sizeof mine, all.data());
    for (int v : all) sum += v;
    after[static_cast<std::size_t>(p)] = sum;
  });
  CHECK_FALSE(group.aborted());
  for (int p = 0; p < P; ++p) {
    INFO("rank ", p);
    CHECK(!failed[static_cast<std::size_t>(p)].empty());
    CHECK(recovered[static_cast<std::size_t>(p)] == 1);
    CHECK(after[static_cast<std::size_t>(p)] == P * (P + 1) / 2);
  }
}

TEST_CASE("recover gives up, leaving the group aborted, when a rank never calls it") {
  const int P = 3;
  llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(300)});
  std::vector<int> recovered(P, -1);
  const auto start = Clock::now();
  CHECK_THROWS_AS(llep::run_ranks(group,
                                  [&](llep::HostThreads& t) {
                                    if (t.rank() == 0) {
                                      t.abort("rank 0 gives up");
                                      std::this_thread::sleep_for(std::chrono::milliseconds(600));
                                      throw llep::Error("rank 0 never recovers");
                                    }
                                    recovered[static_cast<std::size_t>(t.rank())] = t.recover() ? 1 : 0;
                                  }),
                  llep::Error);
  CHECK(seconds_since(start) < 2.0);
  CHECK(recovered[1] == 0);
  CHECK(recovered[2] == 0);
  CHECK(group.aborted());
}
