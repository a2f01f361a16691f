// SPDX-License-Identifier: Apache-2.0
// Where an object lives in its namespace directory: "ab/cd/<32 hex>.kv" for the key's hex digest
// (yrcache/store/paths.py, object_relpath, is the same scheme; tests/test_store_paths.py checks
// both agree). Formatted here for the batched lookups and touches: for a chain of 512 keys, Python
// strings cost more than stat'ing the files on ext4.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace yrc::store {

inline constexpr std::size_t kKeyBytes = 16;
inline constexpr const char* kObjectSuffix = ".kv";

// The object path of one 16-byte key.
inline std::string object_relpath(const std::uint8_t* key) {
  static const char hex[] = "0123456789abcdef";
  char h[2 * kKeyBytes];
  for (std::size_t j = 0; j < kKeyBytes; ++j) {
    h[2 * j] = hex[key[j] >> 4];
    h[2 * j + 1] = hex[key[j] & 15];
  }
  std::string p;
  p.reserve(2 * kKeyBytes + 9);
  p.append(h, 2).append("/").append(h + 2, 2).append("/").append(h, 2 * kKeyBytes);
  return p.append(kObjectSuffix);
}

// The object paths of concatenated 16-byte keys; invalid_argument unless a multiple of 16 bytes.
inline std::vector<std::string> object_relpaths(const std::string& keys) {
  if (keys.size() % kKeyBytes != 0)
    throw std::invalid_argument("keys must be a multiple of 16 bytes");
  std::vector<std::string> out(keys.size() / kKeyBytes);
  const auto* raw = reinterpret_cast<const std::uint8_t*>(keys.data());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = object_relpath(raw + i * kKeyBytes);
  return out;
}

}  // namespace yrc::store
