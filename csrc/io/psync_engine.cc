// SPDX-License-Identifier: Apache-2.0
// psync: a pool of threads doing pread/pwrite/fsync/fallocate. Always built; the bottom rung of the
// ladder. Each worker runs one task at a time, so queue depth = thread count; idle workers block.
// Workers take reads first and a write only while writes hold less than their share of the workers
// (TaskQueue), so some worker is always free for a load behind a burst of stores.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

#include "common/thread_group.h"
#include "io/io_engine.h"

namespace yrc {
namespace {

class PsyncEngine final : public IoEngine {
 public:
  // No byte bound: each worker holds one piece of at most chunk_bytes, which bounds it already.
  explicit PsyncEngine(const EngineOptions& opt) : IoEngine(opt, workers(opt), SIZE_MAX) {
    workers_.start(workers(opt), [this] { run(); }, [this] { stop_workers(); });
  }
  ~PsyncEngine() override { close(false); }
  const char* name() const noexcept override { return "psync"; }

 protected:
  void kick_locked() override { work_cv_.notify_all(); }
  void shutdown() override {
    stop_workers();
    workers_.join();
  }

 private:
  // queue_depth may be up to 4096 for io_uring; as a thread count it is capped.
  static unsigned workers(const EngineOptions& opt) {
    return opt.threads ? opt.threads : std::min(opt.queue_depth, kMaxThreads);
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
  }

  static std::int64_t execute(const Task& t) {
    const int fd = t.file->fd(t.direct && (t.code == OpCode::Read || t.code == OpCode::Write));
    ssize_t r = 0;
    switch (t.code) {
      case OpCode::Read:
        r = ::pread(fd, t.io_buf + t.done, t.len - t.done, static_cast<off_t>(t.offset + t.done));
        break;
      case OpCode::Write:
        r = ::pwrite(fd, t.io_buf + t.done, t.len - t.done, static_cast<off_t>(t.offset + t.done));
        break;
      case OpCode::Fsync: r = ::fsync(fd); break;
      case OpCode::Fdatasync: r = ::fdatasync(fd); break;
      case OpCode::Fallocate:
        r = ::fallocate(fd, static_cast<int>(t.arg), static_cast<off_t>(t.offset),
                        static_cast<off_t>(t.len));
        break;
    }
    return r < 0 ? -errno : r;
  }

  void run() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      // A write slot is freed only by a finishing write, whose worker comes back here; when it
      // takes a read instead, the wake-up passed on below lets a waiting worker take the write.
      std::unique_ptr<Task> t;
      while (!(t = next_task_locked()) && !stop_) work_cv_.wait(lk);
      // Stopping with nothing this worker may take: what is left (writes beyond the share) is
      // taken by the workers still running writes.
      if (!t) return;
      if (!pending_.empty()) work_cv_.notify_one();
      lk.unlock();
      while (on_result(*t, execute(*t)) == Next::Reissue) {
      }
      finish_task(std::move(t));
      lk.lock();
    }
  }

  std::condition_variable work_cv_;
  bool stop_ = false;
  ThreadGroup workers_;  // last: its threads use the members above
};

}  // namespace

std::unique_ptr<IoEngine> make_psync_engine(const EngineOptions& opt) {
  return std::make_unique<PsyncEngine>(opt);
}

}  // namespace yrc
