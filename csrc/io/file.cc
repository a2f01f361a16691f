// SPDX-License-Identifier: Apache-2.0
#include "io/file.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace yrc {

namespace {
// Component-by-component walk with O_NOFOLLOW, for kernels without openat2 (< 5.6): every directory
// on the way is opened without following symlinks, and ".." or an absolute path is refused.
int open_walk(int dirfd, const std::string& path, int flags, int mode) {
  if (path.empty() || path[0] == '/') {
    errno = EXDEV;
    return -1;
  }
  UniqueFd cur;
  int at = dirfd;
  std::size_t pos = 0;
  for (;;) {
    std::size_t slash = path.find('/', pos);
    std::string comp = path.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
    if (comp == "..") {
      errno = EXDEV;
      return -1;
    }
    if (slash == std::string::npos) return ::openat(at, comp.c_str(), flags | O_NOFOLLOW, mode);
    if (!comp.empty() && comp != ".") {
      int fd = ::openat(at, comp.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) return -1;
      cur.reset(fd);
      at = fd;
    }
    pos = slash + 1;
  }
}

// Opens with O_NONBLOCK so that a FIFO planted where a file is expected cannot block the caller
// forever (open of a FIFO waits for a writer), then clears it unless the caller asked for it:
// callers check the file type themselves.
int open_retry(int dirfd, const char* path, int flags, int mode) {
  int fd;
  do {
    if (dirfd == kNoDir) {
      fd = ::open(path, flags | O_NONBLOCK, mode);
    } else {
      fd = open_beneath(dirfd, path, flags | O_NONBLOCK, mode);
    }
  } while (fd < 0 && errno == EINTR);
  if (fd >= 0 && !(flags & O_NONBLOCK)) {
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl >= 0) ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  }
  return fd;
}
}  // namespace

int open_beneath(int dirfd, const std::string& path, int flags, int mode) {
  // O_NONBLOCK while opening: a FIFO planted in a shared root must not block the caller (cleared
  // afterwards unless asked for; callers check the file type).
  const int open_flags = (flags & O_PATH) ? flags : flags | O_NONBLOCK;
  struct open_how how {};
  how.flags = static_cast<std::uint64_t>(open_flags | O_CLOEXEC);
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? static_cast<std::uint64_t>(mode) : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  long fd = ::syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof(how));
  // No openat2: kernels before 5.6 (ENOSYS), or a seccomp profile that refuses system calls it
  // does not know with EPERM (older container runtimes).
  if (fd < 0 && (errno == ENOSYS || errno == EPERM))
    fd = open_walk(dirfd, path, open_flags | O_CLOEXEC, mode);
  if (fd >= 0 && open_flags != flags) {
    const int fl = ::fcntl(static_cast<int>(fd), F_GETFL);
    if (fl >= 0) ::fcntl(static_cast<int>(fd), F_SETFL, fl & ~O_NONBLOCK);
  }
  return static_cast<int>(fd);
}

std::shared_ptr<FileHandle> FileHandle::open(const std::string& path, int flags, int mode,
                                             bool want_direct) {
  return open_at(kNoDir, path, flags, mode, want_direct);
}

std::shared_ptr<FileHandle> FileHandle::open_at(int dirfd, const std::string& path, int flags,
                                                int mode, bool want_direct) {
  YR_CHECK_ARG(!(flags & O_APPEND), "O_APPEND is not supported: requests carry explicit offsets");
  YR_CHECK_ARG(!(flags & O_PATH), "O_PATH descriptors cannot do I/O");
  flags &= ~O_DIRECT;
  flags |= O_CLOEXEC;
  std::shared_ptr<FileHandle> f(new FileHandle());  // private constructor: make_shared cannot reach it
  f->path_ = path;
  int fd = -1;
  if (want_direct) {
    fd = open_retry(dirfd, path.c_str(), flags | O_DIRECT, mode);
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
    fd = open_retry(kNoDir, self.c_str(), reopen, 0);
    if (fd < 0) fd = open_retry(dirfd, path.c_str(), reopen, 0);
  } else {
    fd = open_retry(dirfd, path.c_str(), flags, mode);
  }
  if (fd < 0) throw_errno(errno, "open", path);
  f->buffered_fd_.reset(fd);
  return f;
}

FileHandle::Use::Use(std::shared_ptr<FileHandle> f) : f_(std::move(f)) {
  YR_CHECK_ARG(f_ != nullptr, "file is None");
  std::lock_guard<std::mutex> lk(f_->mu_);
  if (f_->closed()) throw std::invalid_argument("I/O operation on closed file " + f_->path_);
  f_->users_++;
}

FileHandle::Use::~Use() {
  if (!f_) return;  // moved from
  std::lock_guard<std::mutex> lk(f_->mu_);
  if (--f_->users_ == 0 && f_->closed()) f_->close_fds_locked();
}

void FileHandle::close() noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  closed_.store(true, std::memory_order_release);
  if (users_ == 0) close_fds_locked();
}

void FileHandle::close_fds_locked() noexcept {
  direct_fd_.reset();
  buffered_fd_.reset();
}

int FileHandle::fileno() const {
  std::lock_guard<std::mutex> lk(mu_);
  return buffered_fd_.get();
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
