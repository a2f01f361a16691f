// SPDX-License-Identifier: Apache-2.0
#include "store/stat_batch.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>

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
  check_thread_count(threads, "lookup_threads");
  if (threads == 0) threads = 1;
  const unsigned hw = std::thread::hardware_concurrency();
  spare_cores_ = std::min(threads, hw > 1 ? hw - 1 : 1u);
  workers_.start(threads, [this] { worker(); }, [this] { stop_workers(); });
}

StatBatch::~StatBatch() {
  stop_workers();
  workers_.join();
}

void StatBatch::stop_workers() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

void StatBatch::work_on(Job& job, std::size_t limit) {
  const std::size_t n = job.paths->size();
  for (std::size_t done = 0; done < limit; ++done) {
    const std::size_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= n) return;
    if (job.prefix_only && i > job.first_miss.load(std::memory_order_relaxed)) {
      job.out[i] = -ECANCELED;
      continue;
    }
    // One fstatat per path: lookup only answers "is there an object file". It resolves the two
    // shard directories without openat2's confinement (that costs three syscalls instead of one,
    // which on a VM is most of a 512-key lookup); every open that reads bytes is confined
    // (open_beneath), so a symlink planted in a shared root can at worst make lookup claim an
    // object that the load then reports as a miss.
    struct stat st;
    std::int64_t r;
    if (::fstatat(job.dirfd, (*job.paths)[i].c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      r = -errno;
    } else {
      r = S_ISREG(st.st_mode) ? static_cast<std::int64_t>(st.st_size) : -EINVAL;
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
    work_on(*job, SIZE_MAX);
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
  // The caller probes a few paths first. A local file system answers in microseconds: waking
  // more threads than there are spare cores only adds wake-up costs. A shared file system takes a
  // metadata round trip per path: then every worker overlaps them.
  const auto t0 = std::chrono::steady_clock::now();
  work_on(job, kProbe);
  const std::size_t probed = std::min(paths.size(), kProbe);
  const auto per_path = (std::chrono::steady_clock::now() - t0) / probed;
  if (job.next.load(std::memory_order_relaxed) < paths.size()) {
    if (per_path > std::chrono::microseconds(20)) {
      cv_.notify_all();
    } else {
      for (unsigned i = 0; i < spare_cores_; ++i) cv_.notify_one();
    }
  }
  work_on(job, SIZE_MAX);
  std::unique_lock<std::mutex> lk(mu_);
  job_ = nullptr;  // late workers see no job; those inside finish their claimed paths
  cv_.wait(lk, [&] { return job.active == 0; });
  return std::move(job.out);
}

int touch_objects(int dirfd, const std::vector<std::string>& paths) {
  int n = 0;
  for (const auto& p : paths) {
    const int fd = open_beneath(dirfd, p, O_RDONLY | O_NOFOLLOW, 0);
    if (fd < 0) continue;
    if (::futimens(fd, nullptr) == 0) ++n;
    ::close(fd);
  }
  return n;
}

}  // namespace yrc::store
