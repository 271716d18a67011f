// The Mpi transport alone, one process per rank: every collective against what the bytes
// must be (each rank's data is a known function of sender, receiver and position), with
// MPI's count limit lowered (MpiOptions::max_count) so blocks above it (the 2^31 path) are
// exercised with small buffers; the abort notice and the deadline.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "layer_body.hpp"
#include "llep/transport/mpi.hpp"

namespace {

std::uint8_t byte_of(int from, int to, std::size_t i) {
  return static_cast<std::uint8_t>((from * 131 + to * 29 + static_cast<int>(i) * 7 + 1) & 0xff);
}

// Sizes every rank agrees on: seed-driven, the same draw on every process.
std::vector<std::size_t> pair_sizes(int P, std::uint64_t seed, std::size_t max_bytes) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::size_t> size(0, max_bytes);
  std::vector<std::size_t> s(static_cast<std::size_t>(P * P));
  for (auto& v : s) v = (rng() % 4 == 0) ? 0 : size(rng);
  return s;
}

}  // namespace

TEST_CASE("Mpi all_to_all_v moves every block to its offset, above and below max_count") {
  const int P = mpitest::world_size(), me = mpitest::world_rank();
  for (const std::size_t max_count : {std::size_t{INT_MAX}, std::size_t{7}, std::size_t{1}})
    for (std::uint64_t seed = 1; seed <= 8; ++seed) {
      llep::Mpi t(MPI_COMM_WORLD, {.timeout = std::chrono::seconds(30), .max_count = max_count});
      auto sizes = pair_sizes(P, seed, 100);  // sizes[s * P + d]: bytes s sends to d
      // Seeds 7 and 8: rank 1 sends nothing, then receives nothing (an empty rank).
      for (int q = 0; q < P; ++q) {
        if (seed == 7) sizes[static_cast<std::size_t>(P + q)] = 0;
        if (seed == 8) sizes[static_cast<std::size_t>(q * P + 1)] = 0;
      }
      // Blocks in reverse peer order with gaps, so offsets are neither 0 nor sorted.
      std::vector<std::size_t> ss(P), so(P), rs(P), ro(P);
      std::size_t send_total = 3, recv_total = 5;
      for (int q = P - 1; q >= 0; --q) {
        ss[q] = sizes[me * P + q];
        so[q] = send_total;
        send_total += ss[q] + 2;
        rs[q] = sizes[q * P + me];
        ro[q] = recv_total;
        recv_total += rs[q] + 1;
      }
      std::vector<std::uint8_t> src(send_total, 0xee), dst(recv_total, 0xcc);
      for (int q = 0; q < P; ++q)
        for (std::size_t i = 0; i < ss[q]; ++i) src[so[q] + i] = byte_of(me, q, i);
      // An empty side may share its address with the other (the layer's empty batch does).
      const bool alias = seed == 7 && me == 1;
      t.all_to_all_v(alias ? static_cast<const void*>(dst.data()) : src.data(), ss, so, dst.data(), rs, ro);
      INFO("max_count ", max_count, ", seed ", seed, ", rank ", me);
      std::size_t wrong = 0, touched = 0;
      std::vector<bool> inside(recv_total, false);
      for (int q = 0; q < P; ++q)
        for (std::size_t i = 0; i < rs[q]; ++i) {
          inside[ro[q] + i] = true;
          wrong += dst[ro[q] + i] != byte_of(q, me, i);
        }
      for (std::size_t i = 0; i < recv_total; ++i) touched += !inside[i] && dst[i] != 0xcc;
      CHECK(wrong == 0);
      CHECK(touched == 0);  // nothing outside the blocks is written
    }
}

TEST_CASE("Mpi all_gather: plain, in place, and above max_count") {
  const int P = mpitest::world_size(), me = mpitest::world_rank();
  for (const std::size_t max_count : {std::size_t{INT_MAX}, std::size_t{5}})
    for (const std::size_t bytes : {std::size_t{0}, std::size_t{1}, std::size_t{13}})
      for (const bool in_place : {false, true}) {
        llep::Mpi t(MPI_COMM_WORLD, {.timeout = std::chrono::seconds(30), .max_count = max_count});
        std::vector<std::uint8_t> mine(bytes), all(bytes * P, 0xcc);
        for (std::size_t i = 0; i < bytes; ++i) mine[i] = byte_of(me, 0, i);
        if (in_place) {
          std::copy(mine.begin(), mine.end(), all.begin() + static_cast<std::ptrdiff_t>(bytes * me));
          t.all_gather(all.data() + bytes * me, bytes, all.data());
        } else {
          t.all_gather(mine.data(), bytes, all.data());
        }
        std::size_t wrong = 0;
        for (int q = 0; q < P; ++q)
          for (std::size_t i = 0; i < bytes; ++i) wrong += all[q * bytes + i] != byte_of(q, 0, i);
        INFO("bytes ", bytes, ", max_count ", max_count, ", in place ", in_place);
        CHECK(wrong == 0);
      }
}

