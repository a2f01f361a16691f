// SPDX-License-Identifier: Apache-2.0
#include "io/direct_io.h"

#include <algorithm>

#include "common/align.h"

namespace yrc {

std::vector<Piece> split_request(std::uintptr_t buf, std::uint64_t offset, std::size_t len,
                                 std::size_t chunk, std::size_t align, bool direct) {
  std::vector<Piece> out;
  if (len == 0) return out;
  chunk = std::max<std::size_t>(align_up(std::max<std::size_t>(chunk, 1), align), align);
  const std::uint64_t end = offset + len;
  auto emit = [&](std::uint64_t from, std::uint64_t to, bool dio) {
    for (std::uint64_t o = from; o < to;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, to - o));
      const std::size_t bo = static_cast<std::size_t>(o - offset);
      const bool bounce = dio && !is_aligned(buf + bo, align);
      out.push_back(Piece{o, n, bo, dio, bounce});
      o += n;
    }
  };
  if (!direct) {
    emit(offset, end, false);
    return out;
  }
  const std::uint64_t mid_begin = std::min<std::uint64_t>(align_up(offset, align), end);
  const std::uint64_t mid_end = std::max<std::uint64_t>(align_down(end, align), mid_begin);
  if (mid_begin > offset) emit(offset, mid_begin, false);
  if (mid_end > mid_begin) emit(mid_begin, mid_end, true);
  if (end > mid_end) emit(mid_end, end, false);
  return out;
}

}  // namespace yrc
