// SPDX-License-Identifier: Apache-2.0
// Completion of one asynchronous operation, and the per-engine queue that announces completions.
//
// A Completion is finished exactly once with a result (>= 0) or -errno. Waiters block on a
// condition variable (the bindings release the GIL around wait()). When it finishes, its id is
// pushed onto the engine's CompletionQueue, whose eventfd an event loop can watch; a Python
// dispatcher thread drains the queue and runs callbacks, so no Python code runs on C++ threads.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "common/unique_fd.h"

namespace yrc {

class CompletionQueue {
 public:
  CompletionQueue();
  void push(std::uint64_t id);
  // Blocks up to timeout_s (< 0: forever) for at least one id; returns all ids queued. Returns
  // early (possibly empty) after wake().
  std::vector<std::uint64_t> pop(double timeout_s);
  void wake();
  int eventfd() const noexcept { return efd_.get(); }

 private:
  void signal();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::uint64_t> ids_;
  bool woken_ = false;
  UniqueFd efd_;
};

class Completion {
 public:
  Completion(std::uint64_t id, std::shared_ptr<CompletionQueue> queue)
      : id_(id), queue_(std::move(queue)) {}

  std::uint64_t id() const noexcept { return id_; }
  bool done() const noexcept { return done_.load(std::memory_order_acquire); }
  // Result once done(): bytes transferred (>= 0) or -errno.
  std::int64_t result() const noexcept { return result_; }
  // Waits up to timeout_s (< 0: forever); true when done.
  bool wait(double timeout_s);
  // Finishes the completion; later calls are ignored. Never throws.
  void complete(std::int64_t result) noexcept;
  // Tries to cancel work not started yet; true if cancelled.
  bool cancel();
  void set_canceller(std::function<bool()> fn) { canceller_ = std::move(fn); }

 private:
  const std::uint64_t id_;
  std::shared_ptr<CompletionQueue> queue_;
  std::function<bool()> canceller_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> done_{false};
  std::int64_t result_ = 0;
};

}  // namespace yrc
