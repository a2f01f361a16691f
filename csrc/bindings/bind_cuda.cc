// SPDX-License-Identifier: Apache-2.0
// _C.cuda: the GPU copy engine (streams, events, gather/scatter, pinned registration) and
// _C.gds: the dlopen'ed cuFile driver. Device memory crosses as integer addresses, host staging
// as buffer-protocol objects, streams as integers (torch.cuda.Stream.cuda_stream).
#include <pybind11/stl.h>

#include <array>
#include <cstring>

#include "bindings/bindings.h"
#include "cuda/cuda_copy.h"
#include "io/cufile.h"
#include "mem/host_buffer.h"

namespace yrc {

namespace {

std::pair<const std::int64_t*, std::size_t> ids_of(py::handle ids) {
  py::buffer_info info = py::reinterpret_borrow<py::buffer>(ids).request();
  const bool int64 = info.format == "q" || info.format == "l" || info.format == "<q" ||
                     info.format == "=q";
  if (!int64 || info.itemsize != 8 || info.ndim != 1 || info.strides[0] != 8)
    throw py::type_error("block ids must be a contiguous 1-D int64 array (got format '" +
                         info.format + "')");
  return {static_cast<const std::int64_t*>(info.ptr), static_cast<std::size_t>(info.size)};
}

cuda::Method method_of(const std::string& s) {
  if (s == "staged") return cuda::Method::kStaged;
  if (s == "mapped") return cuda::Method::kMapped;
  if (s == "dma") return cuda::Method::kDma;
  throw py::value_error("method must be 'staged', 'mapped' or 'dma', got '" + s + "'");
}

const char* method_name(cuda::Method m) {
  switch (m) {
    case cuda::Method::kMapped: return "mapped";
    case cuda::Method::kDma: return "dma";
    default: return "staged";
  }
}

cuda::After after_of(std::uintptr_t stream, std::shared_ptr<cuda::Event> event) {
  return cuda::After{stream, std::move(event)};
}


}  // namespace

void bind_cuda(py::module_& m) {
  using cuda::Copier;
  using cuda::Event;
  m.def("require_device", &cuda::require_device, py::arg("device") = 0,
        "Device count; CudaUnavailableError (with the reason) when CUDA cannot run here.");
  m.def(
      "host_register",
      [](std::shared_ptr<HostBuffer> b, int device) {
        {
          py::gil_scoped_release nogil;
          cuda::host_register(b->data(), b->capacity(), device);
        }
        char* p = b->data();
        b->on_release([p] { cuda::host_unregister(p); });  // before munmap, never after
      },
      py::arg("buffer"), py::arg("device") = 0,
      "Pin a HostBuffer with cudaHostRegister (portable, mapped) until it is freed.");
  m.def(
      "host_register_range",
      [](std::uintptr_t p, std::size_t n, int device) {
        cuda::host_register(reinterpret_cast<void*>(p), n, device);
      },
      py::arg("address"), py::arg("nbytes"), py::arg("device") = 0,
      "cudaHostRegister of a raw range (tests); pair with host_unregister_range.");
  m.def("host_unregister_range",
        [](std::uintptr_t p) { cuda::host_unregister(reinterpret_cast<void*>(p)); });
  m.def(
      "memcpy",
      [](std::uintptr_t dst, std::uintptr_t src, std::size_t n, int kind, std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::memcpy_sync(dst, src, n, kind, stream);
      },
      py::arg("dst"), py::arg("src"), py::arg("nbytes"), py::arg("kind"), py::arg("stream") = 0,
      "One cudaMemcpyAsync (kind 0 H2D, 1 D2H, 2 D2D) and a stream synchronize.");

  py::class_<Event, std::shared_ptr<Event>>(m, "Event", "A copy's completion (pooled CUDA event).")
      .def("synchronize", &Event::synchronize, py::call_guard<py::gil_scoped_release>())
      .def("query", &Event::query)
      .def("wait_on", &Event::wait_on, py::arg("stream"),
           "Make the stream's later work wait for this copy (no host wait).")
      .def_property_readonly("device", &Event::device)
      .def_property_readonly(
          "handle", [](const Event& e) { return reinterpret_cast<std::uintptr_t>(e.raw()); },
          "The cudaEvent_t as an integer (valid while this Event lives), for interop.");

  py::class_<Copier>(m, "Copier", "Copy streams, events and kernels of one device.")
      .def(py::init([](int device, std::size_t staging_bytes, const std::string& method) {
             cuda::CopierOptions o;
             o.staging_bytes = staging_bytes;
             o.method = method_of(method);
             py::gil_scoped_release nogil;
             return std::make_unique<Copier>(device, o);
           }),
           py::arg("device") = 0, py::arg("staging_bytes") = 16u << 20,
           py::arg("method") = "staged")
      .def_property_readonly("device", &Copier::device)
      .def_property(
          "method", [](const Copier& c) { return method_name(c.method()); },
          [](Copier& c, const std::string& s) { c.set_method(method_of(s)); })
      .def_property_readonly("offload_stream", &Copier::offload_stream)
      .def_property_readonly("load_stream", &Copier::load_stream)
      .def("record", &Copier::record, py::arg("stream"))
      .def(
          "gather_paged",
          [](Copier& c, std::uintptr_t base, std::int64_t nb, std::int64_t page, std::int64_t stride,
             py::handle ids, py::handle dst, std::uintptr_t after_stream,
             std::shared_ptr<Event> after_event) {
            auto [p, n] = ids_of(ids);
            auto [d, dn] = buffer_span(dst, true);
            copy::PagedView v{base, nb, page, stride};
            auto a = after_of(after_stream, std::move(after_event));
            py::gil_scoped_release nogil;
            return c.gather_paged(v, p, n, d, dn, a);
          },
          py::arg("base"), py::arg("num_blocks"), py::arg("page_bytes"), py::arg("block_stride"),
          py::arg("ids"), py::arg("dst"), py::arg("after_stream") = 0,
          py::arg("after_event") = nullptr)
      .def(
          "scatter_paged",
          [](Copier& c, std::uintptr_t base, std::int64_t nb, std::int64_t page, std::int64_t stride,
             py::handle ids, py::handle src, std::uintptr_t after_stream,
             std::shared_ptr<Event> after_event, std::uintptr_t signal) {
            auto [p, n] = ids_of(ids);
            auto [s, sn] = buffer_span(src, false);
            copy::PagedView v{base, nb, page, stride};
            auto a = after_of(after_stream, std::move(after_event));
            py::gil_scoped_release nogil;
            return c.scatter_paged(v, p, n, s, sn, a, signal);
          },
          py::arg("base"), py::arg("num_blocks"), py::arg("page_bytes"), py::arg("block_stride"),
          py::arg("ids"), py::arg("src"), py::arg("after_stream") = 0,
          py::arg("after_event") = nullptr, py::arg("signal") = 0)
      .def(
          "gather_dense",
          [](Copier& c, std::uintptr_t base, std::array<std::int64_t, 4> shape,
             std::array<std::int64_t, 4> strides, std::int64_t es, std::int64_t batch,
             std::int64_t t0, std::int64_t len, py::handle dst, std::uintptr_t after_stream,
             std::shared_ptr<Event> after_event) {
            auto [d, dn] = buffer_span(dst, true);
            auto v = copy::make_dense(base, shape.data(), strides.data(), es);
            auto a = after_of(after_stream, std::move(after_event));
            py::gil_scoped_release nogil;
            return c.gather_dense(v, batch, t0, len, d, dn, a);
          },
          py::arg("base"), py::arg("shape"), py::arg("strides"), py::arg("elem_bytes"),
          py::arg("batch"), py::arg("t0"), py::arg("len"), py::arg("dst"),
          py::arg("after_stream") = 0, py::arg("after_event") = nullptr)
      .def(
          "scatter_dense",
          [](Copier& c, std::uintptr_t base, std::array<std::int64_t, 4> shape,
             std::array<std::int64_t, 4> strides, std::int64_t es, std::int64_t batch,
             std::int64_t t0, std::int64_t len, py::handle src, std::uintptr_t after_stream,
             std::shared_ptr<Event> after_event, std::uintptr_t signal) {
            auto [s, sn] = buffer_span(src, false);
            auto v = copy::make_dense(base, shape.data(), strides.data(), es);
            auto a = after_of(after_stream, std::move(after_event));
            py::gil_scoped_release nogil;
            return c.scatter_dense(v, batch, t0, len, s, sn, a, signal);
          },
          py::arg("base"), py::arg("shape"), py::arg("strides"), py::arg("elem_bytes"),
          py::arg("batch"), py::arg("t0"), py::arg("len"), py::arg("src"),
          py::arg("after_stream") = 0, py::arg("after_event") = nullptr, py::arg("signal") = 0);
}

void bind_gds(py::module_& m) {
  using gds::Driver;
  auto status = [](const gds::Status& s) {
    py::dict d;
    d["ok"] = s.ok;
    d["library"] = s.library;
    d["reason"] = s.reason;
    d["version"] = s.version;
    return d;
  };
  m.def(
      "open",
      [status](const std::vector<std::string>& candidates) {
        path_args(candidates, "candidates");
        const gds::Status* s;
        {
          py::gil_scoped_release nogil;
          s = &Driver::instance().open(candidates);
        }
        return status(*s);
      },
      py::arg("candidates"),
      "dlopen libcufile (first loadable candidate) and cuFileDriverOpen, once per process.");
  m.def("status", [status] { return status(Driver::instance().status()); });
  m.def(
      "buf_register",
      [](std::uintptr_t p, std::size_t n) {
        Driver::instance().buf_register(reinterpret_cast<void*>(p), n);
      },
      py::arg("address"), py::arg("nbytes"));
  m.def("buf_deregister", [](std::uintptr_t p) {
    Driver::instance().buf_deregister(reinterpret_cast<void*>(p));
  });
  py::class_<Driver::File>(m, "File", "A file descriptor registered with cuFile.")
      .def(py::init([](int fd) { return std::make_unique<Driver::File>(Driver::instance(), fd); }),
           py::arg("fd"))
      .def(
          "read",
          [](Driver::File& f, std::uintptr_t dev, std::size_t n, std::int64_t off) {
            py::gil_scoped_release nogil;
            return f.read(reinterpret_cast<void*>(dev), n, off);
          },
          py::arg("address"), py::arg("nbytes"), py::arg("offset"))
      .def(
          "write",
          [](Driver::File& f, std::uintptr_t dev, std::size_t n, std::int64_t off) {
            py::gil_scoped_release nogil;
            return f.write(reinterpret_cast<const void*>(dev), n, off);
          },
          py::arg("address"), py::arg("nbytes"), py::arg("offset"));
}

}  // namespace yrc
