// SPDX-License-Identifier: Apache-2.0
// Page-aligned host memory for O_DIRECT staging. Allocated with mmap so the address and length are
// page aligned (cudaMallocHost memory is not guaranteed to be, see kvikio). io_uring and CUDA
// registrations attach an undo hook that runs before munmap, so a recycled virtual address can
// never alias a stale registered page.
#pragma once
#include <cstddef>
#include <functional>
#include <mutex>
#include <vector>

namespace yrc {

class HostBuffer {
 public:
  // huge_pages: ask for transparent huge pages (MADV_HUGEPAGE) when 2 MiB or more. Right for
  // long-lived arenas; wrong for memory first touched on a latency path: with THP defrag set to
  // "madvise" (the common default) each first touch may compact memory synchronously.
  explicit HostBuffer(std::size_t nbytes, bool huge_pages = true);
  ~HostBuffer();
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  char* data() const noexcept { return static_cast<char*>(ptr_); }
  std::size_t size() const noexcept { return size_; }         // requested bytes
  std::size_t capacity() const noexcept { return mapped_; }   // page-rounded mapping
  // Runs fn just before the memory is unmapped (e.g. io_uring buffer unregistration).
  void on_release(std::function<void()> fn);

 private:
  void* ptr_ = nullptr;
  std::size_t size_ = 0;
  std::size_t mapped_ = 0;
  std::mutex mu_;
  std::vector<std::function<void()>> on_release_;
};

}  // namespace yrc
