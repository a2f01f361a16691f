// SPDX-License-Identifier: Apache-2.0
#include "bindings/bindings.h"
#include "mem/host_buffer.h"

namespace yrc {

void bind_mem(py::module_& m) {
  py::class_<HostBuffer, std::shared_ptr<HostBuffer>>(m, "HostBuffer", py::buffer_protocol(),
                                                      "Page-aligned host memory (buffer protocol).")
      .def(py::init([](std::size_t nbytes) {
             py::gil_scoped_release nogil;
             return std::make_shared<HostBuffer>(nbytes);
           }),
           py::arg("nbytes"))
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
