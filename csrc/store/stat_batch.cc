// SPDX-License-Identifier: Apache-2.0
#include "store/stat_batch.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "io/file.h"

namespace yrc::store {

struct StatBatch::Job {
  int dirfd;
  const std::vector<std::string>* paths;
  bool prefix_only;
  std::vector<std::int64_t> out;
  std::atomic<std::size_t> next{0};
  std::atomic<std::size_t> first_miss{SIZE_MAX};
  std::size_t active = 0;  // workers inside work_on (guarded by mu_)
};

StatBatch::StatBatch(unsigned threads) {
  if (threads == 0) threads = 1;
  workers_.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { worker(); });
}

StatBatch::~StatBatch() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void StatBatch::work_on(Job& job) {
  const std::size_t n = job.paths->size();
  for (;;) {
    const std::size_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= n) return;
    if (job.prefix_only && i > job.first_miss.load(std::memory_order_relaxed)) {
      job.out[i] = -ECANCELED;
      continue;
    }
    // An O_PATH open confined like every other access (no symlink anywhere on the path, not just
    // the last component: fstatat would follow a symlinked shard directory), then fstat. O_PATH
    // opens do not reach the file system's open handler, so the cost is that of a stat.
    struct stat st;
    std::int64_t r;
    const int fd = open_beneath(job.dirfd, (*job.paths)[i], O_PATH | O_NOFOLLOW, 0);
    if (fd < 0) {
      r = -errno;
    } else {
      r = ::fstat(fd, &st) != 0 ? -errno : !S_ISREG(st.st_mode) ? -EINVAL : st.st_size;
      ::close(fd);
    }
    job.out[i] = r;
    if (r < 0) {
      std::size_t cur = job.first_miss.load(std::memory_order_relaxed);
      while (i < cur && !job.first_miss.compare_exchange_weak(cur, i)) {
      }
    }
  }
}

void StatBatch::worker() {
  std::uint64_t seen = 0;
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || (job_ != nullptr && generation_ != seen); });
    if (stop_) return;
    seen = generation_;
    Job* job = job_;
    ++job->active;
    lk.unlock();
    work_on(*job);
    lk.lock();
    if (--job->active == 0) cv_.notify_all();
  }
}

std::vector<std::int64_t> StatBatch::run(int dirfd, const std::vector<std::string>& paths,
                                         bool prefix_only) {
  std::lock_guard<std::mutex> serial(run_mu_);
  Job job;
  job.dirfd = dirfd;
  job.paths = &paths;
  job.prefix_only = prefix_only;
  job.out.assign(paths.size(), -ECANCELED);
  if (paths.empty()) return std::move(job.out);
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &job;
    ++generation_;
  }
  cv_.notify_all();
  work_on(job);  // the caller works too (and alone finishes small batches quickly)
  std::unique_lock<std::mutex> lk(mu_);
  job_ = nullptr;  // late workers see no job; those inside finish their claimed paths
  cv_.wait(lk, [&] { return job.active == 0; });
  return std::move(job.out);
}

}  // namespace yrc::store
