#pragma once
// Reading a whole input file (a trace, a GEMM curve, a loads list) with a bound: only a
// regular file (a FIFO would block forever, /dev/zero never ends) of at most `max_bytes`.
// POSIX: the file is opened without blocking and checked on the open descriptor, so a path
// swapped for a FIFO between a check and the open cannot hang the reader.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "llep/core/error.hpp"

namespace llep::sim {

/// Default bounds of the readers (each reader takes its own as a parameter).
inline constexpr std::uint64_t kMaxTraceFileBytes = std::uint64_t{1} << 30;  ///< .npy traces: 1 GiB
inline constexpr std::uint64_t kMaxTextFileBytes = std::uint64_t{64} << 20;  ///< CSV and loads lists: 64 MiB

/// The bytes of the regular file `path`, at most `max_bytes` of them; `what` names the
/// file's role in messages. Throws llep::Error "<path>: ..." when it cannot be opened or read, is not a regular file, or is
/// larger than `max_bytes` (checked before reading, and again while reading in case the
/// file grows).
[[nodiscard]] inline std::string read_regular_file(const std::string& path, std::uint64_t max_bytes,
                                                   std::string_view what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  LLEP_EXPECTS(fd >= 0, path, ": cannot open the ", what, ": ", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  LLEP_EXPECTS(::fstat(fd, &st) == 0, path, ": cannot stat the ", what, ": ", std::strerror(errno));
  LLEP_EXPECTS(S_ISREG(st.st_mode), path, ": not a regular file (a directory, FIFO, socket or device); the ", what,
               " must be a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  LLEP_EXPECTS(size <= max_bytes, path, ": ", size, " bytes, more than the ", what, " limit of ", max_bytes, " bytes");
  std::string bytes(static_cast<std::size_t>(size) + 1, '\0');  // a spare byte: a file that grew shows
  std::size_t have = 0;
  for (;;) {
    if (have == bytes.size()) {
      LLEP_EXPECTS(have <= max_bytes, path, ": grew beyond the ", what, " limit of ", max_bytes, " bytes");
      bytes.resize(have + 4096);
    }
    const ::ssize_t n = ::read(fd, bytes.data() + have, bytes.size() - have);
    if (n < 0 && errno == EINTR) continue;
    LLEP_EXPECTS(n >= 0, path, ": cannot read the ", what, ": ", std::strerror(errno));
    if (n == 0) break;
    have += static_cast<std::size_t>(n);
  }
  LLEP_EXPECTS(have <= max_bytes, path, ": grew beyond the ", what, " limit of ", max_bytes, " bytes");
  bytes.resize(have);
  return bytes;
}

}  // namespace llep::sim
