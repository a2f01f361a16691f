// SPDX-License-Identifier: Apache-2.0
#include "bindings/bindings.h"
#include "mem/host_buffer.h"

namespace yrc {

namespace {
constexpr std::int64_t kMaxHostBytes = std::int64_t{1} << 62;
}  // namespace

void bind_mem(py::module_& m) {
  py::class_<HostBuffer, std::shared_ptr<HostBuffer>>(m, "HostBuffer", py::buffer_protocol(),
                                                      "Page-aligned host memory (buffer protocol).")
      .def(py::init([](py::handle nbytes, bool huge_pages) {
             // Beyond 2**62 no mapping can succeed; the bound keeps the page rounding from wrapping.
             const auto n = static_cast<std::size_t>(int_arg(nbytes, "nbytes", 0, kMaxHostBytes));
             py::gil_scoped_release nogil;
             return std::make_shared<HostBuffer>(n, huge_pages);
           }),
           py::arg("nbytes"), py::kw_only(), py::arg("huge_pages").noconvert() = true,
           "huge_pages: MADV_HUGEPAGE when 2 MiB or more (for long-lived arenas; memory first "
           "touched on a latency path should not ask: THP defrag may compact on that touch)")
      .def_buffer([](HostBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.size())}, {1});
      })
      .def_property_readonly("address", [](const HostBuffer& b) {
        return reinterpret_cast<std::uintptr_t>(b.data());
      })
      .def_property_readonly("nbytes", &HostBuffer::size)
      .def("__len__", &HostBuffer::size);
}

}  // namespace yrc