TEST_CASE("Mpi exchange and exchange_weights/join_weights match the k-th send to the k-th recv") {
  const int P = mpitest::world_size(), me = mpitest::world_rank();
  for (const bool weights : {false, true})
    for (const std::size_t max_count : {std::size_t{INT_MAX}, std::size_t{3}}) {
      llep::Mpi t(MPI_COMM_WORLD, {.timeout = std::chrono::seconds(30), .max_count = max_count});
      // Two messages to every rank (itself included), sizes depending on (from, to, k).
      auto bytes_of = [](int from, int to, int k) { return static_cast<std::size_t>((from + 2 * to + 5 * k) % 11); };
      std::vector<std::vector<std::uint8_t>> out, in;
      std::vector<llep::P2pOp> ops;
      for (int q = 0; q < P; ++q)
        for (int k = 0; k < 2; ++k) {
          out.emplace_back(bytes_of(me, q, k));
          for (std::size_t i = 0; i < out.back().size(); ++i) out.back()[i] = byte_of(me, q, i + 100 * k);
          in.emplace_back(bytes_of(q, me, k), 0xcc);
        }
      for (int q = 0; q < P; ++q)
        for (int k = 0; k < 2; ++k) {
          auto& o = out[static_cast<std::size_t>(2 * q + k)];
          auto& i = in[static_cast<std::size_t>(2 * q + k)];
          ops.push_back({llep::P2pOp::Kind::recv, q, i.data(), i.size()});
          ops.push_back({llep::P2pOp::Kind::send, q, o.data(), o.size()});
        }
      if (weights) {
        const auto posted = static_cast<std::size_t>(
            std::count_if(ops.begin(), ops.end(), [](const llep::P2pOp& op) { return op.bytes > 0; }));
        t.exchange_weights(ops);
        CHECK(t.weights_in_flight() == posted);
        t.barrier();  // another call in between, as the layer's token exchange
        t.join_weights();
        CHECK(t.weights_in_flight() == 0);
      } else {
        t.exchange(ops);
      }
      std::size_t wrong = 0;
      for (int q = 0; q < P; ++q)
        for (int k = 0; k < 2; ++k) {
          const auto& i = in[static_cast<std::size_t>(2 * q + k)];
          for (std::size_t j = 0; j < i.size(); ++j) wrong += i[j] != byte_of(q, me, j + 100 * k);
        }
      INFO("weights path ", weights, ", max_count ", max_count);
      CHECK(wrong == 0);
    }
}

TEST_CASE("Mpi: abort on one rank releases the others from their call with llep::Error naming it") {
  const int P = mpitest::world_size(), me = mpitest::world_rank();
  llep::Mpi t(MPI_COMM_WORLD, {.timeout = std::chrono::seconds(30)});
  const auto start = std::chrono::steady_clock::now();
  std::string error;
  if (me == P - 1) {
    t.abort("the test said so");
  } else {
    // Abandoned operations may still write into their buffers later (mpi.hpp): these
    // outlive the test case.
    static std::vector<std::uint8_t> all(static_cast<std::size_t>(P));
    static const std::uint8_t mine = 1;
    error = testutil::error_of([&] { t.all_gather(&mine, 1, all.data()); });
  }
  CHECK(t.aborted());
  if (me != P - 1) {
    CHECK(error.find("rank " + std::to_string(P - 1) + " aborted: the test said so") != std::string::npos);
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  }
  // Every later call refuses, naming the reason.
  CHECK(testutil::error_of([&] { t.barrier(); }).find("aborted") != std::string::npos);
}

TEST_CASE("Mpi: a rank that never arrives makes the others time out with llep::Error and release everyone") {
  const int P = mpitest::world_size(), me = mpitest::world_rank();
  if (P == 1) return;  // nobody to wait for
  llep::Mpi t(MPI_COMM_WORLD, {.timeout = std::chrono::milliseconds(500)});
  std::string error;
  const auto start = std::chrono::steady_clock::now();
  if (me != P - 1) error = testutil::error_of([&] { t.barrier(); });
  else error = testutil::error_of([&] {
    // The late rank arrives after the others gave up: it is refused or released.
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    t.barrier();
  });
  const auto took = std::chrono::steady_clock::now() - start;
  INFO("rank ", me, ": '", error, "'");
  CHECK(error.find("waited 500 ms in barrier") != std::string::npos);  // its own, or the notice that released it
  CHECK(took < std::chrono::seconds(10));
}

TEST_CASE("Mpi: bad arguments are llep::Error naming them") {
  llep::Mpi t(MPI_COMM_WORLD);
  const int P = mpitest::world_size();
  std::vector<std::size_t> short_sizes(static_cast<std::size_t>(P) - 1, 0), zeros(static_cast<std::size_t>(P), 0);
  CHECK(testutil::error_of([&] { t.all_to_all_v(nullptr, short_sizes, zeros, nullptr, zeros, zeros); })
            .find("send_sizes with") != std::string::npos);
  const llep::P2pOp bad{llep::P2pOp::Kind::send, P, nullptr, 0};
  CHECK(testutil::error_of([&] { t.exchange({&bad, 1}); }).find("names peer") != std::string::npos);
  CHECK_THROWS_AS(llep::Mpi(MPI_COMM_WORLD, {.max_count = 0}), llep::Error);
  t.barrier();  // local refusals leave the communicator usable
}
