// SPDX-License-Identifier: Apache-2.0
// Exceptions thrown at API edges only. Worker threads never throw: they carry -errno results.
#pragma once
#include <cerrno>
#include <stdexcept>
#include <string>
#include <utility>

namespace yrc {

// An operating-system error with its errno; the bindings turn it into the matching OSError
// subclass (FileNotFoundError, PermissionError, ...) carrying errno and the file name.
class SysError : public std::runtime_error {
 public:
  SysError(int err, const std::string& what, std::string path = {})
      : std::runtime_error(what), err_(err), path_(std::move(path)) {}
  int err() const noexcept { return err_; }
  const std::string& path() const noexcept { return path_; }

 private:
  int err_;
  std::string path_;
};

// Raised when an engine (or file) is used after close().
class ClosedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A backend was asked for by name but cannot run here.
class BackendUnavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A CUDA runtime call failed; what() starts with the CUDA error's name (cudaErrorInvalidValue...).
class CudaError : public std::runtime_error {
 public:
  CudaError(std::string name, const std::string& what)
      : std::runtime_error(name + ": " + what), name_(std::move(name)) {}
  const std::string& name() const noexcept { return name_; }

 private:
  std::string name_;
};

// CUDA was asked for but cannot run here: not compiled in, no driver, or no device.
class CudaUnavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "name must be in [lo, hi], got x": the one wording of every range check, the same as the
// Python layer's (yrcache/_args.py).
[[noreturn]] inline void throw_range(const std::string& name, long long lo, long long hi,
                                     const std::string& got) {
  throw std::invalid_argument(name + " must be in [" + std::to_string(lo) + ", " +
                              std::to_string(hi) + "], got " + got);
}

template <typename T>
void check_range(T v, const std::string& name, long long lo, long long hi) {
  if (v < static_cast<T>(lo) || v > static_cast<T>(hi)) throw_range(name, lo, hi, std::to_string(v));
}

[[noreturn]] inline void throw_errno(int err, const std::string& what, const std::string& path = {}) {
  throw SysError(err, what, path);
}

}  // namespace yrc

// Argument checks at API edges: std::invalid_argument becomes ValueError in Python.
#define YR_CHECK_ARG(cond, msg)                                   \
  do {                                                            \
    if (!(cond)) throw std::invalid_argument(std::string(msg));   \
  } while (0)
