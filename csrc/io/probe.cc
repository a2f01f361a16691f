// SPDX-License-Identifier: Apache-2.0
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <string>

#include "common/align.h"
#include "common/unique_fd.h"
#include "io/io_engine.h"
#include "mem/host_buffer.h"
#ifdef YRCACHE_HAVE_LIBURING
#include <liburing.h>
#endif

namespace yrc {

bool probe_uring(std::string* reason) {
#ifdef YRCACHE_HAVE_LIBURING
  io_uring ring;
  int r = io_uring_queue_init(4, &ring, 0);
  if (r < 0) {
    *reason = std::string("io_uring_queue_init: ") + std::strerror(-r);
    return false;
  }
  io_uring_queue_exit(&ring);
  reason->clear();
  return true;
#else
  *reason = "io_uring backend not compiled (liburing was not found at build time)";
  return false;
#endif
}

bool probe_odirect(const std::string& dir, std::string* reason) {
  std::random_device rd;
  const std::string path = dir + "/.yrcache-odirect-probe-" + std::to_string(::getpid()) + "-" +
                           std::to_string(rd());
  UniqueFd fd(::open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_DIRECT | O_CLOEXEC, 0600));
  if (!fd) {
    const int err = errno;
    *reason = err == EINVAL ? "refused at open (EINVAL)"
                            : std::string("cannot create a probe file: ") + std::strerror(err);
    return false;
  }
  ::unlink(path.c_str());
  HostBuffer buf(kDirectAlign);
  std::memset(buf.data(), 0, kDirectAlign);
  ssize_t n = ::pwrite(fd.get(), buf.data(), kDirectAlign, 0);
  if (n < 0) {
    *reason = std::string("refused at first I/O (") + std::strerror(errno) + ")";
    return false;
  }
  reason->clear();
  return true;
}

}  // namespace yrc
