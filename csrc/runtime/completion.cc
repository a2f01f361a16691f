// SPDX-License-Identifier: Apache-2.0
#include "runtime/completion.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include "common/error.h"

namespace yrc {

namespace {
// Waits until ready() or timeout_s seconds. < 0, +inf or beyond any real wait (the conversion to
// the clock's integer ticks would overflow) means no limit; NaN is refused rather than guessed.
template <typename Ready>
bool wait_seconds(std::condition_variable& cv, std::unique_lock<std::mutex>& lk, double timeout_s,
                  Ready ready) {
  if (std::isnan(timeout_s)) throw std::invalid_argument("timeout must be a number, got nan");
  if (timeout_s < 0 || timeout_s > 1e9) {
    cv.wait(lk, ready);
    return true;
  }
  return cv.wait_for(lk, std::chrono::duration<double>(timeout_s), ready);
}
}  // namespace

CompletionQueue::CompletionQueue() : efd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!efd_) throw_errno(errno, "eventfd");
}

void CompletionQueue::signal() {
  std::uint64_t one = 1;
  // A full counter (never in practice) or EAGAIN only means a wakeup is already pending.
  [[maybe_unused]] auto n = ::write(efd_.get(), &one, sizeof one);
}

void CompletionQueue::push(std::uint64_t id) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lk(mu_);
    was_empty = ids_.empty();
    ids_.push_back(id);
  }
  cv_.notify_one();
  if (was_empty) signal();  // one eventfd write per batch, not per completion
}

void CompletionQueue::wake() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    woken_ = true;
  }
  cv_.notify_all();
  signal();
}

std::vector<std::uint64_t> CompletionQueue::pop(double timeout_s) {
  std::unique_lock<std::mutex> lk(mu_);
  wait_seconds(cv_, lk, timeout_s, [&] { return !ids_.empty() || woken_; });
  woken_ = false;
  std::vector<std::uint64_t> out(ids_.begin(), ids_.end());
  ids_.clear();
  lk.unlock();
  std::uint64_t v;
  [[maybe_unused]] auto n = ::read(efd_.get(), &v, sizeof v);  // reset the eventfd counter
  return out;
}

bool Completion::wait(double timeout_s) {
  if (done()) return true;
  std::unique_lock<std::mutex> lk(mu_);
  return wait_seconds(cv_, lk, timeout_s, [&] { return done_.load(std::memory_order_acquire); });
}

void Completion::complete(std::int64_t result) noexcept {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (done_.load(std::memory_order_relaxed)) return;
    result_ = result;
    done_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
  if (queue_) queue_->push(id_);
}

bool Completion::cancel() {
  if (done() || !canceller_) return false;
  return canceller_();
}

}  // namespace yrc
