// SPDX-License-Identifier: Apache-2.0
#pragma once
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

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

// An integer argument checked against [lo, hi] before it reaches a C++ integer type (a plain
// `unsigned` parameter would turn -1 or 2**64 into an opaque "incompatible arguments" TypeError,
// and an int64 into "Unable to cast"). TypeError for anything without __index__ and for bool;
// ValueError naming the argument and the range otherwise.
std::int64_t int_arg(py::handle v, const char* name, std::int64_t lo, std::int64_t hi);

// A path (or a string that becomes one, e.g. a dlopen name) on its way to the C library: an
// embedded NUL would silently cut it short there, so it raises ValueError, as Python's open does.
const std::string& path_arg(const std::string& path, const char* name = "path");
const std::vector<std::string>& path_args(const std::vector<std::string>& paths, const char* name);

}  // namespace yrc
