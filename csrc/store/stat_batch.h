// SPDX-License-Identifier: Apache-2.0
// Batched existence checks for lookup: fstatat() of many object paths in parallel on a small,
// persistent thread pool. On a shared file system every stat is a round trip to a metadata server
// (~0.1 ms on the MooseFS mount here); 512 of them in sequence would stall a scheduler, in parallel
// they overlap. Workers block on a condition variable when idle (no spinning: the model's own
// threads need the cores).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "common/thread_group.h"

namespace yrc::store {

class StatBatch {
 public:
  // threads: 0..kMaxThreads (0 means 1). Throws invalid_argument beyond the bound and
  // ThreadStartError when the system cannot start them.
  explicit StatBatch(unsigned threads);
  ~StatBatch();
  StatBatch(const StatBatch&) = delete;
  StatBatch& operator=(const StatBatch&) = delete;

  // For each path (relative to dirfd; a final symlink is not followed): the size, or -errno.
  // A path that is not a regular file reads as -EINVAL. With prefix_only, paths after
  // the first miss may be skipped and reported as -ECANCELED (lookup needs only the leading run).
  std::vector<std::int64_t> run(int dirfd, const std::vector<std::string>& paths, bool prefix_only);

  unsigned threads() const noexcept { return static_cast<unsigned>(workers_.size()); }

 private:
  struct Job;
  void worker();
  void stop_workers();
  // Stats up to `limit` unclaimed paths of the job.
  static void work_on(Job& job, std::size_t limit);
  static constexpr std::size_t kProbe = 8;  // paths the caller times before waking workers

  std::mutex mu_;
  std::condition_variable cv_;
  Job* job_ = nullptr;  // the batch in progress (one at a time; callers serialize on run_mu_)
  std::uint64_t generation_ = 0;
  unsigned spare_cores_ = 1;  // workers woken for a fast (local) file system
  bool stop_ = false;
  std::mutex run_mu_;
  ThreadGroup workers_;  // last: its threads use the members above
};

// Sets the mtime (LRU age) of each object (paths relative to dirfd) to now: an openat2-confined
// open, futimens, close. Returns how many were touched; vanished objects are skipped. Call it
// with the GIL released (a background touch of 512 objects must not hold up the serving loop).
int touch_objects(int dirfd, const std::vector<std::string>& paths);

}  // namespace yrc::store
