// SPDX-License-Identifier: Apache-2.0
// What CUDA support was compiled and what the machine offers. Safe without a driver or GPU: the
// runtime is linked statically and reports "no driver" instead of failing to load.
#pragma once
#include <string>

namespace yrc {

struct CudaInfo {
  bool compiled = false;
  std::string archs;
  std::string toolkit;
  int runtime_version = 0;  // CUDART_VERSION-style integer, 0 when not compiled
  int driver_version = 0;   // 0 when no driver is installed
  int device_count = 0;
  std::string status;       // why no device is usable, if none is
};

CudaInfo cuda_info();

}  // namespace yrc
