// SPDX-License-Identifier: Apache-2.0
// Threads owned by one object. A std::thread that is destroyed while joinable calls
// std::terminate (SIGABRT for the whole Python process), and std::thread's constructor throws
// std::system_error (EAGAIN) when the process runs out of threads (RLIMIT_NPROC, a cgroup pids
// limit, memory for stacks). ThreadGroup makes both survivable: a failed start stops and joins the
// threads that did start, then raises SysError with the errno, which Python sees as an OSError.
#pragma once
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "common/error.h"

namespace yrc {

// Upper bound for every thread-count argument: far above what a pool of blocking workers can use,
// far below what would exhaust a process (each thread reserves a stack).
inline constexpr unsigned kMaxThreads = 1024;

// A thread could not be started: the process is out of threads, not the feature that wanted one.
class ThreadStartError : public SysError {
 public:
  using SysError::SysError;
};

// Throws std::invalid_argument (ValueError) naming the bound when n > kMaxThreads.
inline void check_thread_count(unsigned long long n, const char* name) {
  check_range(n, name, 0, kMaxThreads);
}

class ThreadGroup {
 public:
  ThreadGroup() = default;
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;
  // Joins: owners signal their threads to stop first (a thread still waiting for work would
  // block this forever), but a joinable thread must never reach ~std::thread.
  ~ThreadGroup() { join(); }

  // Starts n threads running body(). If one cannot start, calls stop() (which must make the
  // started ones return), joins them and throws SysError with the errno.
  template <typename Body, typename Stop>
  void start(unsigned n, const Body& body, Stop&& stop) {
    check_thread_count(n, "threads");
    threads_.reserve(threads_.size() + n);
    for (unsigned i = 0; i < n; ++i) {
      try {
        threads_.emplace_back(body);
      } catch (const std::system_error& e) {
        stop();
        join();
        throw ThreadStartError(e.code().value(), "cannot start thread " + std::to_string(i + 1) + " of " +
                                             std::to_string(n));
      }
    }
  }

  // Starts one thread; false (nothing started) when the system has no thread to give.
  template <typename Body>
  bool try_start(Body&& body) noexcept {
    try {
      threads_.emplace_back(std::forward<Body>(body));
      return true;
    } catch (...) {  // std::system_error, or bad_alloc growing the vector
      return false;
    }
  }

  void join() noexcept {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }

  std::size_t size() const noexcept { return threads_.size(); }

 private:
  std::vector<std::thread> threads_;
};

}  // namespace yrc
