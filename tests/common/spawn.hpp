#pragma once
// Runs a built binary (a tool or a demo) from a test and captures what it printed.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

extern char** environ;

namespace testutil {

struct Run {
  int code = -1;
  std::string out, err;
};

// An unlinked temporary file: the child writes into it, the parent reads it back.
struct TempFd {
  int fd = -1;
  TempFd() {
    char name[] = "/tmp/llep-test-XXXXXX";
    fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::unlink(name);
  }
  ~TempFd() {
    if (fd >= 0) ::close(fd);
  }
  TempFd(const TempFd&) = delete;
  TempFd& operator=(const TempFd&) = delete;
  std::string read_all() const {
    std::string s;
    ::lseek(fd, 0, SEEK_SET);
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) s.append(buf, static_cast<std::size_t>(n));
    return s;
  }
};

/// Runs `bin args...` with stdin from /dev/null; returns its exit code, stdout and stderr.
inline Run run_binary(const std::string& bin, const std::vector<std::string>& args) {
  std::vector<std::string> owned{bin};
  owned.insert(owned.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : owned) argv.push_back(a.data());
  argv.push_back(nullptr);

  TempFd out, err;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out.fd, 1);
  posix_spawn_file_actions_adddup2(&fa, err.fd, 2);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, bin.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE_MESSAGE(rc == 0, "cannot start ", bin);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  Run r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = out.read_all();
  r.err = err.read_all();
  return r;
}

}  // namespace testutil
