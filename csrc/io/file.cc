// SPDX-License-Identifier: Apache-2.0
#include "io/file.h"

#include <fcntl.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace yrc {

namespace {
int open_retry(const char* path, int flags, int mode) {
  int fd;
  do {
    fd = ::open(path, flags, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}
}  // namespace

std::shared_ptr<FileHandle> FileHandle::open(const std::string& path, int flags, int mode,
                                             bool want_direct) {
  YR_CHECK_ARG(!(flags & O_APPEND), "O_APPEND is not supported: requests carry explicit offsets");
  YR_CHECK_ARG(!(flags & O_PATH), "O_PATH descriptors cannot do I/O");
  flags &= ~O_DIRECT;
  flags |= O_CLOEXEC;
  std::shared_ptr<FileHandle> f(new FileHandle());  // private constructor: make_shared cannot reach it
  f->path_ = path;
  int fd = -1;
  if (want_direct) {
    fd = open_retry(path.c_str(), flags | O_DIRECT, mode);
    if (fd >= 0) {
      f->direct_fd_.reset(fd);
      f->direct_.store(true);
    } else if (errno == EINVAL) {
      f->direct_reason_ = "the file system refused O_DIRECT at open (EINVAL)";
    } else {
      throw_errno(errno, "open", path);
    }
  } else {
    f->direct_reason_ = "O_DIRECT not requested";
  }
  if (f->direct_fd_) {
    // A second, buffered descriptor of the same inode for unaligned pieces. /proc/self/fd names the
    // inode we just opened even if the path is renamed meanwhile; create/truncate happened already.
    const int reopen = flags & ~(O_CREAT | O_EXCL | O_TRUNC);
    std::string self = "/proc/self/fd/" + std::to_string(f->direct_fd_.get());
    fd = open_retry(self.c_str(), reopen, 0);
    if (fd < 0) fd = open_retry(path.c_str(), reopen, 0);
  } else {
    fd = open_retry(path.c_str(), flags, mode);
  }
  if (fd < 0) throw_errno(errno, "open", path);
  f->buffered_fd_.reset(fd);
  return f;
}

std::string FileHandle::direct_reason() const {
  std::lock_guard<std::mutex> lk(mu_);
  return direct_reason_;
}

bool FileHandle::disable_direct(const std::string& reason) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!direct_.load()) return false;
  direct_.store(false, std::memory_order_release);
  direct_reason_ = reason;
  return true;
}

}  // namespace yrc
