// Device transports against HostThreads: the same scenario (same data, same calls) runs on
// host ranks and on device ranks, and every rank's bytes must match. PeerCopy runs P in
// {1, 2, 3, 4} logical ranks on device 0; Nccl runs one rank per GPU (one rank when there
// is one GPU: NCCL refuses two ranks on one device). Also: stream ordering (a slow kernel
// before a send, an overwrite right after), failure release, reuse, size mismatches.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <list>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "llep/core/cuda_check.hpp"
#include "streams.hpp"
#include "llep/transport/host_threads.hpp"
#include "llep/transport/peer_copy.cuh"
#if defined(LLEP_TEST_NCCL)
#include "llep/transport/nccl.hpp"
#include "llep/transport/nccl_bootstrap.hpp"
#endif

namespace {

using Bytes = std::vector<std::uint8_t>;
using Results = std::vector<Bytes>;  // per rank, everything the scenario read back
using Clock = std::chrono::steady_clock;

std::uint8_t pattern(std::size_t a, std::size_t b, std::size_t c, std::size_t i) {
  return static_cast<std::uint8_t>((a * 131 + b * 31 + c * 7 + i * 13 + (i >> 8)) & 0xff);
}

Bytes message(std::size_t n, std::size_t a, std::size_t b, std::size_t c) {
  Bytes m(n);
  for (std::size_t i = 0; i < n; ++i) m[i] = pattern(a, b, c, i);
  return m;
}

// Buffers in a transport's memory space, filled from and read back to host bytes. Device
// copies go through the rank's stream, so they are ordered with its collectives.
template <class T>
class Space {
 public:
  explicit Space(T& t) : t_(t) {}
  Space(const Space&) = delete;
  Space& operator=(const Space&) = delete;
  ~Space() {
    for (void* p : device_) (void)cudaFree(p);
  }

  std::uint8_t* put(const Bytes& host) {
    if constexpr (T::memory == llep::MemorySpace::host) {
      return host_.emplace_back(host).data();
    } else {
      void* p = nullptr;
      LLEP_CUDA_CHECK(cudaMalloc(&p, std::max<std::size_t>(host.size(), 1)));
      device_.push_back(p);
      if (!host.empty())
        LLEP_CUDA_CHECK(cudaMemcpyAsync(p, host.data(), host.size(), cudaMemcpyHostToDevice, t_.stream()));
      LLEP_CUDA_CHECK(cudaStreamSynchronize(t_.stream()));  // the host vector may die now
      return static_cast<std::uint8_t*>(p);
    }
  }

  Bytes get(const std::uint8_t* p, std::size_t n) {
    if constexpr (T::memory == llep::MemorySpace::host) {
      return Bytes(p, p + n);
    } else {
      Bytes out(n);
      if (n > 0) LLEP_CUDA_CHECK(cudaMemcpyAsync(out.data(), p, n, cudaMemcpyDeviceToHost, t_.stream()));
      LLEP_CUDA_CHECK(cudaStreamSynchronize(t_.stream()));
      return out;
    }
  }

