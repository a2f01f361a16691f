// SPDX-License-Identifier: Apache-2.0
#pragma once
#include <cstddef>
#include <cstdint>

namespace yrc {

// Alignment used for O_DIRECT offsets, lengths and buffers. 4 KiB satisfies every local file system
// (ext4/xfs need the logical block size, 512 here) and is the page size, as kvikio and LMCache use.
inline constexpr std::size_t kDirectAlign = 4096;

constexpr std::uint64_t align_down(std::uint64_t v, std::uint64_t a) { return v - v % a; }
constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return align_down(v + a - 1, a); }
constexpr bool is_aligned(std::uint64_t v, std::uint64_t a) { return v % a == 0; }

}  // namespace yrc
