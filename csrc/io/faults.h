// SPDX-License-Identifier: Apache-2.0
// Test-only fault injection inside the backends, applied where a kernel result is produced (a CQE's
// res, a pread/pwrite/fsync return). Spec: comma-separated rules "op:fault@N" or "op:fault@N+",
//   op    = read | write | fsync | fallocate | any
//   fault = eio | enospc | eagain | eintr | einval | eperm | short | <errno number> | delay<ms>
//   N     = 1-based index of that op class's kernel I/Os since the spec was set; "N+" = every one
//           from the Nth on. "short" reports half of what was transferred (the engine must resubmit).
// "delay<ms>" (ms in 1..600000, e.g. "read:delay20@1+") sleeps that long before returning the
// unaltered result, on the thread that handles it (a psync worker, the uring reaper): a throttled
// or stalled file system. Delays of all matching rules add up; the first matching error or short
// rule still alters the result.
// Disabled (an empty spec) it costs one relaxed atomic load per completion.
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace yrc {

enum class IoClass : int { Read = 0, Write = 1, Fsync = 2, Fallocate = 3 };

class FaultInjector {
 public:
  // Throws std::invalid_argument on a malformed spec. Resets the counters.
  void set(const std::string& spec);
  std::string spec() const;
  // Returns the (possibly altered) result of one kernel I/O of class c.
  std::int64_t apply(IoClass c, std::int64_t res);
  bool enabled() const noexcept { return enabled_.load(std::memory_order_relaxed); }

 private:
  struct Rule {
    int op;  // -1 = any
    int err;  // > 0: errno to return; 0: short transfer (when delay_ms is 0)
    std::uint32_t delay_ms;  // > 0: a delay rule
    std::uint64_t nth;
    bool repeat;
  };
  mutable std::mutex mu_;
  std::atomic<bool> enabled_{false};
  std::vector<Rule> rules_;
  std::uint64_t counts_[4] = {0, 0, 0, 0};
  std::uint64_t any_count_ = 0;
  std::string spec_;
};

}  // namespace yrc
