// SPDX-License-Identifier: Apache-2.0
#include "io/io_engine.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/align.h"
#include "common/error.h"
#include "common/thread_group.h"
#include "io/direct_io.h"

namespace yrc {

namespace {
IoClass io_class(OpCode c) {
  switch (c) {
    case OpCode::Read: return IoClass::Read;
    case OpCode::Write: return IoClass::Write;
    case OpCode::Fsync:
    case OpCode::Fdatasync: return IoClass::Fsync;
    case OpCode::Fallocate: return IoClass::Fallocate;
  }
  return IoClass::Read;
}

std::string uring_reason(int err, const std::string& what) {
  std::string r = "io_uring unavailable (" + what + ": " + std::strerror(err) + ")";
  if (err == EPERM)
    r += ": blocked by a seccomp filter (e.g. Docker's default profile) or kernel.io_uring_disabled";
  else if (err == ENOSYS)
    r += ": the kernel has no io_uring";
  else if (err == ENOMEM)
    r += ": RLIMIT_MEMLOCK too small for the ring";
  return r;
}

// May len more bytes go where used are in flight, under cap? The first task always may (so a piece
// larger than the cap still runs); written to never overflow (fallocate lengths reach 2^62).
bool fits(std::size_t used, std::size_t len, std::size_t cap) {
  return used == 0 || (used <= cap && len <= cap - used);
}
}  // namespace

TaskQueue::TaskQueue(unsigned slots, std::size_t max_bytes, unsigned reads_per_file)
    : slots_(std::max(1u, slots)),
      max_bytes_(max_bytes),
      write_slots_(std::max<std::size_t>(1, slots_ - std::max<std::size_t>(1, slots_ / 4))),
      write_bytes_(max_bytes / 4 * 3),
      reads_per_file_(reads_per_file) {}

void TaskQueue::push(std::unique_ptr<Task> t) {
  (is_read(*t) ? reads_ : writes_).push_back(std::move(t));
}

std::unique_ptr<Task> TaskQueue::pop(const Inflight& now, bool* read_ahead) {
  *read_ahead = false;
  if (now.tasks >= slots_) return nullptr;
  // A read also starts while no other read is in flight, whatever the writes hold: writes filling
  // the byte bound must not hold a load back (the bound is then exceeded by one piece at most).
  if (!reads_.empty()) {
    // the first read whose file is not at its share of reads in flight, else the first read:
    // reordering spreads the slots over files, it never leaves one idle
    auto pick = reads_.begin();
    const std::size_t scan = std::min(reads_.size(), kReadScan);
    for (std::size_t i = 0; i < scan && reads_per_file_ && !now.reads_per_file.empty(); ++i) {
      auto it = now.reads_per_file.find(reads_[i]->file);
      if (it == now.reads_per_file.end() || it->second < reads_per_file_) {
        pick = reads_.begin() + static_cast<std::ptrdiff_t>(i);
        break;
      }
    }
    if (now.bytes == now.write_bytes || fits(now.bytes, (*pick)->len, max_bytes_)) {
      *read_ahead = !writes_.empty();
      std::unique_ptr<Task> t = std::move(*pick);
      reads_.erase(pick);
      return t;
    }
  }
  if (!writes_.empty() && now.write_tasks < write_slots_ &&
      fits(now.bytes, writes_.front()->len, max_bytes_) &&
      fits(now.write_bytes, writes_.front()->len, write_bytes_)) {
    std::unique_ptr<Task> t = std::move(writes_.front());
    writes_.pop_front();
    return t;
  }
  return nullptr;
}

std::vector<std::unique_ptr<Task>> TaskQueue::take_all() {
  std::vector<std::unique_ptr<Task>> out;
  out.reserve(size());
  for (auto* lane : {&reads_, &writes_}) {
    for (auto& t : *lane) out.push_back(std::move(t));
    lane->clear();
  }
  return out;
}

void TaskQueue::erase_op(const Op* op) {
  for (auto* lane : {&reads_, &writes_})
    lane->erase(std::remove_if(lane->begin(), lane->end(),
                               [op](const std::unique_ptr<Task>& t) { return t->op.get() == op; }),
                lane->end());
}

IoEngine::IoEngine(const EngineOptions& opt, unsigned slots, std::size_t max_bytes)
    : opt_(opt),
      cq_(std::make_shared<CompletionQueue>()),
      pending_(slots, max_bytes, opt.reads_per_file),
      gate_(std::make_shared<Gate>()) {
  gate_->engine = this;
}

std::unique_ptr<IoEngine> IoEngine::create(const EngineOptions& in, std::string* reason) {
  EngineOptions opt = in;
  check_range(opt.queue_depth, "queue_depth", 1, kMaxQueueDepth);
  check_range(opt.chunk_bytes, "chunk_bytes", kDirectAlign, kMaxChunkBytes);
  YR_CHECK_ARG(opt.max_inflight_bytes >= opt.chunk_bytes,
               "max_inflight_bytes must be at least chunk_bytes");
  check_thread_count(opt.threads, "threads");
  opt.chunk_bytes = align_up(opt.chunk_bytes, kDirectAlign);
  if (reason) reason->clear();
  const std::string& b = opt.backend;
  if (b == "psync") return make_psync_engine(opt);
  if (b == "cufile")
    throw BackendUnavailable(
        "backend 'cufile' moves GPU memory, not host buffers: use yrcache.cuda.gds.DeviceFileIO "
        "(the cuFile -> bounce ladder); host-memory engines are 'auto', 'uring' or 'psync'");
  if (b != "uring" && b != "auto")
    throw std::invalid_argument("backend must be 'auto', 'uring' or 'psync', got '" + b + "'");
#ifdef YRCACHE_HAVE_LIBURING
  try {
    return make_uring_engine(opt);
  } catch (const ThreadStartError&) {
    throw;  // out of threads: psync would need more of them
  } catch (const SysError& e) {
    std::string r = uring_reason(e.err(), e.what());
    if (b == "uring") throw BackendUnavailable(r);
    if (reason) *reason = r + "; using psync";
  }
#else
  const std::string r = "io_uring backend not compiled (liburing was not found at build time)";
  if (b == "uring") throw BackendUnavailable(r);
  if (reason) *reason = r + "; using psync";
#endif
  return make_psync_engine(opt);
}

std::shared_ptr<Completion> IoEngine::submit(std::uint64_t id, OpCode code,
                                             std::vector<Extent> extents, std::int64_t arg) {
  const bool data_op = code == OpCode::Read || code == OpCode::Write;
  YR_CHECK_ARG(!extents.empty(), "a request needs at least one extent");
  auto op = std::make_shared<Op>();
  op->uses.reserve(extents.size());
  for (const Extent& e : extents) {
    YR_CHECK_ARG(!data_op || e.len == 0 || e.buf != nullptr, "buffer is NULL");
    check_range(e.offset, "offset", 0, kMaxIoBytes);
    check_range(e.len, "length", 0, kMaxIoBytes);
    op->uses.emplace_back(e.file);  // refuses a closed file
  }
  op->id = id;
  op->code = code;
  op->completion = std::make_shared<Completion>(id, cq_);
  std::vector<std::unique_ptr<Task>> tasks;
  std::uint64_t rel = 0;
  for (const Extent& e : extents) {
    if (data_op) {
      for (const Piece& p : split_request(reinterpret_cast<std::uintptr_t>(e.buf), e.offset, e.len,
                                          opt_.chunk_bytes, kDirectAlign, e.file->direct())) {
        auto t = std::make_unique<Task>();
        t->file = e.file.get();
        t->code = code;
        t->user = e.buf + p.buf_off;
        t->len = p.len;
        t->offset = p.offset;
        t->rel = rel + p.buf_off;
        t->direct = p.direct;
        t->bounce = p.bounce;
        tasks.push_back(std::move(t));
      }
    } else {
      auto t = std::make_unique<Task>();
      t->file = e.file.get();
      t->code = code;
      t->offset = e.offset;
      t->len = e.len;
      t->arg = arg;
      tasks.push_back(std::move(t));
    }
    rel += e.len;
  }
  op->total = rel;
  std::weak_ptr<Op> weak = op;
  op->completion->set_canceller([gate = gate_, weak]() {
    std::lock_guard<std::mutex> g(gate->mu);
    auto o = weak.lock();
    return gate->engine && o && gate->engine->cancel_op(o);
  });
  auto completion = op->completion;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (closing_) throw ClosedError("I/O engine is closed");
    stats_.ops++;
    if (tasks.empty()) {
      op->completion.reset();
    } else {
      op->outstanding = static_cast<int>(tasks.size());
      live_ops_++;
      for (auto& t : tasks) {
        t->op = op;
        pending_.push(std::move(t));
      }
      kick_locked();
    }
  }
  if (!op->completion) complete_op(*op, completion, 0);  // zero-length request
  return completion;
}

