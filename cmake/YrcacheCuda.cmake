# SPDX-License-Identifier: Apache-2.0
# CUDA detection and option plumbing. YRCACHE_CUDA=auto|on|off; arch list from YRCACHE_CUDA_ARCHS.
# The CUDA runtime is linked statically and libcuda is never linked, so `import yrcache` works on
# machines without a driver (calls then report "no device").
set(YRCACHE_HAVE_CUDA OFF)
set(YRCACHE_CUDA_REASON "disabled (YRCACHE_CUDA=off)")
if(NOT YRCACHE_CUDA STREQUAL "off")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT YRCACHE_CUDA_ARCHS)
      # Ampere, Ada, Hopper; "90" (no -real) also embeds PTX for newer cards.
      set(YRCACHE_CUDA_ARCHS "80-real;89-real;90")
    endif()
    set(CMAKE_CUDA_ARCHITECTURES ${YRCACHE_CUDA_ARCHS})
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(YRCACHE_HAVE_CUDA ON)
    set(YRCACHE_CUDA_REASON "nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs ${YRCACHE_CUDA_ARCHS}")
  else()
    set(YRCACHE_CUDA_REASON "nvcc not found")
  endif()
endif()
if(YRCACHE_CUDA STREQUAL "on" AND NOT YRCACHE_HAVE_CUDA)
  message(FATAL_ERROR "YRCACHE_CUDA=on but CUDA is unusable: ${YRCACHE_CUDA_REASON}")
endif()
