// SPDX-License-Identifier: Apache-2.0
#include "io/cufile.h"

#include <dlfcn.h>

#include <cerrno>
#include <stdexcept>

#include "common/error.h"
#include "cuda/cuda_copy.h"

namespace yrc::gds {

namespace {

// From cufile.h (CUDA 12/13, ABI-stable since GDS 1.0): only what is used here.
struct CUfileError_t {
  int err;     // CUfileOpError; 0 == CU_FILE_SUCCESS
  int cu_err;  // CUresult
};
constexpr int kHandleTypeOpaqueFd = 1;  // CU_FILE_HANDLE_TYPE_OPAQUE_FD
struct CUfileDescr_t {
  int type;
  union {
    int fd;
    void* handle;
  } handle;
  const void* fs_ops;
};
constexpr int kCuFileBase = 5000;  // CUFILEOP_BASE_ERR: errors below it are -errno

std::string op_error(CUfileError_t e) {
  return "cuFile error " + std::to_string(e.err) +
         (e.cu_err ? " (CUresult " + std::to_string(e.cu_err) + ")" : std::string());
}

}  // namespace

struct Driver::Api {
  CUfileError_t (*driver_open)();
  CUfileError_t (*driver_close)();
  CUfileError_t (*handle_register)(void**, CUfileDescr_t*);
  void (*handle_deregister)(void*);
  CUfileError_t (*buf_register)(const void*, std::size_t, int);
  CUfileError_t (*buf_deregister)(const void*);
  ssize_t (*read)(void*, void*, std::size_t, off_t, off_t);
  ssize_t (*write)(void*, const void*, std::size_t, off_t, off_t);
  CUfileError_t (*get_version)(int*);  // optional (GDS >= 1.9)
  bool opened = false;
};

Driver& Driver::instance() {
  static Driver* d = new Driver();  // never destroyed: cuFile must outlive every File at exit
  return *d;
}

Driver::~Driver() {
  if (api_ && api_->opened) api_->driver_close();
  if (lib_) dlclose(lib_);
}

Status Driver::status() {
  std::lock_guard<std::mutex> lk(mu_);
  return status_;
}

const Status& Driver::open(const std::vector<std::string>& candidates) {
  std::lock_guard<std::mutex> lk(mu_);
  if (tried_) return status_;
  tried_ = true;
  std::string errors;
  for (const auto& c : candidates) {
    lib_ = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib_) {
      status_.library = c;
      break;
    }
    const char* e = dlerror();
    errors += (errors.empty() ? "" : "; ") + std::string(e ? e : c);
  }
  if (!lib_) {
    status_.reason = "libcufile not loadable: " + (errors.empty() ? "no candidates" : errors);
    return status_;
  }
  auto api = std::make_unique<Api>();
  auto sym = [&](const char* name, bool required = true) -> void* {
    void* p = dlsym(lib_, name);
    if (!p && required) throw std::runtime_error(std::string("symbol ") + name + " missing");
    return p;
  };
  try {
    api->driver_open = reinterpret_cast<decltype(api->driver_open)>(sym("cuFileDriverOpen"));
    void* close = sym("cuFileDriverClose_v2", false);  // cufile.h maps the name to _v2 (1.9+)
    api->driver_close =
        reinterpret_cast<decltype(api->driver_close)>(close ? close : sym("cuFileDriverClose"));
    api->handle_register =
        reinterpret_cast<decltype(api->handle_register)>(sym("cuFileHandleRegister"));
    api->handle_deregister =
        reinterpret_cast<decltype(api->handle_deregister)>(sym("cuFileHandleDeregister"));
    api->buf_register = reinterpret_cast<decltype(api->buf_register)>(sym("cuFileBufRegister"));
    api->buf_deregister =
        reinterpret_cast<decltype(api->buf_deregister)>(sym("cuFileBufDeregister"));
    api->read = reinterpret_cast<decltype(api->read)>(sym("cuFileRead"));
    api->write = reinterpret_cast<decltype(api->write)>(sym("cuFileWrite"));
    api->get_version = reinterpret_cast<decltype(api->get_version)>(sym("cuFileGetVersion", false));
  } catch (const std::exception& e) {
    status_.reason = status_.library + ": " + e.what();
    return status_;
  }
  if (api->get_version) api->get_version(&status_.version);
  // Without a usable device, cuFileDriverOpen can block indefinitely (seen with libcufile 1.20
  // and no libcuda.so.1): never call it then.
  try {
    cuda::require_device(0);
  } catch (const std::exception& e) {
    status_.reason = std::string("cuFileDriverOpen not tried: ") + e.what();
    return status_;
  }
  CUfileError_t rc = api->driver_open();
  if (rc.err != 0) {
    status_.reason = "cuFileDriverOpen failed: " + op_error(rc);
    api_ = std::move(api);
    return status_;
  }
  api->opened = true;
  api_ = std::move(api);
  status_.ok = true;
  return status_;
}

void Driver::buf_register(const void* dev, std::size_t n) {
  if (!status_.ok) throw std::runtime_error("cuFile is not open: " + status_.reason);
  CUfileError_t rc = api_->buf_register(dev, n, 0);
  if (rc.err != 0) throw std::runtime_error("cuFileBufRegister: " + op_error(rc));
}

void Driver::buf_deregister(const void* dev) noexcept {
  if (status_.ok) api_->buf_deregister(dev);
}

Driver::File::File(Driver& d, int fd) : d_(d) {
  if (!d.status_.ok) throw std::runtime_error("cuFile is not open: " + d.status_.reason);
  CUfileDescr_t desc{};
  desc.type = kHandleTypeOpaqueFd;
  desc.handle.fd = fd;
  CUfileError_t rc = d.api_->handle_register(&handle_, &desc);
  if (rc.err != 0) {
    if (rc.err > 0 && rc.err < kCuFileBase) throw_errno(rc.err, "cuFileHandleRegister");
    throw std::runtime_error("cuFileHandleRegister: " + op_error(rc));
  }
}

Driver::File::~File() {
  if (handle_) d_.api_->handle_deregister(handle_);
}

namespace {
std::size_t check_io(ssize_t r, const char* what) {
  // cuFileRead/Write return bytes, -1 with errno set, or -CUfileOpError.
  if (r >= 0) return static_cast<std::size_t>(r);
  if (r == -1) throw_errno(errno ? errno : EIO, what);
  if (-r < kCuFileBase) throw_errno(static_cast<int>(-r), what);
  throw std::runtime_error(std::string(what) + ": cuFile error " + std::to_string(-r));
}
}  // namespace

std::size_t Driver::File::read(void* dev, std::size_t n, off_t file_off) {
  std::size_t done = 0;
  while (done < n) {  // a short read before EOF is resumed; 0 is EOF
    std::size_t r = check_io(d_.api_->read(handle_, dev, n - done, file_off + done, done),
                             "cuFileRead");
    if (r == 0) break;
    done += r;
  }
  return done;
}

std::size_t Driver::File::write(const void* dev, std::size_t n, off_t file_off) {
  std::size_t done = 0;
  while (done < n) {
    std::size_t r = check_io(d_.api_->write(handle_, dev, n - done, file_off + done, done),
                             "cuFileWrite");
    if (r == 0) throw_errno(EIO, "cuFileWrite wrote nothing");
    done += r;
  }
  return done;
}

}  // namespace yrc::gds