void IoEngine::complete_op(Op& op, std::shared_ptr<Completion> completion, std::int64_t result) {
  op.uses.clear();  // may close descriptors: outside mu_
  completion->complete(result);
}

bool IoEngine::cancel_op(const std::shared_ptr<Op>& op) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (op->issued > 0 || op->outstanding == 0 || op->cancelled) return false;
    op->cancelled = true;
    pending_.erase_op(op.get());
    op->outstanding = 0;
    stats_.cancelled++;
    if (--live_ops_ == 0) idle_cv_.notify_all();
  }
  complete_op(*op, op->completion, -ECANCELED);
  return true;
}

std::unique_ptr<Task> IoEngine::next_task_locked() {
  bool read_ahead = false;
  std::unique_ptr<Task> t = pending_.pop(inflight_, &read_ahead);
  if (!t) return t;
  if (read_ahead) stats_.reads_ahead++;
  prepare_issue_locked(*t);
  return t;
}

void IoEngine::prepare_issue_locked(Task& t) {
  t.issued = true;
  t.op->issued++;
  inflight_.tasks++;
  inflight_.bytes += t.len;
  if (!TaskQueue::is_read(t)) {
    inflight_.write_tasks++;
    inflight_.write_bytes += t.len;
  } else {
    inflight_.reads_per_file[t.file]++;
  }
  stats_.tasks++;
  t.io_buf = t.user;
  if (t.bounce && bounce_free_.empty()) {
    // This runs on the reaper and worker threads too, where an exception would abort the process.
    // Without memory for a bounce buffer the piece goes through the buffered descriptor, which
    // takes any alignment.
    try {
      bounce_free_.reserve(bounce_.size() + 1);  // finish_task's push_back then cannot throw
      bounce_.push_back(std::make_unique<HostBuffer>(opt_.chunk_bytes));
      bounce_free_.push_back(static_cast<int>(bounce_.size()) - 1);
    } catch (const std::exception&) {
      t.bounce = false;
      t.direct = false;
    }
  }
  if (t.bounce) {
    t.bounce_slot = bounce_free_.back();
    bounce_free_.pop_back();
    t.io_buf = bounce_[t.bounce_slot]->data();
    stats_.bounced++;
    if (t.code == OpCode::Write) std::memcpy(t.io_buf, t.user, t.len);
  }
}

