// StopSignal: SIGTERM and SIGINT as a file descriptor (signalfd), so the service loop sleeps
// in poll(2) and wakes at once, between two requests, to exit cleanly.
#pragma once

#include <chrono>

#include "common/fd.hpp"

namespace cairn::agent {

class StopSignal {
 public:
  StopSignal();  // blocks SIGTERM/SIGINT for the calling thread and opens the signalfd
  ~StopSignal();
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;

  // Sleeps up to `timeout`; true if a stop signal arrived (now or before).
  bool wait(std::chrono::milliseconds timeout);
  [[nodiscard]] bool stopped() const { return stopped_; }

 private:
  UniqueFd fd_;
  bool stopped_ = false;
};

}  // namespace cairn::agent
