// SPDX-License-Identifier: Apache-2.0
// _C.store: the object format's hot path (header encode/parse, segment checksums) and batched
// existence checks and touches. Policy (what to do with a bad object) stays in Python
// (yrcache/store/reader.py).
#include <pybind11/stl.h>

#include <cstring>

#include "bindings/bindings.h"
#include "common/error.h"
#include "common/thread_group.h"
#include "store/checksum.h"
#include "store/format.h"
#include "store/paths.h"
#include "store/stat_batch.h"

namespace yrc {

namespace {

using store::Digest;
using store::Header;

Digest to_digest(const py::bytes& b, const char* what) {
  std::string s = b;
  if (s.size() != 16) throw py::value_error(std::string(what) + " must be 16 bytes");
  Digest d;
  std::memcpy(d.data(), s.data(), 16);
  return d;
}

py::bytes from_digest(const Digest& d) {
  return py::bytes(reinterpret_cast<const char*>(d.data()), d.size());
}

// Python-side format errors (a ValueError subclass in yrcache/store/format.py) are too far away,
// so parse returns (header | None, reason, need) and the caller decides.
py::tuple parse_py(py::handle buf) {
  auto [ptr, len] = buffer_span(buf, false);
  auto h = std::make_unique<Header>();
  std::string why;
  std::size_t need = 0;
  store::ParseStatus st;
  {
    py::gil_scoped_release nogil;
    st = store::parse(reinterpret_cast<const std::uint8_t*>(ptr), len, h.get(), &why, &need);
  }
  if (st == store::ParseStatus::kOk) return py::make_tuple(py::cast(std::move(h)), "", 0);
  if (st == store::ParseStatus::kNeedMore) return py::make_tuple(py::none(), "need more", need);
  return py::make_tuple(py::none(), why, 0);
}

}  // namespace

void bind_store(py::module_& m) {
  m.attr("MAGIC") = py::bytes(store::kMagic, 8);
  m.attr("FORMAT_VERSION") = store::kFormatVersion;
  m.attr("ALIGN") = store::kAlign;
  m.attr("FLAG_MAC") = store::kFlagMac;
  m.attr("CHECKSUM_IMPL") = store::checksum_impl();
  m.attr("MAC_OFFSET") = store::off::header_mac;
  m.attr("MAC_LEN") = store::off::mac_len;
  m.attr("HEADER_CHECKSUM_OFFSET") = store::off::header_checksum;

  m.def(
      "checksum",
      [](py::handle buf) {
        auto [ptr, len] = buffer_span(buf, false);
        py::gil_scoped_release nogil;
        return store::checksum(ptr, len);
      },
      py::arg("buffer"), "XXH3-64 of a buffer (the segment checksum), GIL released.");
  m.def(
      "checksums",
      [](const py::list& bufs) {
        std::vector<std::pair<char*, std::size_t>> spans;
        for (py::handle b : bufs) spans.push_back(buffer_span(b, false));
        std::vector<std::uint64_t> out(spans.size());
        py::gil_scoped_release nogil;
        for (std::size_t i = 0; i < spans.size(); ++i)
          out[i] = store::checksum(spans[i].first, spans[i].second);
        return out;
      },
      py::arg("buffers"), "Checksums of several buffers in one call, GIL released.");
  m.def("header_bytes_for", &store::header_bytes_for, py::arg("segments"));
  m.def(
      "object_relpaths", [](const py::bytes& keys) { return store::object_relpaths(keys); },
      py::arg("keys"),
      "The object paths (ab/cd/<hex>.kv) of concatenated 16-byte keys, as lookups stat them.");
  m.def(
      "touch_keys",
      [](int dirfd, const py::bytes& keys) {
        std::vector<std::string> paths = store::object_relpaths(keys);
        py::gil_scoped_release nogil;
        return store::touch_objects(dirfd, paths);
      },
      py::arg("dirfd"), py::arg("keys"),
      "Refresh the mtime of the objects of concatenated 16-byte keys; returns how many.");

  py::class_<Header>(m, "Header")
      .def(py::init([](py::bytes ns, py::bytes key, py::bytes parent, std::uint32_t chunk_index,
                       std::uint32_t token_count, std::string dtype, std::vector<std::uint64_t> shape,
                       std::vector<std::uint64_t> lengths, std::uint64_t created_unix_ns) {
             auto h = std::make_unique<Header>();
             h->ns = to_digest(ns, "ns");
             h->key = to_digest(key, "key");
             h->parent = to_digest(parent, "parent");
             h->chunk_index = chunk_index;
             h->token_count = token_count;
             YR_CHECK_ARG(token_count > 0, "token_count must be > 0");
             h->dtype = std::move(dtype);
             h->shape = std::move(shape);
             h->created_unix_ns = created_unix_ns;
             h->segments.resize(lengths.size());
             for (std::size_t i = 0; i < lengths.size(); ++i) h->segments[i].length = lengths[i];
             store::lay_out(*h);
             return h;
           }),
           py::arg("ns"), py::arg("key"), py::arg("parent"), py::arg("chunk_index"),
           py::arg("token_count"), py::arg("dtype"), py::arg("shape"), py::arg("lengths"),
           py::arg("created_unix_ns") = 0)
      .def_readonly("version", &Header::version)
      .def_readonly("header_bytes", &Header::header_bytes)
      .def_property_readonly("ns", [](const Header& h) { return from_digest(h.ns); })
      .def_property_readonly("key", [](const Header& h) { return from_digest(h.key); })
      .def_property_readonly("parent", [](const Header& h) { return from_digest(h.parent); })
      .def_readonly("object_bytes", &Header::object_bytes)
      .def_readonly("chunk_index", &Header::chunk_index)
      .def_readonly("token_count", &Header::token_count)
      .def_readwrite("flags", &Header::flags)
      .def_readonly("dtype", &Header::dtype)
      .def_readonly("shape", &Header::shape)
      .def_readonly("created_unix_ns", &Header::created_unix_ns)
      .def_property(
          "header_mac",
          [](const Header& h) {
            return py::bytes(reinterpret_cast<const char*>(h.header_mac.data()), h.header_mac.size());
          },
          [](Header& h, const py::bytes& b) {
            std::string s = b;
            YR_CHECK_ARG(s.size() == h.header_mac.size(), "header_mac must be 16 bytes");
            std::memcpy(h.header_mac.data(), s.data(), s.size());
          })
      .def_property_readonly("segment_count", [](const Header& h) { return h.segments.size(); })
      .def("segment", [](const Header& h, std::size_t i) {
             if (i >= h.segments.size()) throw py::index_error("segment index out of range");
             const auto& s = h.segments[i];
             return py::make_tuple(s.offset, s.length, s.checksum, s.mac);
           })
      .def("set_segment", [](Header& h, std::size_t i, std::uint64_t checksum, std::uint64_t mac) {
             if (i >= h.segments.size()) throw py::index_error("segment index out of range");
             h.segments[i].checksum = checksum;
             h.segments[i].mac = mac;
           }, py::arg("index"), py::arg("checksum"), py::arg("mac") = 0)
      .def("encode_into", [](const Header& h, py::handle out) {
             auto [ptr, len] = buffer_span(out, true);
             store::encode(h, reinterpret_cast<std::uint8_t*>(ptr), len);
           }, py::arg("out"), "Writes the header (header_bytes) at the start of a writable buffer.")
      .def("verify", [](const Header& h, const py::list& items) {
             // items: (segment index, buffer holding exactly that segment's bytes)
             std::vector<std::tuple<std::size_t, char*, std::size_t>> work;
             for (py::handle it : items) {
               auto t = it.cast<py::tuple>();
               auto i = t[0].cast<std::size_t>();
               if (i >= h.segments.size()) throw py::index_error("segment index out of range");
               auto [p, n] = buffer_span(t[1], false);
               work.emplace_back(i, p, n);
             }
             std::vector<bool> ok(work.size());
             py::gil_scoped_release nogil;
             for (std::size_t k = 0; k < work.size(); ++k) {
               auto [i, p, n] = work[k];
               ok[k] = n == h.segments[i].length && store::checksum(p, n) == h.segments[i].checksum;
             }
             return ok;
           }, py::arg("items"),
           "For each (segment index, buffer): True when the buffer has the segment's length and "
           "checksum. The GIL is released while hashing.");

  m.def("parse_header", &parse_py, py::arg("buffer"),
        "(Header, '', 0) | (None, reason, 0) | (None, 'need more', bytes needed). Never raises "
        "for bad bytes: they come from a shared directory.");

  py::class_<store::StatBatch>(m, "StatBatch")
      .def(py::init([](py::handle threads) {
             const auto n = static_cast<unsigned>(int_arg(threads, "lookup_threads", 0, kMaxThreads));
             py::gil_scoped_release nogil;
             return std::make_unique<store::StatBatch>(n);
           }),
           py::arg("threads"))
      .def_property_readonly("threads", &store::StatBatch::threads)
      .def(
          "run",
          [](store::StatBatch& sb, int dirfd, const std::vector<std::string>& paths,
             bool prefix_only) {
            path_args(paths, "paths");
            py::gil_scoped_release nogil;
            return sb.run(dirfd, paths, prefix_only);
          },
          py::arg("dirfd"), py::arg("paths"), py::arg("prefix_only") = false,
          "stat each path beneath dirfd (no symlink followed) in parallel: size or -errno.")
      .def(
          "run_keys",
          [](store::StatBatch& sb, int dirfd, const py::bytes& keys, bool prefix_only) {
            std::vector<std::string> paths = store::object_relpaths(keys);
            py::gil_scoped_release nogil;
            return sb.run(dirfd, paths, prefix_only);
          },
          py::arg("dirfd"), py::arg("keys"), py::arg("prefix_only") = false,
          "run() on the object paths of concatenated 16-byte keys.");
}

}  // namespace yrc