 private:
  T& t_;
  std::list<Bytes> host_;
  std::vector<void*> device_;
};

// ---- scenarios: each appends what the rank reads back to out[rank] --------------------

struct AllGather {
  std::size_t bytes;
  template <class T>
  void operator()(T& t, Results& out) const {
    Space<T> s(t);
    const auto p = static_cast<std::size_t>(t.rank());
    auto* src = s.put(message(bytes, p, 0, 0));
    auto* dst = s.put(Bytes(bytes * static_cast<std::size_t>(t.size()), 0xEE));
    t.all_gather(src, bytes, dst);
    Bytes got = s.get(dst, bytes * static_cast<std::size_t>(t.size()));
    out[p].insert(out[p].end(), got.begin(), got.end());
  }
};

struct AllGatherInPlace {
  std::size_t bytes;
  template <class T>
  void operator()(T& t, Results& out) const {
    Space<T> s(t);
    const auto p = static_cast<std::size_t>(t.rank());
    const auto P = static_cast<std::size_t>(t.size());
    Bytes init(bytes * P, 0xEE);
    std::copy_n(message(bytes, p, 1, 0).begin(), bytes, init.begin() + static_cast<std::ptrdiff_t>(p * bytes));
    auto* dst = s.put(init);
    t.all_gather(dst + p * bytes, bytes, dst);
    out[p] = s.get(dst, bytes * P);
  }
};

// Sizes S[s][d] drawn from `seed` (a third of them zero), with gaps between blocks on both
// sides; every rank draws the same matrix.
struct AllToAllV {
  unsigned seed;
  std::size_t max_bytes;
  template <class T>
  void operator()(T& t, Results& out) const {
    const auto P = static_cast<std::size_t>(t.size());
    const auto me = static_cast<std::size_t>(t.rank());
    std::mt19937 rng(seed);
    std::vector<std::vector<std::size_t>> S(P, std::vector<std::size_t>(P));
    for (auto& row : S)
      for (auto& v : row) v = rng() % 3 == 0 ? 0 : rng() % (max_bytes + 1);
    std::vector<std::size_t> send_sizes(P), send_offsets(P), recv_sizes(P), recv_offsets(P);
    std::size_t send_total = 0, recv_total = 0;
    for (std::size_t q = 0; q < P; ++q) {
      send_sizes[q] = S[me][q];
      send_offsets[q] = send_total + 3;  // a gap before each block
      send_total = send_offsets[q] + send_sizes[q];
      recv_sizes[q] = S[q][me];
      recv_offsets[q] = recv_total + 5;
      recv_total = recv_offsets[q] + recv_sizes[q];
    }
    Bytes src(send_total, 0xAA);
    for (std::size_t q = 0; q < P; ++q) {
      const Bytes m = message(send_sizes[q], me, q, seed);
      std::copy(m.begin(), m.end(), src.begin() + static_cast<std::ptrdiff_t>(send_offsets[q]));
    }
    Space<T> s(t);
    auto* d_src = s.put(src);
    auto* d_dst = s.put(Bytes(recv_total, 0xEE));
    t.all_to_all_v(d_src, send_sizes, send_offsets, d_dst, recv_sizes, recv_offsets);
    out[me] = s.get(d_dst, recv_total);
  }
};

// Each rank sends two messages to each of (p + 1) % P and (p + 2) % P and one to itself;
// recvs are posted in a different order from sends (per-pair order kept), with zero-byte
// messages in the mix. The k-th message of a pair has size and content of (from, to, k).
struct Exchange {
  template <class T>
  void operator()(T& t, Results& out) const {
    const int P = t.size();
    const int me = t.rank();
    auto bytes_of = [](int from, int to, int k) {
      return static_cast<std::size_t>(k == 1 && from == 0 ? 0 : 17 + 5 * from + 3 * to + 11 * k);
    };
    auto times = [](int step) { return step == 0 ? 1 : 2; };
    Space<T> s(t);
    std::vector<llep::P2pOp> ops;
    std::vector<int> sent(static_cast<std::size_t>(P), 0), received(static_cast<std::size_t>(P), 0);
    for (int step : {1, 2, 0}) {
      const int to = (me + step) % P;
      for (int i = 0; i < times(step); ++i) {
        const int k = sent[static_cast<std::size_t>(to)]++;
        const std::size_t n = bytes_of(me, to, k);
        auto* b = s.put(message(n, static_cast<std::size_t>(me), static_cast<std::size_t>(to), static_cast<std::size_t>(k)));
        ops.push_back({llep::P2pOp::Kind::send, to, b, n});
      }
    }
    struct Recv {
      std::uint8_t* buffer;
      std::size_t bytes;
    };
    std::vector<Recv> recvs;
    for (int step : {0, 2, 1}) {  // recvs from (me - step): a different order than the sends
      const int from = (me - step + 2 * P) % P;
      for (int i = 0; i < times(step); ++i) {
        const int k = received[static_cast<std::size_t>(from)]++;
        const std::size_t n = bytes_of(from, me, k);
        auto* b = s.put(Bytes(n, 0xEE));
        recvs.push_back({b, n});
        ops.push_back({llep::P2pOp::Kind::recv, from, b, n});
      }
    }
    t.exchange(ops);
    auto& o = out[static_cast<std::size_t>(me)];
    for (const Recv& r : recvs) {
      const Bytes got = s.get(r.buffer, r.bytes);
      o.insert(o.end(), got.begin(), got.end());
    }
  }
};

// A scenario run twice with a barrier between, to check that handles are reusable.
template <class A, class B>
struct Then {
  A a;
  B b;
  template <class T>
  void operator()(T& t, Results& out) const {
    Results first(out.size()), second(out.size());
    a(t, first);
    t.barrier();
    b(t, second);
    const auto p = static_cast<std::size_t>(t.rank());
    out[p] = first[p];
    out[p].insert(out[p].end(), second[p].begin(), second[p].end());
  }
};

// ---- runners ------------------------------------------------------------------------------

template <class Scenario>
Results on_host(int P, const Scenario& scenario) {
  llep::HostGroup group(P);
  Results out(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::HostThreads& t) { scenario(t, out); });
  return out;
}

