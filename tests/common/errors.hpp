#pragma once
// The message of the llep::Error a callable throws, for tests that check what it names.
#include <string>

#include "llep/core/error.hpp"

namespace testutil {

/// What `f` throws as llep::Error, or kNoError when it throws nothing.
inline const std::string kNoError = "(no llep::Error)";

inline std::string error_of(auto&& f) {
  try {
    f();
  } catch (const llep::Error& e) {
    return e.what();
  }
  return kNoError;
}

}  // namespace testutil
