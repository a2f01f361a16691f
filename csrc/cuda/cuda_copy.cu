// SPDX-License-Identifier: Apache-2.0
// CUDA implementation of cuda_copy.h. One kernel, copy_pages, does both directions: it reads
// page ids[i] (gather) or packed page i (scatter) and writes the other side, 16 bytes per thread
// per step when everything is 16-byte aligned. Block ids travel in the kernel's parameter block
// (__grid_constant__), copied at launch: no device id buffer whose lifetime must be tracked.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/error.h"
#include "cuda/cuda_copy.h"

namespace yrc::cuda {

namespace {

[[noreturn]] void fail(cudaError_t e, const char* what) {
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  const std::string msg = std::string(what) + ": " + cudaGetErrorString(e);
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ||
      e == cudaErrorSystemDriverMismatch || e == cudaErrorDevicesUnavailable)
    throw CudaUnavailable(std::string(cudaGetErrorName(e)) + ": " + msg);
  throw CudaError(cudaGetErrorName(e), msg);
}

#define YRC_CUDA(call)                              \
  do {                                              \
    cudaError_t yrc_e_ = (call);                    \
    if (yrc_e_ != cudaSuccess) fail(yrc_e_, #call); \
  } while (0)

// Whether the calling thread has a current CUDA context (cuCtxGetCurrent, reached through the
// runtime: libcuda is never linked). Unknown (no entry point) counts as yes.
bool thread_has_context() {
  using Fn = int (*)(void**);
  static Fn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
#if CUDART_VERSION >= 12050
    cudaError_t rc = cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &p, 4000,
                                                      cudaEnableDefault, &q);
#else  // 12.0-12.4: the versioned lookup does not exist yet
    cudaError_t rc = cudaGetDriverEntryPoint("cuCtxGetCurrent", &p, cudaEnableDefault, &q);
#endif
    if (rc != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      p = nullptr;
    }
    return reinterpret_cast<Fn>(p);
  }();
  if (!fn) return true;
  void* ctx = nullptr;
  return fn(&ctx) == 0 && ctx != nullptr;
}