// P logical ranks on `device`, each with its own stream (streams.hpp).
using gputest::Streams;

template <class Scenario>
Results on_peer_copy(int P, const Scenario& scenario) {
  Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0));
  Results out(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::PeerCopy& t) { scenario(t, out); });
  return out;
}

template <class Scenario>
void same_on_host_and_peer_copy(const Scenario& scenario) {
  for (int P : {1, 2, 3, 4}) {
    CAPTURE(P);
    const Results host = on_host(P, scenario);
    const Results device = on_peer_copy(P, scenario);
    for (int p = 0; p < P; ++p) {
      CAPTURE(p);
      CHECK(device[static_cast<std::size_t>(p)] == host[static_cast<std::size_t>(p)]);
    }
  }
}

// Spins about `cycles` clocks, then fills p[0, n) with v: keeps a stream busy so that a
// missing event wait would read or overwrite the buffer at the wrong time.
__global__ void slow_fill(std::uint8_t* p, std::size_t n, std::uint8_t v, long long cycles) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
  }
  __syncthreads();
  for (std::size_t i = threadIdx.x; i < n; i += blockDim.x) p[i] = v;
}
constexpr long long kSlowCycles = 50'000'000;  // tens of ms on any recent GPU

}  // namespace

TEST_CASE("PeerCopy all_gather equals HostThreads, sizes incl. zero, and in place") {
  for (std::size_t bytes : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{4096}, std::size_t{100'003}})
    same_on_host_and_peer_copy(AllGather{bytes});
  same_on_host_and_peer_copy(AllGatherInPlace{33});
}

TEST_CASE("PeerCopy all_to_all_v equals HostThreads with random sizes incl. zeros and gaps") {
  for (unsigned seed : {1u, 2u, 3u}) same_on_host_and_peer_copy(AllToAllV{seed, 5000});
  same_on_host_and_peer_copy(AllToAllV{4, 0});  // everything zero
}

TEST_CASE("PeerCopy exchange equals HostThreads (per-pair posting order, self sends, zero bytes)") {
  same_on_host_and_peer_copy(Exchange{});
  same_on_host_and_peer_copy(Then<AllToAllV, Exchange>{{9, 300}, {}});
}

TEST_CASE("PeerCopy orders copies on the streams: after the sender's slow write, before its overwrite") {
  const int P = 2;
  const std::size_t n = 1 << 16;
  Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0));
  Results late_sender(P), late_receiver(P);
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const auto me = static_cast<std::size_t>(t.rank());
    std::uint8_t *src = nullptr, *dst = nullptr, *spin = nullptr;
    LLEP_CUDA_CHECK(cudaMalloc(&src, n));
    LLEP_CUDA_CHECK(cudaMalloc(&dst, 2 * n));
    LLEP_CUDA_CHECK(cudaMalloc(&spin, 1));
    auto read_back = [&] {
      Bytes h(2 * n);
      LLEP_CUDA_CHECK(cudaMemcpyAsync(h.data(), dst, 2 * n, cudaMemcpyDeviceToHost, t.stream()));
      LLEP_CUDA_CHECK(cudaStreamSynchronize(t.stream()));
      return h;
    };
    LLEP_CUDA_CHECK(cudaMemsetAsync(src, 0, n, t.stream()));
    LLEP_CUDA_CHECK(cudaMemsetAsync(dst, 0xEE, 2 * n, t.stream()));
    LLEP_CUDA_CHECK(cudaStreamSynchronize(t.stream()));
    t.barrier();
    // 1. Rank 0's data is late; rank 1 must not copy it before its stream gets there.
    slow_fill<<<1, 256, 0, t.stream()>>>(src, n, me == 0 ? 0x11 : 0x22, me == 0 ? kSlowCycles : 0);
    LLEP_CUDA_CHECK(cudaGetLastError());
    t.all_gather(src, n, dst);
    late_sender[me] = read_back();
    t.barrier();
    // 2. Only rank 0 sends (so its stream waits on nothing of rank 1's); rank 1's stream is
    // late; rank 0 overwrites its src right after the call, which must wait until rank 1
    // has copied it.
    slow_fill<<<1, 256, 0, t.stream()>>>(src, n, 0x33, 0);
    if (me == 1) slow_fill<<<1, 32, 0, t.stream()>>>(spin, 1, 0, kSlowCycles);
    LLEP_CUDA_CHECK(cudaGetLastError());
    const std::vector<std::size_t> none = {0, 0}, to_1 = {0, n}, from_0 = {n, 0};
    t.all_to_all_v(src, me == 0 ? to_1 : none, none, dst, me == 1 ? from_0 : none, none);
    slow_fill<<<1, 256, 0, t.stream()>>>(src, n, 0x77, 0);
    LLEP_CUDA_CHECK(cudaGetLastError());
    late_receiver[me] = read_back();
    late_receiver[me].resize(n);
    (void)cudaFree(src);
    (void)cudaFree(dst);
    (void)cudaFree(spin);
  });
  Bytes first(n, 0x11);
  first.resize(2 * n, 0x22);
  for (int p = 0; p < P; ++p) {
    CAPTURE(p);
    CHECK(late_sender[static_cast<std::size_t>(p)] == first);
  }
  CHECK(late_receiver[1] == Bytes(n, 0x33));
}

