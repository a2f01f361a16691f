// SPDX-License-Identifier: Apache-2.0
// yrcache._C: one extension, one submodule per concern. Torch-free: buffers cross as
// buffer-protocol objects, so one build serves any torch version.
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "build_config.h"
#include "cuda/cuda_info.h"
#include "store/checksum.h"

namespace yrc {
namespace {

py::dict build_info() {
  py::dict d;
  d["version"] = YRCACHE_VERSION;
  d["build_type"] = YRCACHE_BUILD_TYPE;
  d["compiler"] = YRCACHE_COMPILER;
#ifdef YRCACHE_HAVE_LIBURING
  d["liburing"] = YRCACHE_LIBURING_VERSION;
#else
  d["liburing"] = py::none();
#endif
  CudaInfo c = cuda_info();
  py::dict cuda;
  cuda["compiled"] = c.compiled;
  cuda["toolkit"] = c.compiled ? py::object(py::str(c.toolkit)) : py::none();
  cuda["archs"] = c.compiled ? py::object(py::str(c.archs)) : py::none();
  cuda["runtime_version"] = c.runtime_version;
  cuda["driver_version"] = c.driver_version;
  cuda["device_count"] = c.device_count;
  cuda["status"] = c.status;
  d["cuda"] = cuda;
  d["cufile"] = "dlopen at run time (yrcache.cuda.gds)";
  py::list backends;
  backends.append("psync");
#ifdef YRCACHE_HAVE_LIBURING
  backends.append("uring");
#endif
  d["backends"] = backends;
  d["checksum"] = yrc::store::checksum_impl();
  return d;
}

}  // namespace
}  // namespace yrc

PYBIND11_MODULE(_C, m) {
  m.doc() = "yrcache native extension (I/O engines, buffers, completions)";
  yrc::register_errors(m);
  auto runtime = m.def_submodule("runtime", "completions and their queue");
  yrc::bind_runtime(runtime);
  auto mem = m.def_submodule("mem", "page-aligned host buffers");
  yrc::bind_mem(mem);
  auto io = m.def_submodule("io", "file I/O engines");
  yrc::bind_io(io);
  auto store = m.def_submodule("store", "object format, checksums, batched existence checks");
  yrc::bind_store(store);
  auto copy = m.def_submodule("copy", "gather/scatter of KV between engine memory and staging");
  yrc::bind_copy(copy);
  auto cuda = m.def_submodule("cuda", "GPU copy engine: streams, events, gather/scatter, pinning");
  yrc::bind_cuda(cuda);
  auto gds = m.def_submodule("gds", "GPUDirect Storage (libcufile, loaded at run time)");
  yrc::bind_gds(gds);
  m.def("build_info", &yrc::build_info, "What was compiled into this extension.");
}