// Makes `device` current for the scope (streams and events belong to one device). A thread with
// no context yet (yrcache's own worker threads) keeps `device` afterwards: restoring its nominal
// device 0 would create a context on GPU 0 from every rank's threads (torch's MaybeExchangeDevice
// does the same).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    const bool had_context = thread_has_context();
    YRC_CUDA(cudaGetDevice(&prev_));
    if (prev_ != device) YRC_CUDA(cudaSetDevice(device));
    changed_ = prev_ != device && had_context;
  }
  ~DeviceScope() {
    if (changed_) cudaSetDevice(prev_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

constexpr int kMaxIds = 896;  // keeps PageJob under the 4 KiB kernel-parameter limit

struct PageJob {
  const char* src;
  char* dst;
  long long src_stride;  // bytes between the source's pages
  long long dst_stride;
  long long page_bytes;
  int n;
  int index_src;         // 1: ids index the source pages (gather); 0: the destination (scatter)
  int ids[kMaxIds];
};

template <typename V>
__global__ void copy_pages(const __grid_constant__ PageJob j) {
  const long long i = blockIdx.x;
  const long long id = j.ids[i];
  const char* s = j.src + (j.index_src ? id : i) * j.src_stride;
  char* d = j.dst + (j.index_src ? i : id) * j.dst_stride;
  const long long nv = j.page_bytes / static_cast<long long>(sizeof(V));
  const V* sv = reinterpret_cast<const V*>(s);
  V* dv = reinterpret_cast<V*>(d);
  for (long long k = static_cast<long long>(blockIdx.y) * blockDim.x + threadIdx.x; k < nv;
       k += static_cast<long long>(gridDim.y) * blockDim.x)
    dv[k] = sv[k];
}

void launch_pages(const PageJob& j, cudaStream_t stream) {
  auto aligned = [&](unsigned a) {
    return reinterpret_cast<std::uintptr_t>(j.src) % a == 0 &&
           reinterpret_cast<std::uintptr_t>(j.dst) % a == 0 && j.src_stride % a == 0 &&
           j.dst_stride % a == 0 && j.page_bytes % a == 0;
  };
  constexpr unsigned kThreads = 256;
  auto grid = [&](long long vec) {
    const long long per_block = static_cast<long long>(kThreads) * 4 * vec;  // 4 steps/thread
    const long long y = std::min<long long>((j.page_bytes + per_block - 1) / per_block, 64);
    return dim3(static_cast<unsigned>(j.n), static_cast<unsigned>(std::max<long long>(y, 1)));
  };
  if (aligned(16))
    copy_pages<uint4><<<grid(16), kThreads, 0, stream>>>(j);
  else if (aligned(4))
    copy_pages<unsigned><<<grid(4), kThreads, 0, stream>>>(j);
  else
    copy_pages<unsigned char><<<grid(1), kThreads, 0, stream>>>(j);
  YRC_CUDA(cudaGetLastError());
}

void check_bytes(std::size_t have, std::size_t need) {
  if (have < need)
    throw std::invalid_argument("staging segment of " + std::to_string(have) +
                                " bytes is smaller than the " + std::to_string(need) +
                                " bytes to copy");
}

}  // namespace

// --- events --------------------------------------------------------------------------------------

class EventPool {
 public:
  explicit EventPool(int device) : device_(device) {}
  ~EventPool() {
    for (cudaEvent_t e : free_) cudaEventDestroy(e);  // may fail after context teardown: ignored
  }
  cudaEvent_t get() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!free_.empty()) {
        cudaEvent_t e = free_.back();
        free_.pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    // BlockingSync: a host thread waiting for a copy sleeps instead of spinning a core
    YRC_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventBlockingSync));
    return e;
  }
  void put(cudaEvent_t e) noexcept {
    std::lock_guard<std::mutex> lk(mu_);
    free_.push_back(e);
  }
  int device() const noexcept { return device_; }

 private:
  int device_;
  std::mutex mu_;
  std::vector<cudaEvent_t> free_;
};

Event::Event(std::shared_ptr<EventPool> pool, void* ev, int device)
    : pool_(std::move(pool)), ev_(ev), device_(device) {}
Event::~Event() { pool_->put(static_cast<cudaEvent_t>(ev_)); }

void Event::synchronize() const {
  DeviceScope dev(device_);
  YRC_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(ev_)));
}

bool Event::query() const {
  DeviceScope dev(device_);
  cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(ev_));
  if (e == cudaErrorNotReady) return false;
  if (e != cudaSuccess) fail(e, "cudaEventQuery");
  return true;
}

void Event::wait_on(std::uintptr_t stream) const {
  DeviceScope dev(device_);
  YRC_CUDA(cudaStreamWaitEvent(as_stream(stream), static_cast<cudaEvent_t>(ev_), 0));
}

// --- the copier ----------------------------------------------------------------------------------

struct Copier::Impl {
  int device = 0;
  std::atomic<Method> method{Method::kStaged};
  std::size_t staging_bytes = 0;
  cudaStream_t off = nullptr, load = nullptr;
  char* off_staging = nullptr;  // device staging, one per direction
  char* load_staging = nullptr;
  // A staged copy is a kernel plus a DMA that share the staging buffer: the pair is enqueued
  // under the direction's lock so two callers' pairs never interleave on the stream.
  std::mutex off_mu, load_mu;
  std::shared_ptr<EventPool> events;

  ~Impl() {
    int prev = 0;  // errors ignored: this may run after the CUDA context is gone (exit)
    if (cudaGetDevice(&prev) == cudaSuccess && prev != device) cudaSetDevice(device);
    if (off) cudaStreamSynchronize(off);
    if (load) cudaStreamSynchronize(load);
    if (off_staging) cudaFree(off_staging);
    if (load_staging) cudaFree(load_staging);
    if (off) cudaStreamDestroy(off);
    if (load) cudaStreamDestroy(load);
  }