TEST_CASE("PeerCopy: a rank that throws releases the others promptly; the group is reusable") {
  const int P = 3;
  Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0), {.timeout = std::chrono::seconds(30)});
  std::vector<std::string> errors(P);
  Results unused(P);
  const auto t0 = Clock::now();
  auto step = [&](llep::PeerCopy& t) {
    try {
      if (t.rank() == 1) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        throw std::runtime_error("rank 1 failed mid-step");
      }
      AllGather{64}(t, unused);
    } catch (const llep::Error& e) {
      errors[static_cast<std::size_t>(t.rank())] = e.what();
      throw;
    }
  };
  CHECK_THROWS_WITH_AS(llep::run_ranks(group, step), "rank 1 failed mid-step", std::runtime_error);
  CHECK(std::chrono::duration<double>(Clock::now() - t0).count() < 10.0);
  CHECK(errors[0].find("aborted") != std::string::npos);
  CHECK(errors[2].find("aborted") != std::string::npos);
  CHECK(group.aborted());

  // run_ranks resets the group; a manual abort + reset works too.
  Results out(P);
  llep::run_ranks(group, [&](llep::PeerCopy& t) { AllToAllV{5, 100}(t, out); });
  CHECK(out == on_host(P, AllToAllV{5, 100}));
  group.abort("manual");
  CHECK(group.aborted());
  group.reset();
  CHECK_FALSE(group.aborted());
  Results again(P);
  llep::run_ranks(group, [&](llep::PeerCopy& t) { Exchange{}(t, again); });
  CHECK(again == on_host(P, Exchange{}));
}

TEST_CASE("PeerCopy: a rank that never arrives makes the others time out with llep::Error") {
  const int P = 2;
  Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0), {.timeout = std::chrono::milliseconds(200)});
  std::vector<std::string> errors(P);
  const auto t0 = Clock::now();
  std::thread r0([&] {
    try {
      llep::PeerCopy t = group.rank(0);
      t.barrier();
    } catch (const llep::Error& e) {
      errors[0] = e.what();
    }
  });
  r0.join();
  CHECK(std::chrono::duration<double>(Clock::now() - t0).count() < 10.0);
  CHECK(errors[0].find("never arrived") != std::string::npos);
  group.reset();
}

