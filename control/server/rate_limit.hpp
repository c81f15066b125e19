// A token bucket for unauthenticated work (/v1/enroll): `rate` requests a second on average,
// bursts of up to `burst`. Shared by every io thread; taken at most once per request, so a
// mutex costs nothing next to what it guards (a CSR signature and a database commit).
#pragma once

#include <algorithm>
#include <chrono>
#include <mutex>

namespace cairn::control::server {

class TokenBucket {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  // rate <= 0: unlimited.
  TokenBucket(double rate_per_second, double burst)
      : rate_(rate_per_second), burst_(std::max(1.0, burst)), tokens_(burst_) {}

  bool try_take(TimePoint now) {
    if (rate_ <= 0) return true;
    std::lock_guard lock(mutex_);
    if (last_ != TimePoint{}) {
      const double elapsed = std::chrono::duration<double>(now - last_).count();
      tokens_ = std::min(burst_, tokens_ + std::max(0.0, elapsed) * rate_);
    }
    last_ = now;
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }

  // Whole seconds until one token is back at the configured rate (Retry-After), at least 1.
  [[nodiscard]] long retry_after_seconds() const {
    return rate_ <= 0 ? 0 : std::max(1L, static_cast<long>(1.0 / rate_ + 0.999));
  }

 private:
  const double rate_;
  const double burst_;
  std::mutex mutex_;
  double tokens_;
  TimePoint last_{};
};

}  // namespace cairn::control::server
