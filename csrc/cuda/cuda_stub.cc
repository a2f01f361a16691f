// SPDX-License-Identifier: Apache-2.0
// cuda_copy.h for builds without CUDA (YRCACHE_CUDA=off or no nvcc): every entry point says so.
#include <string>

#include "common/error.h"
#include "cuda/cuda_copy.h"

namespace yrc::cuda {

namespace {
[[noreturn]] void unavailable() {
  throw CudaUnavailable(
      "CUDA support is not compiled into this build (nvcc not found or YRCACHE_CUDA=off)");
}
}  // namespace

class EventPool {};
struct Copier::Impl {};

Event::Event(std::shared_ptr<EventPool> pool, void* ev, int device)
    : pool_(std::move(pool)), ev_(ev), device_(device) {}
Event::~Event() = default;
void Event::synchronize() const { unavailable(); }
bool Event::query() const { unavailable(); }
void Event::wait_on(std::uintptr_t) const { unavailable(); }

Copier::Copier(int, CopierOptions) { unavailable(); }
Copier::~Copier() = default;
int Copier::device() const noexcept { return -1; }
Method Copier::method() const noexcept { return Method::kStaged; }
void Copier::set_method(Method) { unavailable(); }
std::uintptr_t Copier::offload_stream() const noexcept { return 0; }
std::uintptr_t Copier::load_stream() const noexcept { return 0; }
std::shared_ptr<Event> Copier::record(std::uintptr_t) { unavailable(); }
std::shared_ptr<Event> Copier::gather_paged(const copy::PagedView&, const std::int64_t*,
                                            std::size_t, void*, std::size_t, const After&) {
  unavailable();
}
std::shared_ptr<Event> Copier::scatter_paged(const copy::PagedView&, const std::int64_t*,
                                             std::size_t, const void*, std::size_t, const After&,
                                             std::uintptr_t) {
  unavailable();
}
std::shared_ptr<Event> Copier::gather_dense(const copy::DenseView&, std::int64_t, std::int64_t,
                                            std::int64_t, void*, std::size_t, const After&) {
  unavailable();
}
std::shared_ptr<Event> Copier::scatter_dense(const copy::DenseView&, std::int64_t, std::int64_t,
                                             std::int64_t, const void*, std::size_t, const After&,
                                             std::uintptr_t) {
  unavailable();
}
void memcpy_sync(std::uintptr_t, std::uintptr_t, std::size_t, int, std::uintptr_t) { unavailable(); }
void host_register(void*, std::size_t, int) { unavailable(); }
void host_unregister(void*) noexcept {}
int require_device(int) { unavailable(); }

}  // namespace yrc::cuda