TEST_CASE("PeerCopy: size mismatches throw the same llep::Error on every rank, then the group goes on") {
  const int P = 2;
  Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0));
  // errors[p][i]: rank p's message from the i-th bad call (assertions stay on this thread).
  std::vector<std::vector<std::string>> errors(P, std::vector<std::string>(3));
  Results out(P);
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    auto& e = errors[static_cast<std::size_t>(t.rank())];
    Space<llep::PeerCopy> s(t);
    auto* src = s.put(Bytes(16, 1));
    auto* dst = s.put(Bytes(16, 0));
    const std::size_t five = t.rank() == 0 ? 5 : 0, four = t.rank() == 1 ? 4 : 0;
    std::vector<std::size_t> send = {0, five}, recv = {four, 0}, off = {0, 0}, wrong_len = {0};
    try {
      t.all_to_all_v(src, send, off, dst, recv, off);
    } catch (const llep::Error& x) {
      e[0] = x.what();
    }
    try {
      t.all_to_all_v(src, t.rank() == 1 ? wrong_len : send, off, dst, recv, off);
    } catch (const llep::Error& x) {
      e[1] = x.what();
    }
    try {
      t.all_gather(src, t.rank() == 0 ? 4 : 8, dst);
    } catch (const llep::Error& x) {
      e[2] = x.what();
    }
    AllGather{3}(t, out);  // the group still works
  });
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(errors[0][static_cast<std::size_t>(i)] == errors[1][static_cast<std::size_t>(i)]);
  }
  CHECK(errors[0][0].find("rank 0 sends 5 bytes to rank 1 but rank 1 expects 4") != std::string::npos);
  CHECK(errors[0][1].find("rank 1 passed send_sizes with 1 entries") != std::string::npos);
  CHECK(errors[0][2].find("rank 1 contributes 8 bytes") != std::string::npos);
  CHECK(out == on_host(P, AllGather{3}));
}

TEST_CASE("PeerCopyGroup rejects bad devices and ranks") {
  int devices = 0;
  LLEP_CUDA_CHECK(cudaGetDeviceCount(&devices));
  CHECK_THROWS_WITH_AS((void)llep::PeerCopyGroup(std::vector<llep::PeerCopyRank>{{devices, nullptr}}),
                       doctest::Contains("outside [0, "), llep::Error);
  CHECK_THROWS_AS((void)llep::PeerCopyGroup(std::vector<llep::PeerCopyRank>{}), llep::Error);
  Streams streams(1, 0);
  llep::PeerCopyGroup group(streams.ranks(0));
  CHECK_THROWS_AS((void)group.rank(1), llep::Error);
}

TEST_CASE("PeerCopy across devices (runs with >= 2 GPUs)") {
  int devices = 0;
  LLEP_CUDA_CHECK(cudaGetDeviceCount(&devices));
  if (devices < 2) {
    MESSAGE("one GPU: the cross-device case needs two");
    return;
  }
  const int P = std::min(devices, 4);
  std::vector<std::unique_ptr<Streams>> per_device;
  std::vector<llep::PeerCopyRank> ranks;
  for (int d = 0; d < P; ++d) {
    per_device.push_back(std::make_unique<Streams>(1, d));
    ranks.push_back({d, per_device.back()->streams[0]});
  }
  llep::PeerCopyGroup group(ranks);
  Results out(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::PeerCopy& t) { Then<AllToAllV, Exchange>{{11, 4000}, {}}(t, out); });
  CHECK(out == on_host(P, Then<AllToAllV, Exchange>{{11, 4000}, {}}));
}

