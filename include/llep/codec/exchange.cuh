#pragma once
// The weight transfers of a plan through a codec on device memory (codec/exchange.hpp's
// host exchange, with the device kernels of codec/codec.cuh): the native rank encodes each
// expert it sends once on its stream, the encoded bytes travel by the transport's
// exchange (which must order its work on the same stream), the helper decodes them into
// the expert's foreign slot. One blocking exchange, as on the host: decoding follows
// arrival. A non-finite weight raises the encode kernels' flag; the sender checks it
// (one host synchronisation) before anything moves, aborts the transport and throws.
#include <cuda_runtime.h>

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "llep/codec/codec.cuh"
#include "llep/codec/exchange.hpp"
#include "llep/core/carve.hpp"
#include "llep/core/error.hpp"
#include "llep/exec/cuda.cuh"

namespace llep {

/// Bytes of device scratch device_encode_exchange_decode needs: the encoded buffers of
/// `n` (codec_exchange_counts) and the non-finite flag, 256-byte aligned pieces.
template <WeightCodec C>
[[nodiscard]] std::size_t device_codec_scratch_bytes(const C& codec, std::size_t elems, CodecExchangeCounts n) {
  const std::size_t eb = codec.encoded_bytes(elems);
  Carve c;
  (void)c.take(n.sends * eb), (void)c.take(n.receives * eb), (void)c.take(sizeof(int));
  return c.bytes;
}

/// As encode_exchange_decode, on device memory: `held(e)` / `foreign(e)` give device
/// pointers, `scratch` (device, device_codec_scratch_bytes) holds the encoded bytes, work
/// runs on `exec`'s stream, `ops` receives the wire ops (their bytes are the wire bytes).
template <WeightCodec C, class Tr, class Held, class Foreign>
void device_encode_exchange_decode(const C& codec, Tr& transport, CudaExec& exec,
                                   std::span<const WeightTransfer> transfers, int rank, std::size_t elems, Held held,
                                   Foreign foreign, std::span<std::byte> scratch, std::vector<P2pOp>& ops) {
  static_assert(Tr::memory == MemorySpace::device,
                "llep: device_encode_exchange_decode moves device memory; use a device transport (PeerCopy, Nccl)");
  const std::size_t eb = codec.encoded_bytes(elems);
  const CodecExchangeCounts n = codec_exchange_counts(transfers, rank);
  LLEP_EXPECTS(device_codec_scratch_bytes(codec, elems, n) <= scratch.size(), "rank ", rank, ": codec scratch of ",
               scratch.size(), " bytes; the exchange needs ", device_codec_scratch_bytes(codec, elems, n));
  Carve c;
  std::byte* sent = scratch.data() + c.take(n.sends * eb);
  std::byte* received = scratch.data() + c.take(n.receives * eb);
  int* flag = reinterpret_cast<int*>(scratch.data() + c.take(sizeof(int)));
  const cudaStream_t stream = exec.stream();
  LLEP_CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(int), stream));
  codec_exchange_ops(transfers, rank, eb, sent, received, ops,
                     [&](int e, std::byte* dst) { device_encode(codec, held(e), elems, dst, flag, stream); });
  if (n.sends > 0) {
    int bad = 0;
    exec.to_host(&bad, flag, sizeof bad);
    exec.synchronize();
    if (bad != 0) {
      const std::string why = detail::concat("rank ", rank, ": a weight it sends is not finite (NaN or Inf); ",
                                             "the lossy codec '", C::name, "' refuses it");
      transport.abort(why);  // release the peers waiting for these bytes
      LLEP_FAIL(why);
    }
  }
  transport.exchange(ops);
  codec_exchange_decode(transfers, rank, eb, received, [&](int e, const std::byte* src) {
    device_decode(codec, src, elems, foreign(e), stream);
  });
}

}  // namespace llep
