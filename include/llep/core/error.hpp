#pragma once
// llep::Error and the checking macros. Each macro sits behind #ifndef so an engine can
// route failures into its own error type.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace llep {

/// Every configuration, input and runtime failure of the library.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
[[nodiscard]] std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

}  // namespace llep

/// Throws llep::Error with the streamed message unless `cond` holds.
#ifndef LLEP_EXPECTS
#define LLEP_EXPECTS(cond, ...)                                      \
  do {                                                               \
    if (!(cond)) throw ::llep::Error(::llep::detail::concat("llep: ", __VA_ARGS__)); \
  } while (0)
#endif

#ifndef LLEP_FAIL
#define LLEP_FAIL(...) throw ::llep::Error(::llep::detail::concat("llep: ", __VA_ARGS__))
#endif
