// SPDX-License-Identifier: Apache-2.0
#include "io/faults.h"

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace yrc {

namespace {
int parse_op(const std::string& s) {
  if (s == "read") return 0;
  if (s == "write") return 1;
  if (s == "fsync") return 2;
  if (s == "fallocate") return 3;
  if (s == "any") return -1;
  throw std::invalid_argument("fault spec: unknown op '" + s +
                              "' (read|write|fsync|fallocate|any)");
}
constexpr std::uint32_t kMaxDelayMs = 600000;  // ten minutes: longer is a hang, not a test

// "delay<ms>" -> ms; item is the whole rule, for the message.
std::uint32_t parse_delay(const std::string& s, const std::string& item) {
  const std::string n = s.substr(5);
  // At most 6 digits: no overflow before the range check.
  bool digits = !n.empty() && n.size() <= 6;
  for (char ch : n) digits = digits && ch >= '0' && ch <= '9';
  const long v = digits ? std::strtol(n.c_str(), nullptr, 10) : 0;
  if (v < 1 || v > static_cast<long>(kMaxDelayMs))
    throw std::invalid_argument("fault spec: delay needs milliseconds in 1.." +
                                std::to_string(kMaxDelayMs) + " (e.g. read:delay20@1+), got '" +
                                item + "'");
  return static_cast<std::uint32_t>(v);
}

int parse_fault(const std::string& s) {
  if (s == "short") return 0;
  if (s == "eio") return EIO;
  if (s == "enospc") return ENOSPC;
  if (s == "eagain") return EAGAIN;
  if (s == "eintr") return EINTR;
  if (s == "einval") return EINVAL;
  if (s == "eperm") return EPERM;
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (!s.empty() && end && *end == '\0' && v > 0 && v < 4096) return static_cast<int>(v);
  throw std::invalid_argument("fault spec: unknown fault '" + s +
                              "' (eio|enospc|eagain|eintr|einval|eperm|short|<errno>|delay<ms>)");
}
}  // namespace

void FaultInjector::set(const std::string& spec) {
  std::vector<Rule> rules;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    auto colon = item.find(':');
    auto at = item.find('@');
    if (colon == std::string::npos || at == std::string::npos || at < colon)
      throw std::invalid_argument("fault spec: expected op:fault@N, got '" + item + "'");
    Rule r{};
    r.op = parse_op(item.substr(0, colon));
    const std::string fault = item.substr(colon + 1, at - colon - 1);
    if (fault.compare(0, 5, "delay") == 0)
      r.delay_ms = parse_delay(fault, item);
    else
      r.err = parse_fault(fault);
    std::string n = item.substr(at + 1);
    r.repeat = !n.empty() && n.back() == '+';
    if (r.repeat) n.pop_back();
    char* end = nullptr;
    long long v = std::strtoll(n.c_str(), &end, 10);
    if (n.empty() || *end != '\0' || v < 1)
      throw std::invalid_argument("fault spec: N must be a positive integer in '" + item + "'");
    r.nth = static_cast<std::uint64_t>(v);
    rules.push_back(r);
  }
  std::lock_guard<std::mutex> lk(mu_);
  rules_ = std::move(rules);
  for (auto& c : counts_) c = 0;
  any_count_ = 0;
  spec_ = spec;
  enabled_.store(!rules_.empty(), std::memory_order_relaxed);
}

std::string FaultInjector::spec() const {
  std::lock_guard<std::mutex> lk(mu_);
  return spec_;
}

std::int64_t FaultInjector::apply(IoClass c, std::int64_t res) {
  if (!enabled()) return res;
  std::uint64_t delay_ms = 0;
  std::int64_t out = res;
  {
    // Held while matching only: a sleeping delay must not stall the other threads' I/Os.
    std::lock_guard<std::mutex> lk(mu_);
    const int ci = static_cast<int>(c);
    const std::uint64_t n_op = ++counts_[ci];
    const std::uint64_t n_any = ++any_count_;
    for (const Rule& r : rules_) {
      if (r.op != -1 && r.op != ci) continue;
      const std::uint64_t n = r.op == -1 ? n_any : n_op;
      if (n != r.nth && !(r.repeat && n > r.nth)) continue;
      if (r.delay_ms > 0) {
        delay_ms += r.delay_ms;
        continue;
      }
      if (r.err > 0) out = -r.err;
      else if (res > 1) out = res / 2;  // short transfer
      break;
    }
  }
  if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  return out;
}

}  // namespace yrc
