// The liveness sweep: owns the Ready -> Unreachable transitions and their events. A thread
// runs one pass every sweep period (real time), judging on the injected Clock: a node not
// heard from for heartbeat_interval * unreachable_after_intervals turns Unreachable, once,
// with a node.unreachable event. Readers (/metrics, the admin views) only read the state.
#pragma once

#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/clock.hpp"
#include "control/service.hpp"
#include "control/service/auth_cache.hpp"
#include "control/service/event_log.hpp"

namespace cairn::control {

class LivenessSweep {
 public:
  LivenessSweep(const ServiceConfig& config, const Clock& clock, AuthCache& auth, EventLog& events)
      : config_(config), clock_(clock), auth_(auth), events_(events) {}
  LivenessSweep(const LivenessSweep&) = delete;
  LivenessSweep& operator=(const LivenessSweep&) = delete;
  ~LivenessSweep() { stop(); }

  void start();
  void stop();
  // One pass now; returns how many nodes turned Unreachable.
  std::size_t sweep_once();

 private:
  [[nodiscard]] std::int64_t grace_ms() const;

  const ServiceConfig& config_;
  const Clock& clock_;
  AuthCache& auth_;
  EventLog& events_;
  std::mutex sweep_mutex_;  // one pass at a time (thread and sweep_liveness())
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace cairn::control
