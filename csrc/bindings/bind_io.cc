// SPDX-License-Identifier: Apache-2.0
#include <pybind11/stl.h>

#include <fcntl.h>
#include <sys/vfs.h>

#include <algorithm>
#include <climits>

#include "bindings/bindings.h"
#include "common/align.h"
#include "common/error.h"
#include "common/thread_group.h"
#include "io/direct_io.h"
#include "io/io_engine.h"

namespace yrc {

namespace {

// Extents from a Python list of (File, buffer, offset).
std::vector<Extent> to_extents(const py::list& items, bool writable) {
  std::vector<Extent> out;
  out.reserve(items.size());
  for (py::handle h : items) {
    if (!py::isinstance<py::tuple>(h) || py::len(h) != 3)
      throw py::type_error("extent must be a (file, buffer, offset) tuple");
    auto t = py::reinterpret_borrow<py::tuple>(h);
    if (!py::isinstance<FileHandle>(t[0])) throw py::type_error("extent file must be a File");
    auto file = t[0].cast<std::shared_ptr<FileHandle>>();
    const auto off = static_cast<std::uint64_t>(int_arg(t[2], "offset", 0, kMaxIoBytes));
    auto [ptr, len] = buffer_span(t[1], writable);
    out.push_back(Extent{std::move(file), ptr, len, off});
  }
  return out;
}

// open(2) flags and permission bits. Anything above 0o777 (setuid, setgid, sticky), or a negative
// mode that the kernel would read as all of them, is refused.
int flags_arg(py::handle flags) { return static_cast<int>(int_arg(flags, "flags", 0, INT_MAX)); }
int perm_arg(py::handle mode) { return static_cast<int>(int_arg(mode, "mode", 0, 0777)); }

// A directory descriptor to resolve beneath: an fd or AT_FDCWD. Other negative values are refused:
// kNoDir would silently drop the confinement.
int dir_fd_arg(py::handle dirfd) {
  const auto fd = static_cast<int>(int_arg(dirfd, "dir_fd", INT_MIN, INT_MAX));
  if (fd < 0 && fd != AT_FDCWD)
    throw py::value_error("dir_fd must be an open directory descriptor or AT_FDCWD, got " +
                          std::to_string(fd));
  return fd;
}

std::shared_ptr<FileHandle> open_file(int dirfd, const std::string& path, py::handle flags,
                                      py::handle mode, bool direct) {
  path_arg(path);
  const int fl = flags_arg(flags), md = perm_arg(mode);
  py::gil_scoped_release nogil;
  return FileHandle::open_at(dirfd, path, fl, md, direct);
}

py::dict stats_dict(const EngineStats& s) {
  py::dict d;
  d["ops"] = s.ops;
  d["tasks"] = s.tasks;
  d["bytes_read"] = s.bytes_read;
  d["bytes_written"] = s.bytes_written;
  d["short_transfers"] = s.short_transfers;
  d["retries"] = s.retries;
  d["direct_fallbacks"] = s.direct_fallbacks;
  d["bounced"] = s.bounced;
  d["fixed_buffer_ios"] = s.fixed_buffer_ios;
  d["errors"] = s.errors;
  d["cancelled"] = s.cancelled;
  d["reads_ahead"] = s.reads_ahead;
  return d;
}

}  // namespace

void bind_io(py::module_& m) {
  using release = py::call_guard<py::gil_scoped_release>;
  m.attr("MAX_THREADS") = kMaxThreads;
  m.attr("MAX_QUEUE_DEPTH") = kMaxQueueDepth;
  m.attr("MAX_CHUNK_BYTES") = kMaxChunkBytes;
  m.attr("MAX_IO_BYTES") = kMaxIoBytes;

  py::class_<FileHandle, std::shared_ptr<FileHandle>>(m, "File")
      .def_static(
          "open",
          [](const std::string& path, py::handle flags, py::handle mode, bool direct) {
            return open_file(kNoDir, path, flags, mode, direct);
          },
          py::arg("path"), py::arg("flags"), py::arg("mode"), py::arg("direct"))
      .def_static(
          "open_at",
          [](py::handle dirfd, const std::string& path, py::handle flags, py::handle mode,
             bool direct) { return open_file(dir_fd_arg(dirfd), path, flags, mode, direct); },
          py::arg("dirfd"), py::arg("path"), py::arg("flags"), py::arg("mode"), py::arg("direct"))
      .def_property_readonly("path", &FileHandle::path)
      .def_property_readonly("direct", &FileHandle::direct)
      .def_property_readonly("direct_reason", &FileHandle::direct_reason)
      .def_property_readonly("closed", &FileHandle::closed)
      .def("fileno", &FileHandle::fileno, "The buffered descriptor; -1 once closed.")
      .def("close", &FileHandle::close);

  m.def(
      "open_beneath",
      [](py::handle dirfd_obj, const std::string& path, py::handle flags_obj, py::handle mode_obj) {
        const int dirfd = dir_fd_arg(dirfd_obj), flags = flags_arg(flags_obj);
        const int mode = perm_arg(mode_obj);
        path_arg(path);
        int fd;
        {
          py::gil_scoped_release nogil;
          fd = open_beneath(dirfd, path, flags, mode);
        }
        if (fd < 0) throw_errno(errno, "openat2", path);
        return fd;
      },
      py::arg("dirfd"), py::arg("path"), py::arg("flags"), py::arg("mode") = 0,
      "openat2(dirfd, path) with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS; returns a new fd (caller "
      "closes). OSError with errno on failure (ELOOP/EXDEV for a symlink or an escape).");

  py::class_<IoEngine, std::shared_ptr<IoEngine>>(m, "Engine")
      .def(py::init([](const std::string& backend, py::handle queue_depth, py::handle chunk_bytes,
                       py::handle max_inflight_bytes, py::handle threads, bool register_buffers,
                       py::handle reads_per_file) {
             EngineOptions o;
             o.backend = backend;
             o.queue_depth =
                 static_cast<unsigned>(int_arg(queue_depth, "queue_depth", 1, kMaxQueueDepth));
             o.chunk_bytes = static_cast<std::size_t>(
                 int_arg(chunk_bytes, "chunk_bytes", kDirectAlign, kMaxChunkBytes));
             o.max_inflight_bytes = static_cast<std::size_t>(
                 int_arg(max_inflight_bytes, "max_inflight_bytes", kDirectAlign, kMaxIoBytes));
             o.threads = static_cast<unsigned>(int_arg(threads, "threads", 0, kMaxThreads));
             o.register_buffers = register_buffers;
             o.reads_per_file = static_cast<unsigned>(
                 int_arg(reads_per_file, "reads_per_file", 0, kMaxQueueDepth));
             std::string reason;
             std::shared_ptr<IoEngine> e;
             {
               py::gil_scoped_release nogil;
               e = IoEngine::create(o, &reason);
             }
             if (!reason.empty()) e->set_fallback_reason(reason);
             return e;
           }),
           py::arg("backend"), py::arg("queue_depth"), py::arg("chunk_bytes"),
           py::arg("max_inflight_bytes"), py::arg("threads"), py::arg("register_buffers"),
           py::arg("reads_per_file"))
      .def_property_readonly("backend", &IoEngine::name)
      .def_property_readonly("fallback_reason", &IoEngine::fallback_reason)
      .def_property_readonly("queue_depth", [](const IoEngine& e) { return e.options().queue_depth; })
      .def_property_readonly("chunk_bytes", [](const IoEngine& e) { return e.options().chunk_bytes; })
      .def_property_readonly("max_inflight_bytes",
                             [](const IoEngine& e) { return e.options().max_inflight_bytes; })
      .def_property_readonly("completions", &IoEngine::completions)
      .def("rw",
           [](IoEngine& e, std::uint64_t id, bool write, const py::list& items) {
             auto ex = to_extents(items, !write);
             py::gil_scoped_release nogil;
             return e.submit(id, write ? OpCode::Write : OpCode::Read, std::move(ex));
           },
           py::arg("id"), py::arg("write"), py::arg("extents"))
      .def("fsync",
           [](IoEngine& e, std::uint64_t id, std::shared_ptr<FileHandle> f, bool datasync) {
             std::vector<Extent> ex{Extent{std::move(f), nullptr, 0, 0}};
             return e.submit(id, datasync ? OpCode::Fdatasync : OpCode::Fsync, std::move(ex));
           },
           py::arg("id"), py::arg("file"), py::arg("datasync"), release())
      .def("fallocate",
           [](IoEngine& e, std::uint64_t id, std::shared_ptr<FileHandle> f, py::handle mode,
              py::handle offset, py::handle length) {
             const auto md = int_arg(mode, "mode", 0, INT_MAX);
             const auto off = static_cast<std::uint64_t>(int_arg(offset, "offset", 0, kMaxIoBytes));
             const auto len = static_cast<std::size_t>(int_arg(length, "length", 1, kMaxIoBytes));
             std::vector<Extent> ex{Extent{std::move(f), nullptr, len, off}};
             py::gil_scoped_release nogil;
             return e.submit(id, OpCode::Fallocate, std::move(ex), md);
           },
           py::arg("id"), py::arg("file"), py::arg("mode"), py::arg("offset"), py::arg("length"))
      .def("register_buffer", &IoEngine::register_buffer, py::arg("buffer"), release())
      .def_property_readonly("registered_buffers", &IoEngine::registered_buffers)
      .def("set_faults", [](IoEngine& e, const std::string& spec) { e.faults().set(spec); })
      .def_property_readonly("fault_spec", [](IoEngine& e) { return e.faults().spec(); })
      .def("stats", [](const IoEngine& e) { return stats_dict(e.stats()); })
      .def("take_notices", &IoEngine::take_notices)
      .def("inflight", &IoEngine::inflight)
      .def("close", &IoEngine::close, py::arg("cancel_pending") = false, release())
      .def_property_readonly("closed", &IoEngine::closed);

  m.def("split_request",
        [](std::uintptr_t buf, py::handle offset_obj, py::handle len_obj, py::handle chunk_obj,
           py::handle align_obj, bool direct) {
          // The engine's own bounds: beyond them offset + length wraps and the piece list grows
          // without limit.
          const auto offset = static_cast<std::uint64_t>(int_arg(offset_obj, "offset", 0, kMaxIoBytes));
          const auto len = static_cast<std::size_t>(int_arg(len_obj, "length", 0, kMaxIoBytes));
          const auto chunk = static_cast<std::size_t>(int_arg(chunk_obj, "chunk", 0, kMaxChunkBytes));
          const auto align = static_cast<std::size_t>(int_arg(align_obj, "align", 1, kMaxChunkBytes));
          YR_CHECK_ARG((align & (align - 1)) == 0, "align must be a power of two");
          YR_CHECK_ARG(len / std::max(chunk, align) <= (std::size_t{1} << 24),
                       "length / chunk must be at most 2**24 pieces");
          py::list out;
          for (const Piece& p : split_request(buf, offset, len, chunk, align, direct))
            out.append(py::make_tuple(p.offset, p.len, p.buf_off, p.direct, p.bounce));
          return out;
        },
        py::arg("buf"), py::arg("offset"), py::arg("length"), py::arg("chunk"), py::arg("align"),
        py::arg("direct"), "The alignment splitter (exposed for tests): (offset, len, buf_off, direct, bounce).");
  m.def("probe_uring", [] {
    std::string reason;
    bool ok = probe_uring(&reason);
    return py::make_tuple(ok, reason);
  });
  m.def("probe_odirect", [](const std::string& dir) {
    path_arg(dir, "dir");
    std::string reason;
    bool ok;
    {
      py::gil_scoped_release nogil;
      ok = probe_odirect(dir, &reason);
    }
    return py::make_tuple(ok, reason);
  });
  m.def(
      "fs_magic",
      [](int fd) {
        struct statfs st {};
        if (::fstatfs(fd, &st) != 0) throw_errno(errno, "fstatfs");
        return static_cast<int64_t>(st.f_type);
      },
      py::arg("fd"), "The file system type (statfs f_type magic) holding descriptor fd.");
}

}  // namespace yrc
