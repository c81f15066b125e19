// A Clock that moves only when the test says so: "token expired" and "Unreachable after
// grace" become instant and deterministic. Safe to read from other threads.
#pragma once

#include <atomic>
#include <chrono>

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
  }
  void set(WallTime t) { wall_ns_ = t.time_since_epoch().count(); }

 private:
  std::atomic<WallTime::duration::rep> wall_ns_;
  std::atomic<MonoTime::duration::rep> mono_ns_{0};
};

}  // namespace cairn::test