IoEngine::Next IoEngine::on_result(Task& t, std::int64_t res) {
  res = faults_.apply(io_class(t.code), res);
  if (res < 0) {
    if ((res == -EINTR || res == -EAGAIN) && ++t.attempts < 100) {
      t.retries++;
      return Next::Reissue;
    }
    if (res == -EINVAL && t.direct) {
      // The file system accepted O_DIRECT at open but refuses it for I/O (some FUSE/NFS setups).
      if (t.file->disable_direct("the file system returned EINVAL for O_DIRECT I/O"))
        note("O_DIRECT refused at first I/O on " + t.file->path() +
             " (EINVAL); using buffered I/O for this file");
      t.direct = false;
      t.fallbacks++;
      return Next::Reissue;
    }
    t.err = res;
    return Next::Done;
  }
  if (t.code != OpCode::Read && t.code != OpCode::Write) return Next::Done;
  t.done += static_cast<std::size_t>(res);
  if (t.done >= t.len) return Next::Done;
  if (res == 0) {
    if (t.code == OpCode::Read) {
      t.eof = true;  // end of file: the read returns what exists
    } else {
      t.err = -EIO;  // a write that makes no progress would loop forever
    }
    return Next::Done;
  }
  // Short transfer: resubmit the remainder. An unaligned remainder (e.g. a direct read that stopped
  // at an unaligned EOF) cannot stay on the O_DIRECT descriptor.
  t.shorts++;
  if (t.direct && !is_aligned(t.done, kDirectAlign)) t.direct = false;
  return Next::Reissue;
}

