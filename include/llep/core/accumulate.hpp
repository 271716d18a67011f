#pragma once
// The accumulation type of an element type, shared by the layer's combine and the expert
// functors (so experts need not include the layer).

namespace llep {

/// Accumulation type of an element type: float for float and the 16-bit types.
template <class T>
struct accumulate {
  using type = float;
};
template <>
struct accumulate<double> {
  using type = double;
};
template <class T>
using accumulate_t = typename accumulate<T>::type;

}  // namespace llep
