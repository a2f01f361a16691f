// SPDX-License-Identifier: Apache-2.0
// The GPU data path's copy engine: gather/scatter of paged (vLLM) or dense (HF) KV between device
// memory and pinned host staging, on dedicated streams, ordered with the caller's compute stream
// through pooled events. Same views and the same checks as the CPU reference (copy/copy.h).
//
// This header is CUDA-free so the bindings compile with the host compiler. Streams cross as
// integers (torch.cuda.Stream.cuda_stream); 0 means "no ordering with a caller stream".
// Without CUDA compiled in, or without a driver/device, every entry point throws CudaUnavailable.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "copy/copy.h"

namespace yrc::cuda {

// How pages move between device memory and host staging (measured by bench/gpu_bench):
//  kStaged: a kernel packs the pages into a device staging buffer, then ONE DMA moves the run to
//           or from host memory. The kernel runs at device-memory speed (microseconds) and the
//           PCIe transfer is a copy-engine DMA that holds no SMs. The default.
//  kMapped: a kernel reads/writes the pinned host buffer directly (zero-copy): one launch, no
//           device staging, but it occupies SMs for the whole PCIe transfer.
//  kDma:    one cudaMemcpyAsync per run of adjacent pages (no kernel at all).
enum class Method { kStaged = 0, kMapped = 1, kDma = 2 };

class EventPool;

// A CUDA event recorded after an enqueued copy. Returned to its pool when the last owner drops it.
class Event {
 public:
  Event(std::shared_ptr<EventPool> pool, void* ev, int device);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void synchronize() const;        // blocks the host until the copy is done (throws CudaError)
  bool query() const;              // true when done
  void wait_on(std::uintptr_t stream) const;  // the stream's later work waits for the copy
  int device() const noexcept { return device_; }
  void* raw() const noexcept { return ev_; }

 private:
  std::shared_ptr<EventPool> pool_;
  void* ev_;
  int device_;
};

// What a copy must wait for before it touches memory: work already enqueued on a stream (an event
// is recorded on it now), or an event recorded earlier (e.g. when a load was issued, so its
// scatters wait for the steps that last read the recycled blocks, not for later compute).
struct After {
  std::uintptr_t stream = 0;
  std::shared_ptr<Event> event;
};

struct CopierOptions {
  std::size_t staging_bytes = 16u << 20;  // device staging per direction (kStaged)
  Method method = Method::kStaged;
};

// One per device. Owns an offload (D2H) and a load (H2D) stream, created non-blocking; stream
// priorities order kernels only, not copy-engine DMA, so none is set.
class Copier {
 public:
  Copier(int device, CopierOptions opt);
  ~Copier();
  Copier(const Copier&) = delete;
  Copier& operator=(const Copier&) = delete;

  int device() const noexcept;
  Method method() const noexcept;
  void set_method(Method m);
  std::uintptr_t offload_stream() const noexcept;
  std::uintptr_t load_stream() const noexcept;

  // An event recorded now on `stream` (for After::event).
  std::shared_ptr<Event> record(std::uintptr_t stream);

  // Pages ids[i] of v -> host dst[i*page_bytes], after `after`. dst must be host memory
  // registered with CUDA (host_register). Returns the completion event.
  std::shared_ptr<Event> gather_paged(const copy::PagedView& v, const std::int64_t* ids,
                                      std::size_t n, void* dst, std::size_t dst_bytes,
                                      const After& after);
  // Host src -> pages ids[i], after `after`; if `signal` is a stream, its later work waits for
  // the copy (a consumer kernel needs no host-side wait).
  std::shared_ptr<Event> scatter_paged(const copy::PagedView& v, const std::int64_t* ids,
                                       std::size_t n, const void* src, std::size_t src_bytes,
                                       const After& after, std::uintptr_t signal);
  std::shared_ptr<Event> gather_dense(const copy::DenseView& v, std::int64_t batch,
                                      std::int64_t t0, std::int64_t len, void* dst,
                                      std::size_t dst_bytes, const After& after);
  std::shared_ptr<Event> scatter_dense(const copy::DenseView& v, std::int64_t batch,
                                       std::int64_t t0, std::int64_t len, const void* src,
                                       std::size_t src_bytes, const After& after,
                                       std::uintptr_t signal);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Raw transfers for tests and benchmarks: one cudaMemcpyAsync of n bytes on `stream`, then a
// stream synchronize. kind: 0 host->device, 1 device->host, 2 device->device.
void memcpy_sync(std::uintptr_t dst, std::uintptr_t src, std::size_t n, int kind,
                 std::uintptr_t stream);

// cudaHostRegister (portable | mapped) of [ptr, ptr+n), from `device`; undone by host_unregister. The caller
// (HostBuffer::on_release) guarantees the unregister happens before the memory is unmapped.
void host_register(void* ptr, std::size_t n, int device);
void host_unregister(void* ptr) noexcept;

// Device count, after checking `device` is one of them; throws CudaUnavailable with the reason
// (not compiled, no driver, no device) when CUDA cannot run here.
int require_device(int device);

}  // namespace yrc::cuda