#if defined(LLEP_TEST_NCCL)
namespace {
// One thread per rank, rank r on device r, each with its own stream and Nccl handle.
template <class Body>
void run_nccl_ranks(int P, llep::NcclOptions options, Body&& body) {
  const ncclUniqueId id = llep::new_unique_id();
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(P));
  std::vector<std::thread> threads;
  for (int r = 0; r < P; ++r)
    threads.emplace_back([&, r] {
      cudaStream_t stream = nullptr;
      try {
        LLEP_CUDA_CHECK(cudaSetDevice(r));
        LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        llep::NcclOptions o = options;
        o.device = r;
        llep::Nccl t = llep::Nccl::init(P, r, id, stream, o);
        body(t);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
      if (stream) (void)cudaStreamDestroy(stream);
    });
  for (auto& th : threads) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

template <class Scenario>
Results on_nccl(int P, const Scenario& scenario) {
  Results out(static_cast<std::size_t>(P));
  run_nccl_ranks(P, {}, [&](llep::Nccl& t) { scenario(t, out); });
  return out;
}
}  // namespace

TEST_CASE("Nccl with one rank: self all_gather, all_to_all_v, exchange, weights, barrier") {
  const auto both = Then<AllToAllV, Exchange>{{3, 2000}, {}};
  CHECK(on_nccl(1, AllGather{100}) == on_host(1, AllGather{100}));
  CHECK(on_nccl(1, AllGatherInPlace{10}) == on_host(1, AllGatherInPlace{10}));
  CHECK(on_nccl(1, both) == on_host(1, both));
  run_nccl_ranks(1, {}, [&](llep::Nccl& t) {
    Space<llep::Nccl> s(t);
    auto* a = s.put(message(300, 1, 2, 3));
    auto* b = s.put(Bytes(300, 0));
    const llep::P2pOp ops[] = {{llep::P2pOp::Kind::send, 0, a, 300}, {llep::P2pOp::Kind::recv, 0, b, 300}};
    t.exchange_weights(ops);
    t.join_weights();
    CHECK(s.get(b, 300) == message(300, 1, 2, 3));
    t.synchronize();
    // Local argument errors throw before anything is enqueued.
    std::vector<std::size_t> one = {0}, two = {0, 0};
    CHECK_THROWS_WITH_AS(t.all_to_all_v(a, two, one, b, one, one), doctest::Contains("send_sizes with 2 entries"),
                         llep::Error);
    const llep::P2pOp unmatched[] = {{llep::P2pOp::Kind::send, 0, a, 3}};
    CHECK_THROWS_AS(t.exchange(unmatched), llep::Error);
    const llep::P2pOp bad_peer[] = {{llep::P2pOp::Kind::send, 1, a, 3}};
    CHECK_THROWS_WITH_AS(t.exchange(bad_peer), doctest::Contains("outside [0, 1)"), llep::Error);
    t.barrier();
    t.abort("test");
    CHECK(t.aborted());
    CHECK_THROWS_WITH_AS(t.barrier(), doctest::Contains("aborted"), llep::Error);
  });
}

TEST_CASE("Nccl: a stream that does not finish within the timeout aborts and throws naming the call") {
  std::string error;
  bool aborted = false;
  run_nccl_ranks(1, {.timeout = std::chrono::milliseconds(200)}, [&](llep::Nccl& t) {
    Space<llep::Nccl> s(t);
    auto* a = s.put(Bytes(64, 1));
    auto* b = s.put(Bytes(64, 0));
    slow_fill<<<1, 32, 0, t.stream()>>>(a, 64, 3, 40 * kSlowCycles);  // about a second or more
    LLEP_CUDA_CHECK(cudaGetLastError());
    t.all_gather(a, 64, b);
    const auto t0 = Clock::now();
    try {
      t.synchronize();
    } catch (const llep::Error& e) {
      error = e.what();
    }
    aborted = t.aborted() && Clock::now() - t0 < std::chrono::seconds(5);
    LLEP_CUDA_CHECK(cudaStreamSynchronize(t.stream()));  // let the kernel end before the buffers go
  });
  CHECK(error.find("timed out") != std::string::npos);
  CHECK(error.find("all_gather") != std::string::npos);
  CHECK(aborted);
}

TEST_CASE("Nccl with one rank per GPU equals HostThreads (runs with >= 2 GPUs)") {
  int devices = 0;
  LLEP_CUDA_CHECK(cudaGetDeviceCount(&devices));
  if (devices < 2) {
    MESSAGE("one GPU: NCCL needs one device per rank for the multi-rank case");
    return;
  }
  const int P = std::min(devices, 8);
  CHECK(on_nccl(P, AllGather{4097}) == on_host(P, AllGather{4097}));
  const auto both = Then<AllToAllV, Exchange>{{7, 30000}, {}};
  CHECK(on_nccl(P, both) == on_host(P, both));
}
#endif
