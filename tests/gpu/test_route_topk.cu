// route_topk on the device against the host loop: the same experts, gates within a few ulp
// (device expf is not the host's), for both score normalisations, with and without a bias.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "device_array.hpp"
#include "llep/stats/route_topk.cuh"

TEST_CASE("device route_topk selects the host's experts and gates them alike") {
  cudaStream_t stream = nullptr;
  LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto norm : {llep::GateNorm::sigmoid, llep::GateNorm::softmax})
    for (const auto& [N, K] : {std::pair{8, 2}, std::pair{64, 6}, std::pair{256, 8}}) {
      CAPTURE(N);
      CAPTURE(K);
      const std::size_t B = 3000;
      std::vector<float> x(B * static_cast<std::size_t>(N)), bias(static_cast<std::size_t>(N));
      for (float& v : x) v = 2.0f * normal(rng);
      for (float& b : bias) b = 0.05f * normal(rng);
      for (const bool with_bias : {false, true}) {
        std::vector<std::int32_t> ids(B * static_cast<std::size_t>(K));
        std::vector<float> gates(ids.size());
        llep::route_topk(x, with_bias ? std::span<const float>(bias) : std::span<const float>(), N, K, norm, ids,
                         gates);
        gputest::DeviceArray<float> dx(x), db(bias), dg(gates.size());
        gputest::DeviceArray<std::int32_t> di(ids.size());
        llep::route_topk(stream, dx.get(), with_bias ? db.get() : nullptr, B, N, K, norm, di.get(), dg.get());
        LLEP_CUDA_CHECK(cudaStreamSynchronize(stream));
        const auto device_ids = di.download();
        const auto device_gates = dg.download();
        std::size_t differ = 0;
        for (std::size_t i = 0; i < ids.size(); ++i) {
          if (device_ids[i] != ids[i]) {
            ++differ;  // a near-tie decided by the last bit of expf
            continue;
          }
          CHECK(device_gates[i] == doctest::Approx(gates[i]).epsilon(1e-5));
        }
        CHECK(differ <= ids.size() / 1000);
      }
    }
  LLEP_CUDA_CHECK(cudaStreamDestroy(stream));
}
