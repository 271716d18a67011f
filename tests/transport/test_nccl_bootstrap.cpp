// nccl_bootstrap.hpp: hex round trip and validation, the file rendezvous (two threads,
// and its timeout), launch_from_env. Needs NCCL's headers and library but no GPU, so it
// runs in CI; only the case that calls ncclGetUniqueId tolerates a machine where NCCL
// cannot initialise (no CUDA driver).
#include <doctest/doctest.h>

#include <cctype>
#include <cstdint>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <memory>
#include <thread>
#include <vector>

#include <unistd.h>

#include "llep/transport/nccl.hpp"
#include "llep/transport/nccl_bootstrap.hpp"

namespace {

ncclUniqueId sample_id(int seed) {
  ncclUniqueId id{};
  for (std::size_t i = 0; i < sizeof(id.internal); ++i) id.internal[i] = static_cast<char>((i * 37 + seed * 11) & 0xff);
  return id;
}

bool same(const ncclUniqueId& a, const ncclUniqueId& b) {
  return std::string(a.internal, sizeof(a.internal)) == std::string(b.internal, sizeof(b.internal));
}

// A fresh folder per test case, removed at the end.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("llep_bootstrap_" + std::to_string(::getpid()) + "_" +
            std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// Sets (or unsets, with nullptr) an environment variable for a scope.
struct EnvVar {
  std::string name;
  std::string old;
  bool had;
  EnvVar(const char* n, const char* value) : name(n) {
    const char* o = std::getenv(n);
    had = o != nullptr;
    if (had) old = o;
    if (value)
      ::setenv(n, value, 1);
    else
      ::unsetenv(n);
  }
  ~EnvVar() {
    if (had)
      ::setenv(name.c_str(), old.c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};

}  // namespace

TEST_CASE("unique id hex: round trip, upper case and whitespace accepted") {
  for (int seed : {0, 1, 200}) {
    const ncclUniqueId id = sample_id(seed);
    const std::string hex = llep::unique_id_to_hex(id);
    CHECK(hex.size() == 2 * NCCL_UNIQUE_ID_BYTES);
    CHECK(hex.find_first_not_of("0123456789abcdef") == std::string::npos);
    CHECK(same(llep::unique_id_from_hex(hex), id));
    std::string upper = hex;
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    CHECK(same(llep::unique_id_from_hex(" " + upper + "\n"), id));
  }
}

TEST_CASE("unique id hex: bad length and non-hex digits throw llep::Error naming them") {
  const std::string hex = llep::unique_id_to_hex(sample_id(3));
  CHECK_THROWS_WITH_AS((void)llep::unique_id_from_hex(hex.substr(1)), doctest::Contains("255 digits"), llep::Error);
  CHECK_THROWS_WITH_AS((void)llep::unique_id_from_hex(""), doctest::Contains("0 digits"), llep::Error);
  std::string bad = hex;
  bad[17] = 'g';
  CHECK_THROWS_WITH_AS((void)llep::unique_id_from_hex(bad), doctest::Contains("'g' at position 17"), llep::Error);
}

TEST_CASE("unique_id_from_env reads the hex, and names the variable when unset or malformed") {
  const ncclUniqueId id = sample_id(5);
  {
    EnvVar v("LLEP_TEST_NCCL_ID", llep::unique_id_to_hex(id).c_str());
    CHECK(same(llep::unique_id_from_env("LLEP_TEST_NCCL_ID"), id));
  }
  {
    EnvVar v("LLEP_TEST_NCCL_ID", nullptr);
    CHECK_THROWS_WITH_AS((void)llep::unique_id_from_env("LLEP_TEST_NCCL_ID"), doctest::Contains("LLEP_TEST_NCCL_ID"),
                         llep::Error);
  }
  {
    EnvVar v("LLEP_TEST_NCCL_ID", "abc");
    CHECK_THROWS_WITH_AS((void)llep::unique_id_from_env("LLEP_TEST_NCCL_ID"), doctest::Contains("LLEP_TEST_NCCL_ID"),
                         llep::Error);
  }
}

TEST_CASE("file rendezvous: a reader that starts first gets the id the writer publishes later") {
  TempDir dir;
  const auto path = dir.path / "job.id";
  const ncclUniqueId id = sample_id(7);
  ncclUniqueId got{};
  std::string error;
  std::thread reader([&] {
    try {
      got = llep::await_unique_id(path, std::chrono::seconds(30));
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  llep::publish_unique_id(path, id);
  reader.join();
  CHECK(error.empty());
  CHECK(same(got, id));
  // Nothing but the id file is left behind (the temporary was renamed).
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path)) files += e.is_regular_file();
  CHECK(files == 1);
}

TEST_CASE("file rendezvous: waiting past the timeout throws llep::Error naming the path, promptly") {
  TempDir dir;
  const auto path = dir.path / "never.id";
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS((void)llep::unique_id_via_file(path, 1, std::chrono::milliseconds(100)),
                       doctest::Contains("never.id"), llep::Error);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
}

TEST_CASE("file rendezvous: a malformed file throws llep::Error naming the path") {
  TempDir dir;
  const auto path = dir.path / "bad.id";
  std::ofstream(path) << "not hex\n";
  CHECK_THROWS_WITH_AS((void)llep::await_unique_id(path, std::chrono::milliseconds(100)), doctest::Contains("bad.id"),
                       llep::Error);
}

TEST_CASE("unique_id_via_file: rank 0 creates and publishes, rank 1 reads the same id") {
  TempDir dir;
  const auto path = dir.path / "job.id";
  ncclUniqueId first{};
  try {
    first = llep::new_unique_id();
  } catch (const llep::Error& e) {
    MESSAGE("ncclGetUniqueId cannot run here (", e.what(), "); the publish/await cases cover the rendezvous");
    return;
  }
  (void)first;
  ncclUniqueId at0{}, at1{};
  std::string error;
  std::thread rank1([&] {
    try {
      at1 = llep::unique_id_via_file(path, 1, std::chrono::seconds(30));
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  at0 = llep::unique_id_via_file(path, 0);
  rank1.join();
  CHECK(error.empty());
  CHECK(same(at0, at1));
}

TEST_CASE("launch_from_env: torchrun, Open MPI, none, and bad values") {
  // Clear every variable the function reads, then set the ones of each case.
  const char* all[] = {"RANK",          "WORLD_SIZE",           "LOCAL_RANK",         "OMPI_COMM_WORLD_RANK",
                       "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE",
                       "MPI_LOCALRANKID", "SLURM_PROCID",      "SLURM_NTASKS",       "SLURM_LOCALID"};
  std::vector<std::unique_ptr<EnvVar>> cleared;
  for (const char* n : all) cleared.push_back(std::make_unique<EnvVar>(n, nullptr));

  CHECK(llep::launch_from_env() == llep::Launch{0, 1, 0});
  {
    EnvVar r("RANK", "3"), w("WORLD_SIZE", "8"), l("LOCAL_RANK", "1");
    CHECK(llep::launch_from_env() == llep::Launch{3, 8, 1});
  }
  {
    EnvVar r("OMPI_COMM_WORLD_RANK", "2"), w("OMPI_COMM_WORLD_SIZE", "4");
    CHECK(llep::launch_from_env() == llep::Launch{2, 4, 2});
  }
  {
    EnvVar r("RANK", "4"), w("WORLD_SIZE", "4");
    CHECK_THROWS_WITH_AS((void)llep::launch_from_env(), doctest::Contains("rank 4 is outside [0, 4)"), llep::Error);
  }
  {
    EnvVar r("RANK", "1x"), w("WORLD_SIZE", "4");
    CHECK_THROWS_WITH_AS((void)llep::launch_from_env(), doctest::Contains("RANK = '1x'"), llep::Error);
  }
  {
    EnvVar r("RANK", "1");
    CHECK_THROWS_AS((void)llep::launch_from_env(), llep::Error);
  }
}

TEST_CASE("Nccl::adopt refuses a null communicator and the same communicator twice, before touching a device") {
  CHECK_THROWS_WITH_AS((void)llep::Nccl::adopt(nullptr, nullptr), doctest::Contains("communicator is null"),
                       llep::Error);
  // A non-null handle that is never dereferenced: the check comes first.
  auto* fake = reinterpret_cast<ncclComm_t>(std::uintptr_t{0x1000});
  CHECK_THROWS_WITH_AS((void)llep::Nccl::adopt(fake, nullptr, {}, fake), doctest::Contains("second communicator"),
                       llep::Error);
}
