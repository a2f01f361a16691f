// SPDX-License-Identifier: Apache-2.0
#include "store/format.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "store/checksum.h"

namespace yrc::store {

namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the format is little-endian on disk");
static_assert(kFixedBytes + 120 * kSegEntryBytes <= kAlign, "120 segments fit a 4 KiB header");

template <typename T>
void put(std::uint8_t* p, std::size_t at, T v) {
  std::memcpy(p + at, &v, sizeof(T));
}
template <typename T>
T get(const std::uint8_t* p, std::size_t at) {
  T v;
  std::memcpy(&v, p + at, sizeof(T));
  return v;
}

std::uint64_t header_checksum(const std::uint8_t* p, std::size_t n) {
  // Checksum of the header with its own checksum field taken as zero, over a copy: the input may
  // be read-only memory, or shared with another thread.
  std::vector<std::uint8_t> copy(std::max(n, kFixedBytes), 0);  // callers pass a whole header
  std::memcpy(copy.data(), p, n);
  std::fill_n(copy.begin() + off::header_checksum, 8, 0);
  return checksum(copy.data(), n);
}

bool printable_dtype(const std::uint8_t* p, std::string* out) {
  std::size_t n = 0;
  while (n < off::dtype_len && p[n] != 0) {
    if (p[n] < 0x21 || p[n] > 0x7e) return false;
    ++n;
  }
  for (std::size_t i = n; i < off::dtype_len; ++i)
    if (p[i] != 0) return false;
  out->assign(reinterpret_cast<const char*>(p), n);
  return true;
}

}  // namespace

std::size_t header_bytes_for(std::size_t nseg) {
  return align_up(kFixedBytes + nseg * kSegEntryBytes, kAlign);
}

void lay_out(Header& h) {
  if (h.segments.size() > kMaxSegments)
    throw std::invalid_argument("too many segments: " + std::to_string(h.segments.size()));
  h.header_bytes = static_cast<std::uint32_t>(header_bytes_for(h.segments.size()));
  std::uint64_t at = h.header_bytes;
  for (auto& s : h.segments) {
    s.offset = at;
    at = align_up(at + s.length, kAlign);
  }
  h.object_bytes = at;
}

void encode(const Header& h, std::uint8_t* out, std::size_t cap) {
  const std::size_t hb = header_bytes_for(h.segments.size());
  if (h.header_bytes != hb) throw std::invalid_argument("header not laid out (call lay_out)");
  if (cap < hb) throw std::invalid_argument("header buffer too small");
  if (h.dtype.empty() || h.dtype.size() > off::dtype_len)
    throw std::invalid_argument("dtype must be 1-16 ASCII characters");
  for (char c : h.dtype)
    if (c < 0x21 || c > 0x7e) throw std::invalid_argument("dtype must be printable ASCII");
  if (h.shape.size() > kMaxDims) throw std::invalid_argument("at most 8 shape dimensions");
  std::memset(out, 0, hb);
  std::memcpy(out + off::magic, kMagic, 8);
  put<std::uint32_t>(out, off::version, h.version);
  put<std::uint32_t>(out, off::header_bytes, h.header_bytes);
  std::memcpy(out + off::ns, h.ns.data(), 16);
  std::memcpy(out + off::key, h.key.data(), 16);
  std::memcpy(out + off::parent, h.parent.data(), 16);
  put<std::uint64_t>(out, off::object_bytes, h.object_bytes);
  put<std::uint32_t>(out, off::chunk_index, h.chunk_index);
  put<std::uint32_t>(out, off::token_count, h.token_count);
  put<std::uint32_t>(out, off::segment_count, static_cast<std::uint32_t>(h.segments.size()));
  put<std::uint32_t>(out, off::flags, h.flags);
  put<std::uint32_t>(out, off::checksum_algo, h.checksum_algo);
  put<std::uint32_t>(out, off::ndim, static_cast<std::uint32_t>(h.shape.size()));
  std::memcpy(out + off::dtype, h.dtype.data(), h.dtype.size());
  for (std::size_t i = 0; i < h.shape.size(); ++i)
    put<std::uint64_t>(out, off::shape + 8 * i, h.shape[i]);
  put<std::uint64_t>(out, off::created, h.created_unix_ns);
  std::memcpy(out + off::header_mac, h.header_mac.data(), off::mac_len);
  for (std::size_t i = 0; i < h.segments.size(); ++i) {
    const Segment& s = h.segments[i];
    const std::size_t at = kFixedBytes + i * kSegEntryBytes;
    put<std::uint64_t>(out, at, s.offset);
    put<std::uint64_t>(out, at + 8, s.length);
    put<std::uint64_t>(out, at + 16, s.checksum);
    put<std::uint64_t>(out, at + 24, s.mac);
  }
  put<std::uint64_t>(out, off::header_checksum, header_checksum(out, hb));
}

