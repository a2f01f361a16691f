// SPDX-License-Identifier: Apache-2.0
// uring: one io_uring per engine. Callers prepare SQEs and submit under the engine mutex (a batch
// per request); a reaper thread blocks in io_uring_wait_cqe, drains every ready CQE, handles the
// results (short transfers, retries) outside the lock and refills the ring up to queue_depth and
// max_inflight_bytes, reads first and writes within their share (TaskQueue). No SQPOLL (it burns a
// core on small machines); no COOP/DEFER_TASKRUN (the submitting thread is not the one that reaps).
// Registered host buffers use READ/WRITE_FIXED.
#include <liburing.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/thread_group.h"
#include "io/io_engine.h"

namespace yrc {
namespace {

constexpr unsigned kFixedSlots = 64;

class UringEngine final : public IoEngine {
 public:
  explicit UringEngine(const EngineOptions& opt)
      : IoEngine(opt, opt.queue_depth, opt.max_inflight_bytes) {
    unsigned entries = 8;
    while (entries < 2 * opt.queue_depth) entries <<= 1;
    io_uring_params p{};
    int r = io_uring_queue_init_params(entries, &ring_, &p);
    if (r < 0) throw_errno(-r, "io_uring_queue_init_params");
    if (opt.register_buffers) {
      r = io_uring_register_buffers_sparse(&ring_, kFixedSlots);
      if (r < 0) {
        note(std::string("io_uring fixed buffers unavailable (") + std::strerror(-r) +
             "); using unregistered I/O");
      } else {
        slots_.resize(kFixedSlots);
      }
    }
    try {
      reaper_.start(1, [this] { reap(); }, [] {});
    } catch (...) {
      io_uring_queue_exit(&ring_);  // no destructor runs for a constructor that throws
      throw;
    }
  }

  ~UringEngine() override {
    close(false);
    io_uring_queue_exit(&ring_);
  }

  const char* name() const noexcept override { return "uring"; }

  int register_buffer(const std::shared_ptr<HostBuffer>& buf) override {
    std::lock_guard<std::mutex> lk(mu_);
    if (shut_) return -EBADF;
    if (slots_.empty()) return -EOPNOTSUPP;
    unsigned slot = 0;
    while (slot < slots_.size() && slots_[slot].ptr) ++slot;
    if (slot == slots_.size()) return -ENOBUFS;
    iovec iov{buf->data(), buf->capacity()};
    __u64 tag = 0;
    int r = io_uring_register_buffers_update_tag(&ring_, slot, &iov, &tag, 1);
    if (r < 0) return r;
    slots_[slot] = Slot{buf->data(), buf->capacity()};
    // Unregister before the memory is unmapped, so a recycled address never maps a stale page.
    buf->on_release([gate = gate_, slot] {
      std::lock_guard<std::mutex> g(gate->mu);
      if (gate->engine) static_cast<UringEngine*>(gate->engine)->unregister(slot);
    });
    return 0;
  }

  std::size_t registered_buffers() const override {
    std::lock_guard<std::mutex> lk(mu_);
    std::size_t n = 0;
    for (auto& s : slots_) n += s.ptr != nullptr;
    return n;
  }

 protected:
  void kick_locked() override {
    unsigned queued = 0;
    // The SQ (2 x depth entries) has room for every task in flight; the check is a guard, made
    // before a task is taken so none is taken without an SQE for it.
    while (io_uring_sq_space_left(&ring_) > 0) {
      std::unique_ptr<Task> t = next_task_locked();
      if (!t) break;
      prep(io_uring_get_sqe(&ring_), t.release());
      ++queued;
    }
    if (queued) submit_locked();
  }

  void shutdown() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data(sqe, nullptr);  // wakes the reaper
      submit_locked();
    }
    reaper_.join();
  }

 private:
  struct Slot {
    char* ptr = nullptr;
    std::size_t len = 0;
  };

  void unregister(unsigned slot) {
    std::lock_guard<std::mutex> lk(mu_);
    iovec iov{nullptr, 0};
    __u64 tag = 0;
    io_uring_register_buffers_update_tag(&ring_, slot, &iov, &tag, 1);
    slots_[slot] = Slot{};
  }

  int fixed_index(const char* p, std::size_t n) const {
    for (std::size_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].ptr && p >= slots_[i].ptr && p + n <= slots_[i].ptr + slots_[i].len)
        return static_cast<int>(i);
    return -1;
  }

  void prep(io_uring_sqe* sqe, Task* t) {
    const bool data = t->code == OpCode::Read || t->code == OpCode::Write;
    const int fd = t->file->fd(data && t->direct);
    char* buf = t->io_buf + t->done;
    const unsigned n = static_cast<unsigned>(t->len - t->done);
    const __u64 off = t->offset + t->done;
    switch (t->code) {
      case OpCode::Read:
      case OpCode::Write: {
        const int idx = fixed_index(buf, n);
        const bool rd = t->code == OpCode::Read;
        if (idx >= 0) {
          stats_.fixed_buffer_ios++;
          if (rd) io_uring_prep_read_fixed(sqe, fd, buf, n, off, idx);
          else io_uring_prep_write_fixed(sqe, fd, buf, n, off, idx);
        } else if (rd) {
          io_uring_prep_read(sqe, fd, buf, n, off);
        } else {
          io_uring_prep_write(sqe, fd, buf, n, off);
        }
        break;
      }
      case OpCode::Fsync: io_uring_prep_fsync(sqe, fd, 0); break;
      case OpCode::Fdatasync: io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC); break;
      case OpCode::Fallocate:
        io_uring_prep_fallocate(sqe, fd, static_cast<int>(t->arg), off, t->len);
        break;
    }
    io_uring_sqe_set_data(sqe, t);
  }

  void submit_locked() {
    int r;
    do {
      r = io_uring_submit(&ring_);
    } while (r == -EINTR || r == -EAGAIN || r == -EBUSY);
  }

  void reap() {
    std::vector<std::pair<Task*, std::int64_t>> batch;
    std::vector<Task*> again;
    for (;;) {
      io_uring_cqe* cqe = nullptr;
      int r = io_uring_wait_cqe(&ring_, &cqe);
      if (r == -EINTR) continue;
      if (r < 0) {
        note(std::string("io_uring_wait_cqe failed: ") + std::strerror(-r));
        continue;
      }
      bool wake = false;
      unsigned head, count = 0;
      batch.clear();
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++count;
        auto* t = static_cast<Task*>(io_uring_cqe_get_data(cqe));
        if (t) batch.emplace_back(t, cqe->res);
        else wake = true;
      }
      io_uring_cq_advance(&ring_, count);  // always advance before acting (nixl's bug)
      again.clear();
      for (auto& [t, res] : batch) {
        if (on_result(*t, res) == Next::Reissue) again.push_back(t);
        else finish_task(std::unique_ptr<Task>(t));
      }
      std::lock_guard<std::mutex> lk(mu_);
      for (Task* t : again) prep(io_uring_get_sqe(&ring_), t);  // SQ has room: <= depth in flight
      if (!again.empty()) submit_locked();
      kick_locked();
      if (wake && stop_ && inflight_.tasks == 0) return;
    }
  }

  io_uring ring_{};
  std::vector<Slot> slots_;
  bool stop_ = false;
  ThreadGroup reaper_;  // last: the reaper uses the members above
};

}  // namespace

std::unique_ptr<IoEngine> make_uring_engine(const EngineOptions& opt) {
  return std::make_unique<UringEngine>(opt);
}

}  // namespace yrc
