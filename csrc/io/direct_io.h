// SPDX-License-Identifier: Apache-2.0
// The alignment splitter: cuts a request [offset, offset+len) into pieces the kernel accepts.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace yrc {

struct Piece {
  std::uint64_t offset;   // file offset
  std::size_t len;        // bytes
  std::size_t buf_off;    // offset into the caller's buffer
  bool direct;            // O_DIRECT descriptor (else buffered)
  bool bounce;            // caller memory misaligned: stage through an aligned bounce buffer
};

// With direct, the unaligned head (up to the first aligned offset) and tail (after the last) go
// buffered; the aligned middle goes O_DIRECT in pieces of at most chunk bytes (chunk is rounded up
// to align). If the caller's buffer is not aligned where a direct piece starts, that piece bounces.
// Without direct, everything is buffered in chunk-sized pieces. Pieces cover the range exactly, in
// order, without overlap.
std::vector<Piece> split_request(std::uintptr_t buf, std::uint64_t offset, std::size_t len,
                                 std::size_t chunk, std::size_t align, bool direct);

}  // namespace yrc
