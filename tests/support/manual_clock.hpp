// A Clock that moves only when the test says so: "token expired" and "Unreachable after
// grace" become instant and deterministic. Safe to read from other threads.
//
// A thread that sleeps on it (sleep_until) wakes when the test advances the clock past its
// deadline, or when its wake fd becomes readable; the test can wait until a thread sleeps
// and see when it will wake, so a loop under test is stepped one sleep at a time.
#pragma once

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <system_error>

#include "common/clock.hpp"

namespace cairn::test {

class ManualClock final : public Clock {
 public:
  // 2030-01-01T00:00:00Z: a fixed start, inside any test CA's validity.
  explicit ManualClock(WallTime start = WallTime(std::chrono::seconds(1893456000)))
      : wall_ns_(start.time_since_epoch().count()) {}

  [[nodiscard]] WallTime now() const override {
    return WallTime(WallTime::duration(wall_ns_.load()));
  }
  [[nodiscard]] MonoTime monotonic() const override {
    return MonoTime(MonoTime::duration(mono_ns_.load()));
  }
  void advance(std::chrono::nanoseconds d) {
    wall_ns_ += std::chrono::duration_cast<WallTime::duration>(d).count();
    mono_ns_ += std::chrono::duration_cast<MonoTime::duration>(d).count();
    wake_sleepers();
  }
  void set(WallTime t) {
    wall_ns_ = t.time_since_epoch().count();
    wake_sleepers();
  }

  // Sleeps in real time until the manual time reaches `deadline` or wake_fd is readable.
  bool sleep_until(MonoTime deadline, int wake_fd = -1) const override {
    Sleeper self{deadline, eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
    if (self.event_fd < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
    std::list<Sleeper>::iterator it;
    {
      std::lock_guard lock(mutex_);
      it = sleepers_.insert(sleepers_.end(), self);
      ++sleeps_started_;
    }
    changed_.notify_all();
    bool woken = false;
    for (;;) {
      pollfd fds[2] = {{self.event_fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
      const bool due = monotonic() >= deadline;
      const int n = ::poll(fds, wake_fd >= 0 ? 2 : 1, due ? 0 : -1);
      if (n < 0 && errno != EINTR) throw std::system_error(errno, std::generic_category(), "poll");
      if (n > 0 && (fds[1].revents & POLLIN) != 0) {
        woken = true;
        break;
      }
      if (due) break;
      std::uint64_t drained = 0;
      while (::read(self.event_fd, &drained, sizeof drained) == sizeof drained) {
      }
    }
    {
      std::lock_guard lock(mutex_);
      sleepers_.erase(it);
    }
    ::close(self.event_fd);
    changed_.notify_all();
    return woken;
  }

  // Waits (in real time, up to `timeout`) until a thread sleeps on this clock with a deadline
  // still ahead, that is until the code under test has nothing to do before time moves.
  bool wait_for_sleeper(std::chrono::milliseconds timeout = std::chrono::seconds(10)) const {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return earliest_locked().has_value(); });
  }
  // The earliest deadline of the threads sleeping on this clock, if any.
  [[nodiscard]] std::optional<MonoTime> next_wake() const {
    std::lock_guard lock(mutex_);
    return earliest_locked();
  }
  // How long until the earliest sleeper wakes; zero when nobody sleeps.
  [[nodiscard]] std::chrono::nanoseconds until_next_wake() const {
    const auto next = next_wake();
    return next ? std::max(std::chrono::nanoseconds(0), *next - monotonic()) : std::chrono::nanoseconds(0);
  }
  // Waits for a sleeper, then moves time to its deadline. False when nobody slept in time.
  bool advance_to_next_wake(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    if (!wait_for_sleeper(timeout)) return false;
    advance(until_next_wake());
    return true;
  }
  // How many sleeps began since the clock was made (a loop's turns, seen from outside).
  [[nodiscard]] std::uint64_t sleeps_started() const {
    std::lock_guard lock(mutex_);
    return sleeps_started_;
  }

 private:
  struct Sleeper {
    MonoTime deadline;
    int event_fd;
  };

  // Sleepers whose deadline has passed are waking up, not sleeping.
  [[nodiscard]] std::optional<MonoTime> earliest_locked() const {
    std::optional<MonoTime> earliest;
    const auto t = monotonic();
    for (const auto& s : sleepers_) {
      if (s.deadline > t && (!earliest || s.deadline < *earliest)) earliest = s.deadline;
    }
    return earliest;
  }

  void wake_sleepers() {
    {
      std::lock_guard lock(mutex_);
      const std::uint64_t one = 1;
      for (const auto& s : sleepers_) {
        [[maybe_unused]] const auto n = ::write(s.event_fd, &one, sizeof one);
      }
    }
    changed_.notify_all();
  }

  std::atomic<WallTime::duration::rep> wall_ns_;
  std::atomic<MonoTime::duration::rep> mono_ns_{0};
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  mutable std::list<Sleeper> sleepers_;
  mutable std::uint64_t sleeps_started_ = 0;
};

}  // namespace cairn::test
