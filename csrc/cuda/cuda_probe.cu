// SPDX-License-Identifier: Apache-2.0
// Compiled only when nvcc is found. Kernels (gather/scatter) come with the GPU data path; this file
// proves the CUDA toolchain and static runtime link in every CI build.
#include <cuda_runtime.h>

#include "cuda/cuda_info.h"
#include "build_config.h"

namespace yrc {

namespace {
__global__ void touch_kernel(int* p) { *p = 1; }  // keeps a device function in the fatbin
}  // namespace

CudaInfo cuda_probe() {
  CudaInfo info;
  info.compiled = true;
  info.archs = YRCACHE_CUDA_ARCHS;
  info.toolkit = YRCACHE_CUDA_VERSION;
  cudaRuntimeGetVersion(&info.runtime_version);
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) info.driver_version = 0;
  cudaError_t err = cudaGetDeviceCount(&info.device_count);
  if (err != cudaSuccess) {
    info.device_count = 0;
    info.status = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error state
  } else if (info.device_count == 0) {
    info.status = "no CUDA device";
  }
  (void)&touch_kernel;
  return info;
}

}  // namespace yrc
