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

/// `held(e)` returns this rank's weights of expert e (const value_type*, `elems` elements),
/// `foreign(e)` where the decoded weights of a received expert go (value_type*). Collective
/// over `transport` (every rank calls it with the same transfers). A lossy codec refuses
/// non-finite weights on the sender before anything moves: that rank aborts the transport
/// (its peers get llep::Error instead of waiting) and throws.
template <WeightCodec C, class Tr, class Held, class Foreign>
void encode_exchange_decode(const C& codec, Tr& transport, std::span<const WeightTransfer> transfers, int rank,
                            std::size_t elems, Held held, Foreign foreign, EncodedWeights& buf) {
  static_assert(Tr::memory == MemorySpace::host,
                "llep: encode_exchange_decode runs the codec on host memory; on the device use device_encode / "
                "device_decode (codec/codec.cuh) around the transport's exchange");
  using T = typename C::value_type;
  const std::size_t eb = codec.encoded_bytes(elems);
  std::size_t sent = 0, received = 0;
  for (std::size_t i = 0; i < transfers.size(); ++i) {
    const WeightTransfer& t = transfers[i];
    if (t.src == rank && (i == 0 || transfers[i - 1].expert != t.expert || transfers[i - 1].src != rank)) ++sent;
    if (t.dst == rank) ++received;
  }
  buf.sent.resize(sent * eb);
  buf.received.resize(received * eb);
  buf.ops.clear();
  std::size_t s = 0, r = 0;
  for (std::size_t i = 0; i < transfers.size(); ++i) {
    const WeightTransfer& t = transfers[i];
    if (t.src == rank) {
      const bool first = i == 0 || transfers[i - 1].expert != t.expert || transfers[i - 1].src != rank;
      if (first) {
        try {
          codec.encode(std::span<const T>(held(t.expert), elems), std::span<std::byte>(buf.sent.data() + s * eb, eb));
        } catch (const Error& e) {
          transport.abort(e.what());  // release the peers waiting for these bytes
          throw;
        }
        ++s;
      }
      buf.ops.push_back(P2pOp{P2pOp::Kind::send, t.dst, buf.sent.data() + (s - 1) * eb, eb});
    }
    if (t.dst == rank) buf.ops.push_back(P2pOp{P2pOp::Kind::recv, t.src, buf.received.data() + r++ * eb, eb});
  }
  transport.exchange(buf.ops);
  r = 0;
  for (const WeightTransfer& t : transfers)
    if (t.dst == rank) {
      codec.decode(std::span<const std::byte>(buf.received.data() + r++ * eb, eb), std::span<T>(foreign(t.expert), elems));
    }
}

}  // namespace llep
