// SPDX-License-Identifier: Apache-2.0
#pragma once
#include <pybind11/pybind11.h>

#include <cstddef>
#include <utility>

namespace yrc {
namespace py = pybind11;

void register_errors(py::module_& m);
void bind_runtime(py::module_& m);
void bind_mem(py::module_& m);
void bind_io(py::module_& m);
void bind_store(py::module_& m);
void bind_copy(py::module_& m);
void bind_cuda(py::module_& m);
void bind_gds(py::module_& m);

// Pointer and length of a C-contiguous buffer-protocol object. The caller (Python) keeps the object
// alive, and pinned through a memoryview, until the operation completes.
std::pair<char*, std::size_t> buffer_span(py::handle obj, bool writable);

}  // namespace yrc
