// SPDX-License-Identifier: Apache-2.0
// The I/O engine interface. A request (Op) is cut into kernel-level tasks by the alignment
// splitter; the backend runs tasks with at most queue_depth of them (and max_inflight_bytes) in
// flight, reads ahead of writes (TaskQueue); results go through one shared handler (short
// transfers, EINTR/EAGAIN, EOF, O_DIRECT refusal) and each Op finishes its Completion once.
// Backends: "uring" (liburing, a reaper thread) and "psync" (a pread/pwrite thread pool); the
// factory is open for "cufile".
#pragma once
#include <cstddef>
#include <cstdint>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/faults.h"
#include "io/file.h"
#include "mem/host_buffer.h"
#include "runtime/completion.h"

namespace yrc {

// Bounds of the engine's arguments (the bindings check Python values against the same ones).
inline constexpr unsigned kMaxQueueDepth = 4096;
inline constexpr std::size_t kMaxChunkBytes = std::size_t{1} << 30;
// Largest offset or length of one extent: offset + length stays far below off_t's limit.
inline constexpr std::uint64_t kMaxIoBytes = std::uint64_t{1} << 62;

struct EngineOptions {
  std::string backend = "auto";          // auto | uring | psync
  unsigned queue_depth = 8;              // kernel I/Os in flight per engine
  std::size_t chunk_bytes = 1u << 20;    // large requests are cut into pieces of this size
  std::size_t max_inflight_bytes = 16u << 20;
  unsigned threads = 0;                  // psync workers; 0 = queue_depth
  bool register_buffers = true;          // io_uring fixed buffers for registered host memory
  unsigned reads_per_file = 2;           // reads of one file in flight before another's go first
                                         // (0: plain FIFO; see TaskQueue)
};

enum class OpCode : std::uint8_t { Read, Write, Fsync, Fdatasync, Fallocate };

struct Extent {
  std::shared_ptr<FileHandle> file;
  char* buf;
  std::size_t len;
  std::uint64_t offset;
};

struct Op;

// One kernel-level I/O: a piece of an Op. Owned by the engine while queued or in flight.
struct Task {
  std::shared_ptr<Op> op;
  FileHandle* file = nullptr;  // kept alive, descriptors open, by op->uses
  OpCode code = OpCode::Read;
  char* user = nullptr;        // caller memory for this piece
  char* io_buf = nullptr;      // memory the kernel reads/writes (user, or a bounce buffer)
  std::size_t len = 0;
  std::uint64_t offset = 0;
  std::uint64_t rel = 0;       // piece offset relative to the Op's first byte (for EOF)
  std::size_t done = 0;        // bytes transferred so far
  bool direct = false;
  bool bounce = false;
  int bounce_slot = -1;
  int attempts = 0;
  std::int64_t arg = 0;        // fallocate mode
  bool issued = false;
  bool eof = false;
  std::int64_t err = 0;        // -errno when the task failed
  std::uint32_t retries = 0, shorts = 0, fallbacks = 0;
};

struct Op {
  std::uint64_t id = 0;
  OpCode code = OpCode::Read;
  // Dropped before the completion is announced: a finished request holds no descriptor.
  std::vector<FileHandle::Use> uses;
  std::size_t total = 0;
  std::shared_ptr<Completion> completion;
  // Progress, guarded by the engine mutex.
  int outstanding = 0;
  int issued = 0;
  bool cancelled = false;
  std::int64_t error = 0;           // first -errno
  std::uint64_t eof_at = UINT64_MAX;
};

struct EngineStats {
  std::uint64_t ops = 0, tasks = 0, bytes_read = 0, bytes_written = 0;
  std::uint64_t short_transfers = 0, retries = 0, direct_fallbacks = 0, bounced = 0;
  std::uint64_t fixed_buffer_ios = 0, errors = 0, cancelled = 0;
  std::uint64_t reads_ahead = 0;  // reads issued while writes were waiting
};

// Work issued to the kernel or a worker: all of it, and the write lane's part of it.
struct Inflight {
  std::size_t tasks = 0, bytes = 0;
  std::size_t write_tasks = 0, write_bytes = 0;
  std::unordered_map<const FileHandle*, unsigned> reads_per_file;  // files with reads in flight
};

// Tasks waiting to be issued, in two lanes, so that a load never queues behind background stores:
// reads are issued first, and writes (with fsync and fallocate) may hold only a share of the slots
// and bytes in flight, so a read arriving behind a burst of writes finds a free slot at once. Each
// lane is FIFO, except that a read of a file that already has reads_per_file_ reads in flight lets
// the first read of another file among the next kReadScan go first: a distributed file system's
// FUSE client serves reads spread over files much faster than the same number on one file (on
// MooseFS, fio reading one file at iodepth 8 gets 0.6x the rate of 4 files at iodepth 2), and a
// whole-object get queues all its reads at once. Guarded by the engine mutex.
class TaskQueue {
 public:
  // slots: tasks in flight at most (kernel I/Os, or workers); max_bytes: bytes in flight at most
  // (SIZE_MAX: unbounded). Writes get slots - max(1, slots/4) slots (at least one) and 3/4 of the
  // bytes. reads_per_file: 0 makes the read lane plain FIFO.
  TaskQueue(unsigned slots, std::size_t max_bytes, unsigned reads_per_file);

