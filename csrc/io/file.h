// SPDX-License-Identifier: Apache-2.0
// An open file as the engines see it: an O_DIRECT descriptor for aligned I/O plus a buffered one for
// unaligned heads/tails and for file systems that refuse O_DIRECT (kvikio's two-fd pattern).
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "common/unique_fd.h"

namespace yrc {

// "No directory": open() resolves the path as given.
constexpr int kNoDir = -1000;

// openat2(dirfd, path) confined beneath dirfd, following no symlinks anywhere on the way
// (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS); an O_NOFOLLOW walk on kernels without openat2. For
// cache directories shared with other writers: a planted symlink fails with ELOOP/EXDEV instead of
// leading outside the root. Returns the fd or -1 with errno set (O_CLOEXEC added).
int open_beneath(int dirfd, const std::string& path, int flags, int mode);

class FileHandle {
 public:
  // Opens path with the given open(2) flags (O_DIRECT and O_CLOEXEC are managed here). With
  // want_direct, O_DIRECT is tried first; EINVAL at open (ramfs, some FUSE) falls back to buffered.
  // Throws SysError with errno and path on failure.
  static std::shared_ptr<FileHandle> open(const std::string& path, int flags, int mode,
                                          bool want_direct);
  // The same, resolving path with open_beneath(dirfd, ...) (dirfd == kNoDir: plain open).
  static std::shared_ptr<FileHandle> open_at(int dirfd, const std::string& path, int flags,
                                             int mode, bool want_direct);

  // A request's claim on the descriptors. While any Use is held they stay open; close() with none
  // held closes them at once. So whatever else keeps the handle alive (a File object referenced by
  // a traceback, a Future) never keeps descriptors, or a deleted file's blocks, after close().
  class Use {
   public:
    // Throws std::invalid_argument (ValueError) when the file is closed.
    explicit Use(std::shared_ptr<FileHandle> f);
    Use(Use&& o) noexcept = default;
    Use& operator=(Use&&) = delete;
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;
    ~Use();
    FileHandle* get() const noexcept { return f_.get(); }

   private:
    std::shared_ptr<FileHandle> f_;
  };

  const std::string& path() const noexcept { return path_; }
  bool direct() const noexcept { return direct_.load(std::memory_order_acquire); }
  // For a request holding a Use: the descriptors cannot change under it.
  int fd(bool direct) const noexcept { return direct ? direct_fd_.get() : buffered_fd_.get(); }
  // The buffered descriptor, or -1 once closed (callable from any thread).
  int fileno() const;
  // Why O_DIRECT is not in use (empty when it is).
  std::string direct_reason() const;
  // Switches this file to buffered I/O for good (e.g. EINVAL at the first O_DIRECT I/O).
  // Returns true for the call that made the switch.
  bool disable_direct(const std::string& reason);
  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }
  // Refuses new requests; closes the descriptors now, or when the last request in flight ends.
  void close() noexcept;

 private:
  FileHandle() = default;
  void close_fds_locked() noexcept;
  std::string path_;
  UniqueFd direct_fd_;
  UniqueFd buffered_fd_;
  std::atomic<bool> direct_{false};
  std::atomic<bool> closed_{false};
  mutable std::mutex mu_;
  std::string direct_reason_;
  int users_ = 0;  // Uses held (guarded by mu_)
};

}  // namespace yrc
