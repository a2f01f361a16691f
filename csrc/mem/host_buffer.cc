// SPDX-License-Identifier: Apache-2.0
#include "mem/host_buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "common/align.h"
#include "common/error.h"

namespace yrc {

HostBuffer::HostBuffer(std::size_t nbytes, bool huge_pages) : size_(nbytes) {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  mapped_ = align_up(nbytes == 0 ? 1 : nbytes, page);
  ptr_ = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (ptr_ == MAP_FAILED) {
    ptr_ = nullptr;
    throw_errno(errno, "mmap of " + std::to_string(mapped_) + " bytes for a host buffer");
  }
  // fewer TLB misses; best effort
  if (huge_pages && mapped_ >= (2u << 20)) ::madvise(ptr_, mapped_, MADV_HUGEPAGE);
}

HostBuffer::~HostBuffer() {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard<std::mutex> lk(mu_);
    hooks.swap(on_release_);
  }
  for (auto& fn : hooks) fn();
  if (ptr_) ::munmap(ptr_, mapped_);
}

void HostBuffer::on_release(std::function<void()> fn) {
  std::lock_guard<std::mutex> lk(mu_);
  on_release_.push_back(std::move(fn));
}

}  // namespace yrc
