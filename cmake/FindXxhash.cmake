# SPDX-License-Identifier: Apache-2.0
# FindXxhash: the segment checksum library (Debian/Ubuntu: libxxhash-dev). Provides Xxhash::xxhash
# and Xxhash_DISPATCH when the library exports XXH3_64bits_dispatch (runtime SIMD selection).
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_Xxhash QUIET libxxhash)
endif()
find_path(Xxhash_INCLUDE_DIR NAMES xxhash.h HINTS ${PC_Xxhash_INCLUDE_DIRS})
find_library(Xxhash_LIBRARY NAMES xxhash HINTS ${PC_Xxhash_LIBRARY_DIRS})
set(Xxhash_VERSION "${PC_Xxhash_VERSION}")

if(Xxhash_INCLUDE_DIR AND Xxhash_LIBRARY)
  include(CheckSymbolExists)
  include(CMakePushCheckState)
  cmake_push_check_state(RESET)
  set(CMAKE_REQUIRED_INCLUDES ${Xxhash_INCLUDE_DIR})
  set(CMAKE_REQUIRED_LIBRARIES ${Xxhash_LIBRARY})
  set(CMAKE_REQUIRED_QUIET ON)
  check_symbol_exists(XXH3_64bits "xxhash.h" Xxhash_HAS_XXH3)
  if(EXISTS "${Xxhash_INCLUDE_DIR}/xxh_x86dispatch.h")
    check_symbol_exists(XXH3_64bits_dispatch "xxh_x86dispatch.h" Xxhash_DISPATCH)
  endif()
  cmake_pop_check_state()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Xxhash
  REQUIRED_VARS Xxhash_LIBRARY Xxhash_INCLUDE_DIR Xxhash_HAS_XXH3
  VERSION_VAR Xxhash_VERSION)

if(Xxhash_FOUND AND NOT TARGET Xxhash::xxhash)
  add_library(Xxhash::xxhash UNKNOWN IMPORTED)
  set_target_properties(Xxhash::xxhash PROPERTIES
    IMPORTED_LOCATION "${Xxhash_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${Xxhash_INCLUDE_DIR}")
  if(Xxhash_DISPATCH)
    set_property(TARGET Xxhash::xxhash PROPERTY INTERFACE_COMPILE_DEFINITIONS YRCACHE_XXH3_DISPATCH=1)
  endif()
endif()
mark_as_advanced(Xxhash_INCLUDE_DIR Xxhash_LIBRARY)
