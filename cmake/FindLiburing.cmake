# SPDX-License-Identifier: Apache-2.0
# FindLiburing: pkg-config first, then find_path/find_library; provides Liburing::liburing.
#   Liburing_FOUND, Liburing_VERSION, Liburing_INCLUDE_DIR, Liburing_LIBRARY
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_Liburing QUIET liburing)
endif()

find_path(Liburing_INCLUDE_DIR NAMES liburing.h HINTS ${PC_Liburing_INCLUDE_DIRS})
find_library(Liburing_LIBRARY NAMES uring HINTS ${PC_Liburing_LIBRARY_DIRS})

if(PC_Liburing_VERSION)
  set(Liburing_VERSION ${PC_Liburing_VERSION})
elseif(Liburing_INCLUDE_DIR AND EXISTS "${Liburing_INCLUDE_DIR}/liburing/io_uring_version.h")
  file(STRINGS "${Liburing_INCLUDE_DIR}/liburing/io_uring_version.h" _maj REGEX "IO_URING_VERSION_MAJOR")
  file(STRINGS "${Liburing_INCLUDE_DIR}/liburing/io_uring_version.h" _min REGEX "IO_URING_VERSION_MINOR")
  string(REGEX MATCH "[0-9]+" _maj "${_maj}")
  string(REGEX MATCH "[0-9]+" _min "${_min}")
  set(Liburing_VERSION "${_maj}.${_min}")
else()
  set(Liburing_VERSION "unknown")
endif()

# A header is not enough (nixl's lesson): the library must provide the symbols we call.
if(Liburing_INCLUDE_DIR AND Liburing_LIBRARY)
  include(CheckSymbolExists)
  include(CMakePushCheckState)
  cmake_push_check_state(RESET)
  set(CMAKE_REQUIRED_INCLUDES ${Liburing_INCLUDE_DIR})
  set(CMAKE_REQUIRED_LIBRARIES ${Liburing_LIBRARY})
  set(CMAKE_REQUIRED_QUIET ON)
  check_symbol_exists(io_uring_register_buffers_sparse "liburing.h" Liburing_HAS_SPARSE_BUFFERS)
  cmake_pop_check_state()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Liburing
  REQUIRED_VARS Liburing_LIBRARY Liburing_INCLUDE_DIR Liburing_HAS_SPARSE_BUFFERS
  VERSION_VAR Liburing_VERSION)

if(Liburing_FOUND AND NOT TARGET Liburing::liburing)
  add_library(Liburing::liburing UNKNOWN IMPORTED)
  set_target_properties(Liburing::liburing PROPERTIES
    IMPORTED_LOCATION "${Liburing_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${Liburing_INCLUDE_DIR}")
endif()
mark_as_advanced(Liburing_INCLUDE_DIR Liburing_LIBRARY)
