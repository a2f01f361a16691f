// SPDX-License-Identifier: Apache-2.0
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/thread_group.h"
#include "copy/copy.h"

namespace yrc::copy {

namespace {

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

void check_view(const PagedView& v) {
  if (v.base == 0) bad("paged view: null base address");
  if (v.num_blocks <= 0 || v.page_bytes <= 0) bad("paged view: num_blocks and page_bytes must be > 0");
  if (v.block_stride < v.page_bytes)
    bad("paged view: block_stride (" + std::to_string(v.block_stride) + ") < page_bytes (" +
        std::to_string(v.page_bytes) + "): pages would overlap");
}

void check_ids(const PagedView& v, const std::int64_t* ids, std::size_t n, bool unique) {
  for (std::size_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= v.num_blocks)
      bad("block id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
          " is out of range [0, " + std::to_string(v.num_blocks) + ")");
  if (unique && n > 1) {
    std::vector<std::int64_t> s(ids, ids + n);
    std::sort(s.begin(), s.end());
    auto dup = std::adjacent_find(s.begin(), s.end());
    if (dup != s.end())
      bad("block id " + std::to_string(*dup) + " appears twice: two sources for one destination");
  }
}

// Runs fn(lo, hi) over [0, n) in `threads` contiguous parts (the calling thread takes the first,
// and any part whose thread could not be started).
template <typename Fn>
void parallel_for(std::size_t n, unsigned threads, Fn fn) {
  if (threads <= 1 || n < 2) {
    fn(std::size_t{0}, n);
    return;
  }
  const std::size_t parts = std::min<std::size_t>({threads, n, 64});
  ThreadGroup pool;  // joins on every exit path
  std::size_t started = 1;
  for (; started < parts; ++started)
    if (!pool.try_start([&fn, n, parts, p = started] { fn(n * p / parts, n * (p + 1) / parts); }))
      break;
  fn(0, n / parts);
  for (std::size_t p = started; p < parts; ++p) fn(n * p / parts, n * (p + 1) / parts);
}

char* page(const PagedView& v, std::int64_t id) {
  return reinterpret_cast<char*>(v.base) + id * v.block_stride;
}

void check_dense(const DenseView& v, std::int64_t batch, std::int64_t t0, std::int64_t len) {
  if (v.base == 0) bad("dense view: null base address");
  if (v.elem_bytes <= 0) bad("dense view: elem_bytes must be > 0");
  for (int d = 0; d < 4; ++d)
    if (v.shape[d] <= 0) bad("dense view: every dimension must be > 0");
  if (v.strides[3] != v.elem_bytes) bad("dense view: head_dim must be contiguous");
  // Rows must not overlap (an expanded or broadcast tensor has zero strides): a scatter into such
  // a view would write several tokens to one place.
  if (v.strides[2] < v.shape[3] * v.elem_bytes || v.strides[1] <= 0 || v.strides[0] < 0)
    bad("dense view: strides overlap (an expanded or broadcast tensor?)");
  if (batch < 0 || batch >= v.shape[0])
    bad("batch index " + std::to_string(batch) + " out of range [0, " + std::to_string(v.shape[0]) + ")");
  if (len <= 0 || t0 < 0 || t0 > v.shape[2] - len)
    bad("token range [" + std::to_string(t0) + ", " + std::to_string(t0 + len) +
        ") out of range [0, " + std::to_string(v.shape[2]) + ")");
}

template <bool Gather>
void dense_copy(const DenseView& v, std::int64_t batch, std::int64_t t0, std::int64_t len, char* seg) {
  const std::size_t row = static_cast<std::size_t>(v.shape[3] * v.elem_bytes);
  const bool rows_packed = v.strides[2] == static_cast<std::int64_t>(row);
  for (std::int64_t h = 0; h < v.shape[1]; ++h) {
    char* t = reinterpret_cast<char*>(v.base) + batch * v.strides[0] + h * v.strides[1] +
              t0 * v.strides[2];
    char* s = seg + static_cast<std::size_t>(h * len) * row;
    if (rows_packed) {  // one memcpy per head: the len rows are adjacent in the tensor too
      if (Gather) std::memcpy(s, t, row * len); else std::memcpy(t, s, row * len);
      continue;
    }
    for (std::int64_t r = 0; r < len; ++r, t += v.strides[2], s += row) {
      if (Gather) std::memcpy(s, t, row); else std::memcpy(t, s, row);
    }
  }
}

}  // namespace

void check_paged(const PagedView& v, const std::int64_t* ids, std::size_t n, bool unique) {
  check_view(v);
  check_ids(v, ids, n, unique);
}

void check_dense_range(const DenseView& v, std::int64_t batch, std::int64_t t0, std::int64_t len) {
  check_dense(v, batch, t0, len);
}

std::size_t paged_bytes(const PagedView& v, std::size_t n) {
  return n * static_cast<std::size_t>(v.page_bytes);
}

std::size_t dense_bytes(const DenseView& v, std::int64_t len) {
  return static_cast<std::size_t>(v.shape[1] * len * v.shape[3] * v.elem_bytes);
}

void gather_paged(const PagedView& v, const std::int64_t* ids, std::size_t n, void* dst,
                  std::size_t dst_bytes, unsigned threads) {
  check_view(v);
  check_ids(v, ids, n, false);
  if (dst_bytes < paged_bytes(v, n))
    bad("staging segment of " + std::to_string(dst_bytes) + " bytes is smaller than " +
        std::to_string(n) + " pages of " + std::to_string(v.page_bytes));
  char* d = static_cast<char*>(dst);
  const auto pb = static_cast<std::size_t>(v.page_bytes);
  parallel_for(n, threads, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo; i < hi; ++i) std::memcpy(d + i * pb, page(v, ids[i]), pb);
  });
}

void scatter_paged(const PagedView& v, const std::int64_t* ids, std::size_t n, const void* src,
                   std::size_t src_bytes, unsigned threads) {
  check_view(v);
  check_ids(v, ids, n, true);
  if (src_bytes < paged_bytes(v, n))
    bad("staging segment of " + std::to_string(src_bytes) + " bytes is smaller than " +
        std::to_string(n) + " pages of " + std::to_string(v.page_bytes));
  const char* s = static_cast<const char*>(src);
  const auto pb = static_cast<std::size_t>(v.page_bytes);
  parallel_for(n, threads, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo; i < hi; ++i) std::memcpy(page(v, ids[i]), s + i * pb, pb);
  });
}

void gather_dense(const DenseView& v, std::int64_t batch, std::int64_t t0, std::int64_t len,
                  void* dst, std::size_t dst_bytes) {
  check_dense(v, batch, t0, len);
  if (dst_bytes < dense_bytes(v, len)) bad("staging segment too small for the dense chunk");
  dense_copy<true>(v, batch, t0, len, static_cast<char*>(dst));
}

void scatter_dense(const DenseView& v, std::int64_t batch, std::int64_t t0, std::int64_t len,
                   const void* src, std::size_t src_bytes) {
  check_dense(v, batch, t0, len);
  if (src_bytes < dense_bytes(v, len)) bad("staging segment too small for the dense chunk");
  dense_copy<false>(v, batch, t0, len, const_cast<char*>(static_cast<const char*>(src)));
}

}  // namespace yrc::copy
