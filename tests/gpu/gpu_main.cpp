// doctest main of the GPU tests: on a machine without a usable CUDA device it prints one
// SKIP line and exits 77, which meson reports as skipped (never as passed).
#define DOCTEST_CONFIG_IMPLEMENT
#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <cstdio>

int main(int argc, char** argv) {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    if (e != cudaSuccess)
      std::printf("SKIP: no CUDA device (cudaGetDeviceCount: %s: %s)\n", cudaGetErrorName(e), cudaGetErrorString(e));
    else
      std::printf("SKIP: no CUDA device (cudaGetDeviceCount: 0 devices)\n");
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