ParseStatus parse(const std::uint8_t* p, std::size_t len, Header* h, std::string* why,
                  std::size_t* need) {
  auto bad = [&](std::string msg) {
    *why = std::move(msg);
    return ParseStatus::kInvalid;
  };
  if (len < kFixedBytes) return bad("truncated header (" + std::to_string(len) + " bytes)");
  if (std::memcmp(p + off::magic, kMagic, 8) != 0) return bad("bad magic");
  h->version = get<std::uint32_t>(p, off::version);
  if (h->version != kFormatVersion)
    return bad("unsupported format version " + std::to_string(h->version));
  h->header_bytes = get<std::uint32_t>(p, off::header_bytes);
  const std::uint32_t nseg = get<std::uint32_t>(p, off::segment_count);
  if (nseg > kMaxSegments) return bad("segment count " + std::to_string(nseg) + " out of range");
  if (h->header_bytes != header_bytes_for(nseg))
    return bad("header size " + std::to_string(h->header_bytes) + " does not match " +
               std::to_string(nseg) + " segments");
  if (len < h->header_bytes) {
    *need = h->header_bytes;
    return ParseStatus::kNeedMore;
  }
  const std::uint64_t stored = get<std::uint64_t>(p, off::header_checksum);
  if (header_checksum(p, h->header_bytes) != stored) return bad("header checksum mismatch");
  // From here the header is what some writer wrote; still check that it is possible.
  h->checksum_algo = get<std::uint32_t>(p, off::checksum_algo);
  if (h->checksum_algo != kChecksumXxh3)
    return bad("unknown checksum algorithm " + std::to_string(h->checksum_algo));
  h->flags = get<std::uint32_t>(p, off::flags);
  if (h->flags & ~kFlagMac) return bad("unknown flags");
  std::memcpy(h->ns.data(), p + off::ns, 16);
  std::memcpy(h->key.data(), p + off::key, 16);
  std::memcpy(h->parent.data(), p + off::parent, 16);
  h->object_bytes = get<std::uint64_t>(p, off::object_bytes);
  h->chunk_index = get<std::uint32_t>(p, off::chunk_index);
  h->token_count = get<std::uint32_t>(p, off::token_count);
  if (h->token_count == 0) return bad("token count 0");
  const std::uint32_t ndim = get<std::uint32_t>(p, off::ndim);
  if (ndim > kMaxDims) return bad("ndim " + std::to_string(ndim) + " out of range");
  if (!printable_dtype(p + off::dtype, &h->dtype) || h->dtype.empty()) return bad("bad dtype");
  h->shape.resize(ndim);
  for (std::uint32_t i = 0; i < ndim; ++i) h->shape[i] = get<std::uint64_t>(p, off::shape + 8 * i);
  h->created_unix_ns = get<std::uint64_t>(p, off::created);
  std::memcpy(h->header_mac.data(), p + off::header_mac, off::mac_len);
  if (h->object_bytes > kMaxObjectBytes || h->object_bytes % kAlign != 0)
    return bad("impossible object size " + std::to_string(h->object_bytes));
  h->segments.resize(nseg);
  std::uint64_t expect = h->header_bytes;  // segments are packed in order, each 4 KiB aligned
  for (std::uint32_t i = 0; i < nseg; ++i) {
    Segment& s = h->segments[i];
    const std::size_t at = kFixedBytes + i * kSegEntryBytes;
    s.offset = get<std::uint64_t>(p, at);
    s.length = get<std::uint64_t>(p, at + 8);
    s.checksum = get<std::uint64_t>(p, at + 16);
    s.mac = get<std::uint64_t>(p, at + 24);
    if (s.offset != expect || s.length > h->object_bytes - std::min(s.offset, h->object_bytes))
      return bad("segment " + std::to_string(i) + " out of place");
    expect = align_up(s.offset + s.length, kAlign);
  }
  if (expect != h->object_bytes) return bad("object size does not match its segments");
  return ParseStatus::kOk;
}

}  // namespace yrc::store
