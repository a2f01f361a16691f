// SPDX-License-Identifier: Apache-2.0
// GPUDirect Storage through libcufile, loaded with dlopen at run time (kvikio's shim pattern):
// nothing links libcufile or libcuda, so the extension imports everywhere and the cuFile rung of
// the device I/O ladder is decided on the machine that runs it. The few cuFile types used here are
// declared locally (cufile.h is not part of the CUDA toolkit on every machine).
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace yrc::gds {

struct Status {
  bool ok = false;
  std::string library;  // the path dlopen succeeded with ("" if none did)
  std::string reason;   // why cuFile is not usable (empty when ok)
  int version = 0;      // cuFileGetVersion(), 0 when unknown
};

// The process-wide driver. open() runs once (later calls return the first outcome): dlopen of the
// candidates in order, symbol resolution, cuFileDriverOpen.
class Driver {
 public:
  static Driver& instance();
  const Status& open(const std::vector<std::string>& candidates);
  Status status();   // a copy: open() may be running in another thread

  // A file registered with cuFile (the fd must be open, normally with O_DIRECT); deregistered on
  // destruction. Reads/writes move bytes between the file and device memory, blocking.
  class File {
   public:
    File(Driver& d, int fd);
    ~File();
    File(const File&) = delete;
    File& operator=(const File&) = delete;
    // Returns bytes moved (short at EOF); throws SysError / std::runtime_error on failure.
    std::size_t read(void* dev, std::size_t n, off_t file_off);
    std::size_t write(const void* dev, std::size_t n, off_t file_off);

   private:
    Driver& d_;
    void* handle_ = nullptr;
  };

  // Optional registration of a device buffer (faster in true GDS mode, no-op cost in compat).
  void buf_register(const void* dev, std::size_t n);
  void buf_deregister(const void* dev) noexcept;

 private:
  Driver() = default;
  ~Driver();
  struct Api;
  std::mutex mu_;
  bool tried_ = false;
  Status status_;
  void* lib_ = nullptr;
  std::unique_ptr<Api> api_;
  friend class File;
};

}  // namespace yrc::gds
