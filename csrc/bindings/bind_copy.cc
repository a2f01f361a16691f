// SPDX-License-Identifier: Apache-2.0
// _C.copy: gather/scatter of one layer between engine memory (addresses as integers) and a staging
// buffer (buffer protocol). Block ids come as one int64 buffer: never a Python loop per block.
#include <pybind11/stl.h>

#include <array>
#include <cstring>

#include "bindings/bindings.h"
#include "common/thread_group.h"
#include "copy/copy.h"

namespace yrc {

namespace {

// An int64 id array from a buffer (numpy int64, array('q'), bytes of little-endian int64...).
std::pair<const std::int64_t*, std::size_t> id_span(py::handle ids) {
  py::buffer_info info = py::reinterpret_borrow<py::buffer>(ids).request();
  if (info.itemsize != 8 || (info.format != "q" && info.format != "l" && info.format != "<q" &&
                             info.format != "=q" && info.format != "B"))
    throw py::type_error("block ids must be an int64 array (got format '" + info.format + "')");
  if (info.ndim > 1) throw py::value_error("block ids must be one-dimensional");
  if (info.ndim == 1 && info.strides[0] != 8) throw py::value_error("block ids must be contiguous");
  if (reinterpret_cast<std::uintptr_t>(info.ptr) % alignof(std::int64_t) != 0)
    throw py::value_error("block ids must be 8-byte aligned");
  return {static_cast<const std::int64_t*>(info.ptr), static_cast<std::size_t>(info.size)};
}

copy::PagedView paged(std::uintptr_t base, std::int64_t num_blocks, std::int64_t page_bytes,
                      std::int64_t block_stride) {
  return copy::PagedView{base, num_blocks, page_bytes, block_stride};
}

unsigned threads_arg(py::handle threads) {
  return static_cast<unsigned>(int_arg(threads, "threads", 0, kMaxThreads));
}

}  // namespace

void bind_copy(py::module_& m) {
  m.def(
      "gather_paged",
      [](std::uintptr_t base, std::int64_t num_blocks, std::int64_t page_bytes,
         std::int64_t block_stride, py::handle ids, py::handle dst, py::handle threads_obj) {
        const auto threads = threads_arg(threads_obj);
        auto [p, n] = id_span(ids);
        auto [d, dn] = buffer_span(dst, true);
        auto v = paged(base, num_blocks, page_bytes, block_stride);
        py::gil_scoped_release nogil;
        copy::gather_paged(v, p, n, d, dn, threads);
      },
      py::arg("base"), py::arg("num_blocks"), py::arg("page_bytes"), py::arg("block_stride"),
      py::arg("ids"), py::arg("dst"), py::arg("threads") = 0,
      "dst[i*page_bytes:] = page ids[i] of the layer at `base`; ValueError for bad ids/sizes.");
  m.def(
      "scatter_paged",
      [](std::uintptr_t base, std::int64_t num_blocks, std::int64_t page_bytes,
         std::int64_t block_stride, py::handle ids, py::handle src, py::handle threads_obj) {
        const auto threads = threads_arg(threads_obj);
        auto [p, n] = id_span(ids);
        auto [s, sn] = buffer_span(src, false);
        auto v = paged(base, num_blocks, page_bytes, block_stride);
        py::gil_scoped_release nogil;
        copy::scatter_paged(v, p, n, s, sn, threads);
      },
      py::arg("base"), py::arg("num_blocks"), py::arg("page_bytes"), py::arg("block_stride"),
      py::arg("ids"), py::arg("src"), py::arg("threads") = 0,
      "page ids[i] = src[i*page_bytes:]; ValueError for bad or repeated ids, short src.");
  m.def(
      "gather_dense",
      [](std::uintptr_t base, std::array<std::int64_t, 4> shape, std::array<std::int64_t, 4> strides,
         std::int64_t elem_bytes, std::int64_t batch, std::int64_t t0, std::int64_t len,
         py::handle dst) {
        auto [d, dn] = buffer_span(dst, true);
        auto v = copy::make_dense(base, shape.data(), strides.data(), elem_bytes);
        py::gil_scoped_release nogil;
        copy::gather_dense(v, batch, t0, len, d, dn);
      },
      py::arg("base"), py::arg("shape"), py::arg("strides"), py::arg("elem_bytes"),
      py::arg("batch"), py::arg("t0"), py::arg("len"), py::arg("dst"),
      "Tokens [t0, t0+len) of one batch row of a [batch, heads, seq, head_dim] tensor into dst, "
      "head-major.");
  m.def(
      "scatter_dense",
      [](std::uintptr_t base, std::array<std::int64_t, 4> shape, std::array<std::int64_t, 4> strides,
         std::int64_t elem_bytes, std::int64_t batch, std::int64_t t0, std::int64_t len,
         py::handle src) {
        auto [s, sn] = buffer_span(src, false);
        auto v = copy::make_dense(base, shape.data(), strides.data(), elem_bytes);
        py::gil_scoped_release nogil;
        copy::scatter_dense(v, batch, t0, len, s, sn);
      },
      py::arg("base"), py::arg("shape"), py::arg("strides"), py::arg("elem_bytes"),
      py::arg("batch"), py::arg("t0"), py::arg("len"), py::arg("src"));
}

}  // namespace yrc