void IoEngine::finish_task(std::unique_ptr<Task> t) {
  if (t->bounce_slot >= 0 && t->code == OpCode::Read && t->done > 0)
    std::memcpy(t->user, t->io_buf, t->done);
  std::shared_ptr<Completion> done;
  std::int64_t result = 0;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (t->bounce_slot >= 0) bounce_free_.push_back(t->bounce_slot);
    if (t->issued) {
      inflight_.tasks--;
      inflight_.bytes -= t->len;
      if (!TaskQueue::is_read(*t)) {
        inflight_.write_tasks--;
        inflight_.write_bytes -= t->len;
      } else {
        auto it = inflight_.reads_per_file.find(t->file);
        if (it != inflight_.reads_per_file.end() && --it->second == 0)
          inflight_.reads_per_file.erase(it);
      }
    }
    stats_.retries += t->retries;
    stats_.short_transfers += t->shorts;
    stats_.direct_fallbacks += t->fallbacks;
    if (t->code == OpCode::Read) stats_.bytes_read += t->done;
    if (t->code == OpCode::Write) stats_.bytes_written += t->done;
    Op& op = *t->op;
    if (t->err && !op.error) {
      op.error = t->err;
      stats_.errors++;
    }
    if (t->eof) op.eof_at = std::min<std::uint64_t>(op.eof_at, t->rel + t->done);
    if (--op.outstanding == 0) {
      if (op.error)
        result = op.error;
      else if (op.code == OpCode::Read)
        result = static_cast<std::int64_t>(std::min<std::uint64_t>(op.total, op.eof_at));
      else if (op.code == OpCode::Write)
        result = static_cast<std::int64_t>(op.total);
      done = op.completion;
      if (--live_ops_ == 0) idle_cv_.notify_all();
    }
  }
  if (done) complete_op(*t->op, std::move(done), result);
}

void IoEngine::close(bool cancel_pending) {
  std::unique_lock<std::mutex> lk(mu_);
  if (shut_) return;
  closing_ = true;
  if (cancel_pending) {
    // Not-yet-issued tasks fail with ECANCELED; issued ones finish normally.
    std::vector<std::unique_ptr<Task>> drop = pending_.take_all();
    lk.unlock();
    for (auto& t : drop) {
      t->err = -ECANCELED;
      finish_task(std::move(t));
    }
    lk.lock();
  }
  idle_cv_.wait(lk, [&] { return live_ops_ == 0; });
  if (shut_) return;  // another closer finished meanwhile
  shut_ = true;
  lk.unlock();
  {
    std::lock_guard<std::mutex> g(gate_->mu);
    gate_->engine = nullptr;  // cancellers and buffer-release hooks become no-ops
  }
  shutdown();
}

bool IoEngine::closed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return closing_;
}

EngineStats IoEngine::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

std::size_t IoEngine::inflight() const {
  std::lock_guard<std::mutex> lk(mu_);
  return inflight_.tasks + pending_.size();
}

void IoEngine::note(std::string msg) {
  std::lock_guard<std::mutex> lk(mu_);
  notices_.push_back(std::move(msg));
}

std::vector<std::string> IoEngine::take_notices() {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::string> out;
  out.swap(notices_);
  return out;
}

}  // namespace yrc