  static constexpr std::size_t kReadScan = 64;
  static bool is_read(const Task& t) noexcept { return t.code == OpCode::Read; }
  void push(std::unique_ptr<Task> t);
  bool empty() const noexcept { return reads_.empty() && writes_.empty(); }
  std::size_t size() const noexcept { return reads_.size() + writes_.size(); }
  // Moves out the next task that may start with `now` in flight, or returns null. *read_ahead says
  // whether it is a read taken while writes were waiting.
  std::unique_ptr<Task> pop(const Inflight& now, bool* read_ahead);
  // Moves out every queued task (reads first), for close(cancel).
  std::vector<std::unique_ptr<Task>> take_all();
  // Drops the queued tasks of one op (a cancelled op: its tasks are never issued).
  void erase_op(const Op* op);

 private:
  std::deque<std::unique_ptr<Task>> reads_, writes_;
  std::size_t slots_, max_bytes_;
  std::size_t write_slots_, write_bytes_;  // the write lane's share
  unsigned reads_per_file_;                 // 0: plain FIFO
};

class IoEngine {
 public:
  // The ladder auto -> uring -> psync. *reason says why a lower rung was taken (empty if none).
  // Throws BackendUnavailable when a named backend cannot run.
  static std::unique_ptr<IoEngine> create(const EngineOptions& opt, std::string* reason);
  virtual ~IoEngine() = default;

  virtual const char* name() const noexcept = 0;
  const EngineOptions& options() const noexcept { return opt_; }
  std::shared_ptr<CompletionQueue> completions() const noexcept { return cq_; }

  // Queues a request; never blocks on I/O. Throws ClosedError after close(), invalid_argument on
  // bad input. id is chosen by the caller (the Python layer keys its bookkeeping by it).
  std::shared_ptr<Completion> submit(std::uint64_t id, OpCode code, std::vector<Extent> extents,
                                     std::int64_t arg = 0);
  // Finishes in-flight work (cancel_pending: fails queued, not-yet-issued tasks with ECANCELED
  // first) and stops the backend. Idempotent.
  void close(bool cancel_pending);
  bool closed() const;

  // Registers host memory for fixed-buffer I/O where the backend supports it. Returns 0 or -errno
  // (e.g. -ENOMEM when RLIMIT_MEMLOCK is too small); failure only means unregistered I/O.
  virtual int register_buffer(const std::shared_ptr<HostBuffer>& buf) { return -EOPNOTSUPP; }
  virtual std::size_t registered_buffers() const { return 0; }

  FaultInjector& faults() noexcept { return faults_; }
  EngineStats stats() const;
  // Messages for the log, produced on worker threads (e.g. an O_DIRECT fallback); drained by Python.
  std::vector<std::string> take_notices();
  std::size_t inflight() const;
  // Why the ladder skipped a backend (empty when the first choice ran).
  const std::string& fallback_reason() const noexcept { return fallback_reason_; }
  void set_fallback_reason(std::string r) { fallback_reason_ = std::move(r); }

 protected:
  // slots and max_bytes bound the work in flight (see TaskQueue): the backend's queue depth or
  // worker count, and its byte bound.
  IoEngine(const EngineOptions& opt, unsigned slots, std::size_t max_bytes);
  // Called with mu_ held after tasks were queued; the backend starts what it can.
  virtual void kick_locked() = 0;
  // Stops backend threads; called once, after all work finished, without mu_ held.
  virtual void shutdown() = 0;

  enum class Next { Done, Reissue };
  // Shared result handling for one kernel I/O (short transfers, retries, EOF, O_DIRECT refusal).
  // Called without mu_. On Reissue the task was updated and must be run again.
  Next on_result(Task& t, std::int64_t res);
  // Accounts a finished task (copies bounce data back); completes the Op when it was the last.
  // Called without mu_.
  void finish_task(std::unique_ptr<Task> t);
  void note(std::string msg);
  // The next queued task that may start now (reads first, writes within their share), marked in
  // flight by prepare_issue_locked; null when none may. Called with mu_ held; never throws.
  std::unique_ptr<Task> next_task_locked();
  // Marks t in flight and points io_buf at the caller's memory or, for misaligned caller memory, at a
  // chunk-sized bounce buffer (filled for writes; without memory for one, the piece turns buffered).
  // Called with mu_ held; never throws (it runs on backend threads).
  void prepare_issue_locked(Task& t);

  // Lets cancellers and buffer-release hooks reach the engine only while it is open.
  struct Gate {
    std::mutex mu;
    IoEngine* engine = nullptr;
  };

  const EngineOptions opt_;
  std::shared_ptr<CompletionQueue> cq_;
  FaultInjector faults_;
  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  TaskQueue pending_;
  Inflight inflight_;  // issued to the kernel / a worker
  std::size_t live_ops_ = 0;
  bool closing_ = false;
  bool shut_ = false;
  EngineStats stats_;
  std::vector<std::string> notices_;
  std::vector<std::unique_ptr<HostBuffer>> bounce_;  // at most one per task in flight
  std::vector<int> bounce_free_;
  std::shared_ptr<Gate> gate_;
  std::string fallback_reason_;

 private:
  bool cancel_op(const std::shared_ptr<Op>& op);
  // Releases the op's files, then finishes its completion. Called without mu_, once the op has
  // nothing outstanding (so no other thread touches it).
  static void complete_op(Op& op, std::shared_ptr<Completion> completion, std::int64_t result);
};

std::unique_ptr<IoEngine> make_psync_engine(const EngineOptions& opt);
#ifdef YRCACHE_HAVE_LIBURING
// Throws SysError (EPERM, ENOSYS, ENOMEM...) when a ring cannot be created.
std::unique_ptr<IoEngine> make_uring_engine(const EngineOptions& opt);
#endif

// Runtime probes (build_info): can a ring be created here; does dir accept O_DIRECT.
bool probe_uring(std::string* reason);
bool probe_odirect(const std::string& dir, std::string* reason);

}  // namespace yrc
