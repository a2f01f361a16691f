// SPDX-License-Identifier: Apache-2.0
// Gather/scatter of one layer's KV between an engine's memory and a contiguous staging segment.
// This is the CPU implementation (memcpy), the bit-exact reference for the CUDA one that the GPU
// issue adds with the same arguments plus a stream. Addresses cross as integers (tensors' data
// pointers; the Python layer checks dtype/device/contiguity with torch and keeps them alive), and
// everything is bound-checked here again: a bad block id must not become a wild memcpy.
#pragma once
#include <cstddef>
#include <cstdint>

namespace yrc::copy {

// vLLM-style paged KV of one layer: num_blocks pages; page i starts at base + i * block_stride and
// its first page_bytes bytes are copied (a page is opaque: K/V packing differs between backends).
struct PagedView {
  std::uintptr_t base = 0;
  std::int64_t num_blocks = 0;
  std::int64_t page_bytes = 0;
  std::int64_t block_stride = 0;  // bytes between block starts (>= page_bytes)
};

// Hugging Face-style dense K (or V) of one layer: [batch, heads, seq, head_dim] with byte strides;
// the innermost dimension must be contiguous (stride == elem_bytes). A chunk is the seq range
// [t0, t0 + len) of one batch row; in the segment it is laid out head-major: for each head, len
// rows of head_dim elements.
struct DenseView {
  std::uintptr_t base = 0;
  std::int64_t shape[4] = {0, 0, 0, 0};
  std::int64_t strides[4] = {0, 0, 0, 0};  // bytes
  std::int64_t elem_bytes = 0;
};

// The argument checks every implementation (CPU here, CUDA in csrc/cuda) runs before touching
// memory; std::invalid_argument (ValueError) on a bad view, id or token range.
void check_paged(const PagedView& v, const std::int64_t* ids, std::size_t n, bool unique);
void check_dense_range(const DenseView& v, std::int64_t batch, std::int64_t t0, std::int64_t len);

inline DenseView make_dense(std::uintptr_t base, const std::int64_t* shape,
                            const std::int64_t* strides, std::int64_t elem_bytes) {
  DenseView v;
  v.base = base;
  for (int d = 0; d < 4; ++d) v.shape[d] = shape[d], v.strides[d] = strides[d];
  v.elem_bytes = elem_bytes;
  return v;
}

// Segment bytes of n pages / of a dense chunk of len tokens.
std::size_t paged_bytes(const PagedView& v, std::size_t n);
std::size_t dense_bytes(const DenseView& v, std::int64_t len);

// dst[i * page_bytes, +page_bytes) = page ids[i]. Throws std::invalid_argument (id out of range,
// dst too small, bad view). threads > 1 splits the pages over that many threads; 0 or 1 copies in
// the calling thread (the default: on a small machine the model's threads own the cores).
void gather_paged(const PagedView& v, const std::int64_t* ids, std::size_t n, void* dst,
                  std::size_t dst_bytes, unsigned threads);
// The inverse. Also refuses a block id given twice (two sources for one destination page).
void scatter_paged(const PagedView& v, const std::int64_t* ids, std::size_t n, const void* src,
                   std::size_t src_bytes, unsigned threads);

void gather_dense(const DenseView& v, std::int64_t batch, std::int64_t t0, std::int64_t len,
                  void* dst, std::size_t dst_bytes);
void scatter_dense(const DenseView& v, std::int64_t batch, std::int64_t t0, std::int64_t len,
                   const void* src, std::size_t src_bytes);

}  // namespace yrc::copy