  // `stream` waits for the work already enqueued on `other` (an event recorded now: re-recording
  // the pooled event later does not move an earlier wait).
  void order_after(cudaStream_t stream, const After& after) {
    if (after.event) {
      if (after.event->device() != device)
        throw std::invalid_argument("the event to wait for belongs to another device");
      YRC_CUDA(cudaStreamWaitEvent(stream, static_cast<cudaEvent_t>(after.event->raw()), 0));
    }
    if (!after.stream) return;
    cudaEvent_t e = events->get();
    cudaError_t rc = cudaEventRecord(e, as_stream(after.stream));
    if (rc == cudaSuccess) rc = cudaStreamWaitEvent(stream, e, 0);
    events->put(e);
    if (rc != cudaSuccess) fail(rc, "ordering after the caller's stream");
  }

  std::shared_ptr<Event> record(cudaStream_t stream, std::uintptr_t signal) {
    cudaEvent_t e = events->get();
    cudaError_t rc = cudaEventRecord(e, stream);
    if (rc == cudaSuccess && signal) rc = cudaStreamWaitEvent(as_stream(signal), e, 0);
    auto ev = std::make_shared<Event>(events, e, device);
    if (rc != cudaSuccess) fail(rc, "recording the copy's event");
    return ev;
  }

  static bool registered(const void* host) {
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, host) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return a.type == cudaMemoryTypeHost;
  }

  char* mapped(const void* host) {
    void* d = nullptr;
    YRC_CUDA(cudaHostGetDevicePointer(&d, const_cast<void*>(host), 0));
    return static_cast<char*>(d);
  }

  // Pages of v <-> packed host memory, by the current method. gather: pages -> host.
  void pages(bool gather, const copy::PagedView& v, const std::int64_t* ids, std::size_t n,
             char* host) {
    if (n == 0) return;
    const std::size_t pb = static_cast<std::size_t>(v.page_bytes);
    cudaStream_t s = gather ? off : load;
    char* staging = gather ? off_staging : load_staging;
    Method m = method.load();
    if (m == Method::kMapped && !registered(host)) m = Method::kStaged;  // pageable (host tier)
    if (m == Method::kStaged && pb > staging_bytes) m = Method::kDma;  // a page beyond staging
    if (m == Method::kDma) {
      for (std::size_t i = 0; i < n;) {
        std::size_t k = i + 1;  // merge a run of adjacent pages into one DMA
        while (k < n && ids[k] == ids[k - 1] + 1 && v.block_stride == v.page_bytes) ++k;
        char* dev = reinterpret_cast<char*>(v.base) + ids[i] * v.block_stride;
        const std::size_t bytes = (k - i) * pb;
        YRC_CUDA(gather ? cudaMemcpyAsync(host + i * pb, dev, bytes, cudaMemcpyDeviceToHost, s)
                        : cudaMemcpyAsync(dev, host + i * pb, bytes, cudaMemcpyHostToDevice, s));
        i = k;
      }
      return;
    }
    const std::size_t per = m == Method::kMapped
                                ? static_cast<std::size_t>(kMaxIds)
                                : std::min<std::size_t>(kMaxIds, staging_bytes / pb);
    char* host_dev = m == Method::kMapped ? mapped(host) : nullptr;
    for (std::size_t i = 0; i < n; i += per) {
      const std::size_t k = std::min(n, i + per);
      PageJob j{};
      j.n = static_cast<int>(k - i);
      j.page_bytes = v.page_bytes;
      for (std::size_t q = i; q < k; ++q) j.ids[q - i] = static_cast<int>(ids[q]);
      char* packed = m == Method::kMapped ? host_dev + i * pb : staging;
      if (gather) {
        j.src = reinterpret_cast<const char*>(v.base), j.src_stride = v.block_stride;
        j.dst = packed, j.dst_stride = v.page_bytes, j.index_src = 1;
        launch_pages(j, s);
        if (m == Method::kStaged)
          YRC_CUDA(cudaMemcpyAsync(host + i * pb, staging, (k - i) * pb, cudaMemcpyDeviceToHost, s));
      } else {
        if (m == Method::kStaged)
          YRC_CUDA(cudaMemcpyAsync(staging, host + i * pb, (k - i) * pb, cudaMemcpyHostToDevice, s));
        j.src = packed, j.src_stride = v.page_bytes;
        j.dst = reinterpret_cast<char*>(v.base), j.dst_stride = v.block_stride, j.index_src = 0;
        launch_pages(j, s);
      }
    }
  }

  // A dense chunk: per head, `len` rows of head_dim elements; a pitched DMA each (no kernel).
  void dense(bool gather, const copy::DenseView& v, std::int64_t b, std::int64_t t0,
             std::int64_t len, char* host) {
    cudaStream_t s = gather ? off : load;
    const std::size_t row = static_cast<std::size_t>(v.shape[3] * v.elem_bytes);
    for (std::int64_t h = 0; h < v.shape[1]; ++h) {
      char* dev = reinterpret_cast<char*>(v.base) + b * v.strides[0] + h * v.strides[1] +
                  t0 * v.strides[2];
      char* seg = host + static_cast<std::size_t>(h * len) * row;
      const auto pitch = static_cast<std::size_t>(v.strides[2]);
      YRC_CUDA(gather ? cudaMemcpy2DAsync(seg, row, dev, pitch, row, len, cudaMemcpyDeviceToHost, s)
                      : cudaMemcpy2DAsync(dev, pitch, seg, row, row, len, cudaMemcpyHostToDevice, s));
    }
  }
};

