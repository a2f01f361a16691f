// SPDX-License-Identifier: Apache-2.0
#include "store/checksum.h"

#include <xxhash.h>
#ifdef YRCACHE_XXH3_DISPATCH
#include <xxh_x86dispatch.h>
#endif

namespace yrc::store {

std::uint64_t checksum(const void* data, std::size_t len) noexcept {
#ifdef YRCACHE_XXH3_DISPATCH
  return XXH3_64bits_dispatch(data, len);
#else
  return XXH3_64bits(data, len);
#endif
}

const char* checksum_impl() noexcept {
#ifdef YRCACHE_XXH3_DISPATCH
  return "xxh3-64 (libxxhash, runtime SIMD dispatch)";
#else
  return "xxh3-64 (libxxhash)";
#endif
}

}  // namespace yrc::store
