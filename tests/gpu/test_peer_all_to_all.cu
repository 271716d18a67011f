// The device-sized all-to-all (include/llep/device/peer_all_to_all.cuh) for logical ranks on
// one GPU: with sizes and offsets only in device memory, every receiver ends with exactly
// the rows each sender meant for it, where a plain host-side reference says; rows of 6 and
// 64 bytes (byte and 16-byte paths); random sizes with zeros and an empty rank; several
// steps in a row on the same buffers, each with new sizes and contents (the events order
// the reuse); and the result equals PeerCopy::all_to_all_v given the same sizes on the host.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <random>
#include <vector>

#include "device_array.hpp"
#include "streams.hpp"
#include "llep/device/peer_all_to_all.cuh"
#include "llep/transport/peer_copy.cuh"

namespace {

using gputest::DeviceArray;
using llep::count_t;


std::uint8_t byte_of(int q, int r, count_t row, std::size_t b) {
  return static_cast<std::uint8_t>((q * 37 + r * 11 + row * 5 + static_cast<count_t>(b) * 3 + 1) & 0xff);
}

}  // namespace

TEST_CASE("device-sized all-to-all through peer pointers delivers every row where the sizes say") {
  std::mt19937_64 rng(21);
  for (const int P : {1, 2, 3, 4, 8})
    for (const std::size_t row_bytes : {std::size_t{6}, std::size_t{64}}) {
      CAPTURE(P);
      CAPTURE(row_bytes);
      const count_t max_rows = 300;  // per (sender, receiver) pair
      const auto cap = static_cast<std::size_t>(P) * static_cast<std::size_t>(max_rows) * row_bytes;
      gputest::Streams streams(P, 0);
      llep::PeerCopyGroup group(streams.ranks(0));
      llep::PeerAllToAll a2a(group);
      // M[q][r]: rows q sends r; new each step; rank P - 1 sends nothing in step 1.
      std::vector<std::vector<count_t>> steps;
      for (int step = 0; step < 3; ++step) {
        std::vector<count_t> M(static_cast<std::size_t>(P * P));
        for (auto& m : M) m = rng() % 4 == 0 ? 0 : static_cast<count_t>(rng() % max_rows);
        if (step == 1)
          for (int r = 0; r < P; ++r) M[static_cast<std::size_t>((P - 1) * P + r)] = 0;
        steps.push_back(M);
      }
      std::vector<std::vector<std::vector<std::uint8_t>>> got(3, std::vector<std::vector<std::uint8_t>>(static_cast<std::size_t>(P)));
      std::vector<std::vector<std::uint8_t>> via_peer_copy(static_cast<std::size_t>(P));
      llep::run_ranks(group, [&](llep::PeerCopy& t) {
        const int me = t.rank();
        const auto p = static_cast<std::size_t>(me);
        DeviceArray<std::byte> send(cap), recv(cap), recv2(cap);
        DeviceArray<count_t> tables(3 * static_cast<std::size_t>(P));  // send counts, send offsets, recv offsets
        llep::PeerRowsEndpoint mine{send.get(), tables.get(), tables.get() + P, recv.get(), tables.get() + 2 * P};
        a2a.attach(t, mine);
        for (int step = 0; step < 3; ++step) {
          const auto& M = steps[static_cast<std::size_t>(step)];
          std::vector<count_t> host_tables(3 * static_cast<std::size_t>(P));
          count_t so = 0, ro = 0;
          for (int r = 0; r < P; ++r) {
            host_tables[static_cast<std::size_t>(r)] = M[p * P + static_cast<std::size_t>(r)];
            host_tables[static_cast<std::size_t>(P + r)] = so;
            so += M[p * P + static_cast<std::size_t>(r)];
            host_tables[static_cast<std::size_t>(2 * P + r)] = ro;
            ro += M[static_cast<std::size_t>(r) * P + p];
          }
          std::vector<std::uint8_t> rows(static_cast<std::size_t>(so) * row_bytes);
          count_t at = 0;
          for (int r = 0; r < P; ++r)
            for (count_t i = 0; i < M[p * P + static_cast<std::size_t>(r)]; ++i, ++at)
              for (std::size_t b = 0; b < row_bytes; ++b) rows[static_cast<std::size_t>(at) * row_bytes + b] = byte_of(me, r, i, b);
          // Sizes and rows reach the device on the rank's stream, as a kernel would write them.
          LLEP_CUDA_CHECK(cudaMemcpyAsync(tables.get(), host_tables.data(), host_tables.size() * sizeof(count_t),
                                          cudaMemcpyHostToDevice, t.stream()));
          if (!rows.empty())
            LLEP_CUDA_CHECK(cudaMemcpyAsync(send.get(), rows.data(), rows.size(), cudaMemcpyHostToDevice, t.stream()));
          a2a.run(t, row_bytes);
          auto& out = got[static_cast<std::size_t>(step)][p];
          out.resize(static_cast<std::size_t>(ro) * row_bytes);
          if (!out.empty())
            LLEP_CUDA_CHECK(cudaMemcpyAsync(out.data(), recv.get(), out.size(), cudaMemcpyDeviceToHost, t.stream()));
          LLEP_CUDA_CHECK(cudaStreamSynchronize(t.stream()));
          if (step == 2) {  // the same exchange through PeerCopy's host-sized all_to_all_v
            std::vector<std::size_t> ss(static_cast<std::size_t>(P)), sof(static_cast<std::size_t>(P)),
                rs(static_cast<std::size_t>(P)), rof(static_cast<std::size_t>(P));
            for (int r = 0; r < P; ++r) {
              ss[static_cast<std::size_t>(r)] = static_cast<std::size_t>(host_tables[static_cast<std::size_t>(r)]) * row_bytes;
              sof[static_cast<std::size_t>(r)] = static_cast<std::size_t>(host_tables[static_cast<std::size_t>(P + r)]) * row_bytes;
              rs[static_cast<std::size_t>(r)] = static_cast<std::size_t>(M[static_cast<std::size_t>(r) * P + p]) * row_bytes;
              rof[static_cast<std::size_t>(r)] = static_cast<std::size_t>(host_tables[static_cast<std::size_t>(2 * P + r)]) * row_bytes;
            }
            t.all_to_all_v(send.get(), ss, sof, recv2.get(), rs, rof);
            via_peer_copy[p].resize(out.size());
            if (!out.empty())
              LLEP_CUDA_CHECK(cudaMemcpyAsync(via_peer_copy[p].data(), recv2.get(), out.size(), cudaMemcpyDeviceToHost,
                                              t.stream()));
            LLEP_CUDA_CHECK(cudaStreamSynchronize(t.stream()));
          }
        }
      });
      for (int step = 0; step < 3; ++step)
        for (int r = 0; r < P; ++r) {
          CAPTURE(step);
          CAPTURE(r);
          const auto& M = steps[static_cast<std::size_t>(step)];
          std::vector<std::uint8_t> want;
          for (int q = 0; q < P; ++q)
            for (count_t i = 0; i < M[static_cast<std::size_t>(q * P + r)]; ++i)
              for (std::size_t b = 0; b < row_bytes; ++b) want.push_back(byte_of(q, r, i, b));
          REQUIRE(got[static_cast<std::size_t>(step)][static_cast<std::size_t>(r)] == want);
          if (step == 2) REQUIRE(via_peer_copy[static_cast<std::size_t>(r)] == want);
        }
    }
}
