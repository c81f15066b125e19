// Clock: every wall-clock and monotonic reading goes through one, so leases, certificate
// rotation and backoff are tested in milliseconds and deterministically (STYLE.md 10).
// Waits go through it too: a loop that sleeps on its Clock can be driven by a test's clock.
#pragma once

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <system_error>

namespace cairn {

class Clock {
 public:
  using WallTime = std::chrono::system_clock::time_point;
  using MonoTime = std::chrono::steady_clock::time_point;
  virtual ~Clock() = default;
  [[nodiscard]] virtual WallTime now() const = 0;
  [[nodiscard]] virtual MonoTime monotonic() const = 0;
  // Blocks until `wake_fd` is readable (true) or monotonic() reaches `deadline` (false).
  // wake_fd -1: a plain sleep. A deadline already passed still reports a readable fd.
  virtual bool sleep_until(MonoTime deadline, int wake_fd = -1) const = 0;
};

class SystemClock final : public Clock {
 public:
  [[nodiscard]] WallTime now() const override { return std::chrono::system_clock::now(); }
  [[nodiscard]] MonoTime monotonic() const override { return std::chrono::steady_clock::now(); }
  bool sleep_until(MonoTime deadline, int wake_fd = -1) const override {
    for (;;) {
      // Rounded up: waking a millisecond early would only loop once more.
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - monotonic()).count();
      pollfd pfd{wake_fd, POLLIN, 0};
      const int n = ::poll(&pfd, wake_fd >= 0 ? 1 : 0, static_cast<int>(std::clamp<long long>(left, 0, INT_MAX)));
      if (n > 0) return true;
      if (n < 0 && errno != EINTR) throw std::system_error(errno, std::generic_category(), "poll");
      if (left <= 0) return false;
    }
  }
  static const SystemClock& instance() {
    static const SystemClock clock;
    return clock;
  }
};

}  // namespace cairn
