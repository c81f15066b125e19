// StopSignal: SIGTERM and SIGINT as a file descriptor (signalfd), so the service loop sleeps
// on its Clock with this fd as the wake-up and leaves at once, between two requests.
#pragma once

#include <pthread.h>

#include "common/clock.hpp"
#include "common/fd.hpp"

namespace cairn::agent {

class StopSignal {
 public:
  // Blocks SIGTERM/SIGINT for the calling thread and opens the signalfd; that thread is the
  // one that waits.
  StopSignal();
  // Reads what is still pending, so unblocking does not deliver it (the default action
  // would kill a process that already stopped cleanly).
  ~StopSignal();
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;

  // Sleeps on `clock` until `deadline`; true if a stop signal arrived (now or before).
  bool wait_until(const Clock& clock, Clock::MonoTime deadline);
  // True if a stop signal arrived, without sleeping.
  bool poll();
  [[nodiscard]] bool stopped() const { return stopped_; }

  // Sends SIGTERM to the waiting thread, as `kill` would to the process (tests; any thread).
  void request() const;

 private:
  void drain();
  UniqueFd fd_;
  pthread_t owner_;
  bool stopped_ = false;
};

}  // namespace cairn::agent
