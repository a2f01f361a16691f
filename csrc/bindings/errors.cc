// SPDX-License-Identifier: Apache-2.0
// C++ exceptions -> Python: SysError becomes the OSError subclass its errno selects
// (FileNotFoundError, PermissionError, ...) with errno and filename set; the rest get their own types.
#include <cstring>
#include <string>

#include "bindings/bindings.h"
#include "common/error.h"

namespace yrc {

void register_errors(py::module_& m) {
  static py::exception<ClosedError> closed(m, "ClosedError", PyExc_RuntimeError);
  static py::exception<BackendUnavailable> unavailable(m, "BackendUnavailableError",
                                                       PyExc_RuntimeError);
  static py::exception<CudaError> cuda_error(m, "CudaError", PyExc_RuntimeError);
  static py::exception<CudaUnavailable> cuda_unavailable(m, "CudaUnavailableError",
                                                         PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const SysError& e) {
      std::string msg = std::string(std::strerror(e.err())) + " (" + e.what() + ")";
      py::object path = e.path().empty() ? py::none() : py::object(py::str(e.path()));
      py::tuple args = py::make_tuple(e.err(), msg, path);
      PyErr_SetObject(PyExc_OSError, args.ptr());
    } catch (const ClosedError& e) {
      PyErr_SetString(closed.ptr(), e.what());
    } catch (const BackendUnavailable& e) {
      PyErr_SetString(unavailable.ptr(), e.what());
    } catch (const CudaError& e) {
      // The CUDA error's name (cudaErrorInvalidValue...) as .name, for code that branches on it.
      py::object exc = py::reinterpret_borrow<py::object>(cuda_error.ptr())(e.what());
      exc.attr("name") = e.name();
      PyErr_SetObject(cuda_error.ptr(), exc.ptr());
    } catch (const CudaUnavailable& e) {
      PyErr_SetString(cuda_unavailable.ptr(), e.what());
    }
  });
}

std::pair<char*, std::size_t> buffer_span(py::handle obj, bool writable) {
  Py_buffer view;
  const int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(obj.ptr(), &view, flags) != 0) {
    PyErr_Clear();
    std::string tn = py::str(py::type::of(obj).attr("__name__"));
    throw py::type_error(std::string("expected a C-contiguous") + (writable ? " writable" : "") +
                         " buffer (bytearray, memoryview, numpy array, HostBuffer...), got " + tn);
  }
  auto span = std::make_pair(static_cast<char*>(view.buf), static_cast<std::size_t>(view.len));
  PyBuffer_Release(&view);
  return span;
}

std::int64_t int_arg(py::handle v, const char* name, std::int64_t lo, std::int64_t hi) {
  if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
    throw py::type_error(std::string(name) + " must be an int, got " +
                         std::string(py::str(py::type::of(v).attr("__name__"))));
  py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(v.ptr()));
  if (!i) throw py::error_already_set();
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow != 0 || x < lo || x > hi) throw_range(name, lo, hi, py::str(i));
  return x;
}

const std::string& path_arg(const std::string& path, const char* name) {
  if (path.find('\0') != std::string::npos)
    throw py::value_error(std::string(name) + ": embedded null byte");
  return path;
}

const std::vector<std::string>& path_args(const std::vector<std::string>& paths, const char* name) {
  for (const auto& p : paths) path_arg(p, name);
  return paths;
}

}  // namespace yrc
