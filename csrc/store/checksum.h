// SPDX-License-Identifier: Apache-2.0
// Segment checksums: XXH3-64 from libxxhash (the distribution's build dispatches at run time to
// SSE2/AVX2/AVX-512), tens of GB/s per core, so verifying a segment costs little next to reading it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace yrc::store {

std::uint64_t checksum(const void* data, std::size_t len) noexcept;
// Name of the implementation in use ("xxh3-dispatch" or "xxh3"), for build_info.
const char* checksum_impl() noexcept;

}  // namespace yrc::store
