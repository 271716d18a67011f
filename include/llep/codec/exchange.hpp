#pragma once
// The weight transfers of a plan through a codec, on host memory: the native rank encodes
// each expert it sends once (transfers are sorted by expert, so all copies of one expert
// are adjacent), the encoded bytes travel, the helper decodes them into the expert's
// foreign slot. Wire bytes are codec.encoded_bytes(elems) per transfer, which is what the
// returned ops (and a step report summing them) count. One blocking exchange: no overlap
// with the token dispatch, since decoding must follow arrival.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "llep/codec/codec.hpp"
#include "llep/core/memory_space.hpp"
#include "llep/transport/transport.hpp"  // P2pOp
#include "llep/core/error.hpp"
#include "llep/core/plan_view.hpp"

namespace llep {

/// Reused host storage of encode_exchange_decode: grows to the largest step, then stays.
struct EncodedWeights {
  std::vector<std::byte> sent, received;
  std::vector<P2pOp> ops;
};

/// Encoded buffers one rank needs for `transfers`: one per distinct expert it sends, one
/// per transfer it receives.
struct CodecExchangeCounts {
  std::size_t sends = 0, receives = 0;
};
[[nodiscard]] inline CodecExchangeCounts codec_exchange_counts(std::span<const WeightTransfer> transfers, int rank) {
  CodecExchangeCounts c;
  for (std::size_t i = 0; i < transfers.size(); ++i) {
    const WeightTransfer& t = transfers[i];
    if (t.src == rank && (i == 0 || transfers[i - 1].expert != t.expert || transfers[i - 1].src != rank)) ++c.sends;
    if (t.dst == rank) ++c.receives;
  }
  return c;
}

/// The host and device exchanges' shared part: lists this rank's ops into `ops`, sends
/// from `sent` (the i-th distinct expert sent at i x eb) and receives into `received`
/// (the j-th received at j x eb), calling `encode(expert, dst)` once per distinct expert
/// sent, before its sends are listed.
template <class Encode>
void codec_exchange_ops(std::span<const WeightTransfer> transfers, int rank, std::size_t eb, std::byte* sent,
                        std::byte* received, std::vector<P2pOp>& ops, Encode encode) {
  ops.clear();
  std::size_t s = 0, r = 0;
  for (std::size_t i = 0; i < transfers.size(); ++i) {
    const WeightTransfer& t = transfers[i];
    if (t.src == rank) {
      const bool first = i == 0 || transfers[i - 1].expert != t.expert || transfers[i - 1].src != rank;
      if (first) encode(t.expert, sent + s++ * eb);
      ops.push_back(P2pOp{P2pOp::Kind::send, t.dst, sent + (s - 1) * eb, eb});
    }
    if (t.dst == rank) ops.push_back(P2pOp{P2pOp::Kind::recv, t.src, received + r++ * eb, eb});
  }
}

/// Calls `decode(expert, src)` for every expert this rank received, in ops' order.
template <class Decode>
void codec_exchange_decode(std::span<const WeightTransfer> transfers, int rank, std::size_t eb,
                           const std::byte* received, Decode decode) {
  std::size_t r = 0;
  for (const WeightTransfer& t : transfers)
    if (t.dst == rank) decode(t.expert, received + r++ * eb);
}

/// `held(e)` returns this rank's weights of expert e (const value_type*, `elems` elements),
/// `foreign(e)` where the decoded weights of a received expert go (value_type*). Collective
/// over `transport` (every rank calls it with the same transfers). A lossy codec refuses
/// non-finite weights on the sender before anything moves: that rank aborts the transport
/// (its peers get llep::Error instead of waiting) and throws.
template <WeightCodec C, class Tr, class Held, class Foreign>
void encode_exchange_decode(const C& codec, Tr& transport, std::span<const WeightTransfer> transfers, int rank,
                            std::size_t elems, Held held, Foreign foreign, EncodedWeights& buf) {
  static_assert(Tr::memory == MemorySpace::host,
                "llep: encode_exchange_decode runs the codec on host memory; on the device use "
                "device_encode_exchange_decode (codec/exchange.cuh)");
  using T = typename C::value_type;
  const std::size_t eb = codec.encoded_bytes(elems);
  const CodecExchangeCounts n = codec_exchange_counts(transfers, rank);
  buf.sent.resize(n.sends * eb);
  buf.received.resize(n.receives * eb);
  codec_exchange_ops(transfers, rank, eb, buf.sent.data(), buf.received.data(), buf.ops, [&](int e, std::byte* dst) {
    try {
      codec.encode(std::span<const T>(held(e), elems), std::span<std::byte>(dst, eb));
    } catch (const Error& err) {
      transport.abort(err.what());  // release the peers waiting for these bytes
      throw;
    }
  });
  transport.exchange(buf.ops);
  codec_exchange_decode(transfers, rank, eb, buf.received.data(), [&](int e, const std::byte* src) {
    codec.decode(std::span<const std::byte>(src, eb), std::span<T>(foreign(e), elems));
  });
}

}  // namespace llep
