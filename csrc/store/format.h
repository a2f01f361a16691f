// SPDX-License-Identifier: Apache-2.0
// The object format (docs/object_format.md is the spec): a header of 4 KiB (more only for objects
// with over 120 segments), then one segment per layer, each on a 4 KiB boundary so one layer can be
// read alone with O_DIRECT. Every field is little-endian at a fixed offset; parsing trusts nothing:
// bytes come from a directory other processes and nodes write to.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace yrc::store {

inline constexpr char kMagic[8] = {'Y', 'R', 'C', 'K', 'V', 'O', 'B', 'J'};
inline constexpr std::uint32_t kFormatVersion = 1;
inline constexpr std::size_t kAlign = 4096;
inline constexpr std::size_t kFixedBytes = 256;      // fixed fields, then the segment table
inline constexpr std::size_t kSegEntryBytes = 32;    // offset, length, checksum, mac (u64 each)
inline constexpr std::uint32_t kChecksumXxh3 = 1;    // the only checksum algorithm of version 1
inline constexpr std::uint32_t kFlagMac = 1u << 0;   // header_mac and segment macs are set
inline constexpr std::uint32_t kMaxSegments = 4096;
inline constexpr std::uint32_t kMaxDims = 8;
inline constexpr std::uint64_t kMaxObjectBytes = 1ull << 40;  // a sanity bound, not a limit in use

// Offsets of the fixed fields (bytes).
namespace off {
inline constexpr std::size_t magic = 0, version = 8, header_bytes = 12, ns = 16, key = 32,
                             parent = 48, object_bytes = 64, chunk_index = 72, token_count = 76,
                             segment_count = 80, flags = 84, checksum_algo = 88, ndim = 92,
                             dtype = 96, shape = 112, created = 176, reserved = 184,
                             header_mac = 232, header_checksum = 248;
inline constexpr std::size_t dtype_len = 16, reserved_len = 48, mac_len = 16;
}  // namespace off

using Digest = std::array<std::uint8_t, 16>;

struct Segment {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint64_t checksum = 0;
  std::uint64_t mac = 0;  // keyed tag (flags & kFlagMac), computed by the caller
};

struct Header {
  std::uint32_t version = kFormatVersion;
  std::uint32_t header_bytes = 0;
  Digest ns{}, key{}, parent{};
  std::uint64_t object_bytes = 0;
  std::uint32_t chunk_index = 0;
  std::uint32_t token_count = 0;
  std::uint32_t flags = 0;
  std::uint32_t checksum_algo = kChecksumXxh3;
  std::string dtype;
  std::vector<std::uint64_t> shape;
  std::uint64_t created_unix_ns = 0;
  std::array<std::uint8_t, off::mac_len> header_mac{};
  std::vector<Segment> segments;
};

inline constexpr std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// Header size for n segments: 4 KiB up to 120 segments.
std::size_t header_bytes_for(std::size_t nseg);

// Fills header_bytes, each segment's offset and object_bytes from the segment lengths already set.
void lay_out(Header& h);

// Writes h into out[0, h.header_bytes) (zero-padded) with a fresh header checksum.
// Throws std::invalid_argument if h is not encodable (bad dtype, too many dims/segments, cap small).
void encode(const Header& h, std::uint8_t* out, std::size_t cap);

enum class ParseStatus { kOk, kNeedMore, kInvalid };

// Parses and validates a header from p[0, len). kNeedMore: the header is longer than len (its
// declared size is in *need). kInvalid: *why says what was wrong. Nothing outside p is read.
ParseStatus parse(const std::uint8_t* p, std::size_t len, Header* out, std::string* why,
                  std::size_t* need);

}  // namespace yrc::store