Copier::Copier(int device, CopierOptions opt) : impl_(std::make_unique<Impl>()) {
  require_device(device);
  if (opt.staging_bytes < (1u << 20))
    throw std::invalid_argument("device staging must be at least 1 MiB");
  DeviceScope dev(device);
  Impl& d = *impl_;
  d.device = device;
  d.method = opt.method;
  d.staging_bytes = opt.staging_bytes;
  d.events = std::make_shared<EventPool>(device);
  YRC_CUDA(cudaStreamCreateWithFlags(&d.off, cudaStreamNonBlocking));
  YRC_CUDA(cudaStreamCreateWithFlags(&d.load, cudaStreamNonBlocking));
  YRC_CUDA(cudaMalloc(reinterpret_cast<void**>(&d.off_staging), opt.staging_bytes));
  YRC_CUDA(cudaMalloc(reinterpret_cast<void**>(&d.load_staging), opt.staging_bytes));
}

Copier::~Copier() = default;

int Copier::device() const noexcept { return impl_->device; }
Method Copier::method() const noexcept { return impl_->method; }
void Copier::set_method(Method m) {
  std::scoped_lock lk(impl_->off_mu, impl_->load_mu);  // never between a copy's pieces
  impl_->method = m;
}
std::uintptr_t Copier::offload_stream() const noexcept {
  return reinterpret_cast<std::uintptr_t>(impl_->off);
}
std::uintptr_t Copier::load_stream() const noexcept {
  return reinterpret_cast<std::uintptr_t>(impl_->load);
}

std::shared_ptr<Event> Copier::record(std::uintptr_t stream) {
  DeviceScope dev(impl_->device);
  return impl_->record(as_stream(stream), 0);
}

