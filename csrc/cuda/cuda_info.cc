// SPDX-License-Identifier: Apache-2.0
#include "cuda/cuda_info.h"

namespace yrc {

#ifdef YRCACHE_HAVE_CUDA
CudaInfo cuda_probe();  // cuda_probe.cu
CudaInfo cuda_info() { return cuda_probe(); }
#else
CudaInfo cuda_info() {
  CudaInfo info;
  info.status = "CUDA support not compiled (nvcc not found or YRCACHE_CUDA=off)";
  return info;
}
#endif

}  // namespace yrc
