// SPDX-License-Identifier: Apache-2.0
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "runtime/completion.h"

namespace yrc {

void bind_runtime(py::module_& m) {
  using release = py::call_guard<py::gil_scoped_release>;
  py::class_<Completion, std::shared_ptr<Completion>>(m, "Completion")
      .def_property_readonly("id", &Completion::id)
      .def("done", &Completion::done)
      .def("wait", &Completion::wait, py::arg("timeout") = -1.0, release(),
           "Block (GIL released) up to timeout seconds (< 0: forever); True when done.")
      .def("result", &Completion::result, "Bytes transferred (>= 0) or -errno; valid once done().")
      .def("cancel", &Completion::cancel, release());
  py::class_<CompletionQueue, std::shared_ptr<CompletionQueue>>(m, "CompletionQueue")
      .def("pop", &CompletionQueue::pop, py::arg("timeout") = -1.0, release(),
           "Ids of completed operations; blocks (GIL released) up to timeout seconds.")
      .def("wake", &CompletionQueue::wake)
      .def_property_readonly("eventfd", &CompletionQueue::eventfd);
}

}  // namespace yrc