std::shared_ptr<Event> Copier::gather_paged(const copy::PagedView& v, const std::int64_t* ids,
                                            std::size_t n, void* dst, std::size_t dst_bytes,
                                            const After& after) {
  copy::check_paged(v, ids, n, false);
  check_bytes(dst_bytes, copy::paged_bytes(v, n));
  DeviceScope dev(impl_->device);
  std::lock_guard<std::mutex> lk(impl_->off_mu);
  impl_->order_after(impl_->off, after);
  impl_->pages(true, v, ids, n, static_cast<char*>(dst));
  return impl_->record(impl_->off, 0);
}

std::shared_ptr<Event> Copier::scatter_paged(const copy::PagedView& v, const std::int64_t* ids,
                                             std::size_t n, const void* src, std::size_t src_bytes,
                                             const After& after, std::uintptr_t signal) {
  copy::check_paged(v, ids, n, true);
  check_bytes(src_bytes, copy::paged_bytes(v, n));
  DeviceScope dev(impl_->device);
  std::lock_guard<std::mutex> lk(impl_->load_mu);
  impl_->order_after(impl_->load, after);
  impl_->pages(false, v, ids, n, const_cast<char*>(static_cast<const char*>(src)));
  return impl_->record(impl_->load, signal);
}

std::shared_ptr<Event> Copier::gather_dense(const copy::DenseView& v, std::int64_t batch,
                                            std::int64_t t0, std::int64_t len, void* dst,
                                            std::size_t dst_bytes, const After& after) {
  copy::check_dense_range(v, batch, t0, len);
  check_bytes(dst_bytes, copy::dense_bytes(v, len));
  DeviceScope dev(impl_->device);
  std::lock_guard<std::mutex> lk(impl_->off_mu);
  impl_->order_after(impl_->off, after);
  impl_->dense(true, v, batch, t0, len, static_cast<char*>(dst));
  return impl_->record(impl_->off, 0);
}

std::shared_ptr<Event> Copier::scatter_dense(const copy::DenseView& v, std::int64_t batch,
                                             std::int64_t t0, std::int64_t len, const void* src,
                                             std::size_t src_bytes, const After& after,
                                             std::uintptr_t signal) {
  copy::check_dense_range(v, batch, t0, len);
  check_bytes(src_bytes, copy::dense_bytes(v, len));
  DeviceScope dev(impl_->device);
  std::lock_guard<std::mutex> lk(impl_->load_mu);
  impl_->order_after(impl_->load, after);
  impl_->dense(false, v, batch, t0, len, const_cast<char*>(static_cast<const char*>(src)));
  return impl_->record(impl_->load, signal);
}

// --- helpers -------------------------------------------------------------------------------------

void memcpy_sync(std::uintptr_t dst, std::uintptr_t src, std::size_t n, int kind,
                 std::uintptr_t stream) {
  static constexpr cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                             cudaMemcpyDeviceToDevice};
  if (kind < 0 || kind > 2) throw std::invalid_argument("kind must be 0 (H2D), 1 (D2H) or 2 (D2D)");
  YRC_CUDA(cudaMemcpyAsync(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n,
                           kinds[kind], as_stream(stream)));
  YRC_CUDA(cudaStreamSynchronize(as_stream(stream)));
}

void host_register(void* ptr, std::size_t n, int device) {
  require_device(device);
  DeviceScope dev(device);  // portable: usable from every device, registered from this one
  YRC_CUDA(cudaHostRegister(ptr, n, cudaHostRegisterPortable | cudaHostRegisterMapped));
}

void host_unregister(void* ptr) noexcept {
  if (cudaHostUnregister(ptr) != cudaSuccess) cudaGetLastError();
}

int require_device(int device) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw CudaUnavailable(std::string("no usable CUDA device: ") + cudaGetErrorName(e) + ": " +
                          cudaGetErrorString(e));
  }
  if (count == 0) throw CudaUnavailable("no usable CUDA device: the driver reports none");
  if (device < 0 || device >= count)
    throw std::invalid_argument("CUDA device " + std::to_string(device) + " out of range [0, " +
                                std::to_string(count) + ")");
  return count;
}

}  // namespace yrc::cuda
