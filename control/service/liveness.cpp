#include "control/service/liveness.hpp"

#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::control {

std::int64_t LivenessSweep::grace_ms() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(config_.heartbeat_interval).count() *
         config_.unreachable_after_intervals;
}

std::size_t LivenessSweep::sweep_once() {
  std::lock_guard pass(sweep_mutex_);
  const auto lapsed = auth_.sweep(to_unix_ms(clock_.now()), grace_ms());
  for (const auto& l : lapsed) {
    const std::string last_seen = format_rfc3339(from_unix_ms(l.last_seen_ms));
    log::info("node.unreachable", {{"node", l.node_id}, {"last_seen", last_seen}});
    // One id per episode (the last sign of life it follows): recorded once, even if a
    // restart finds the node lapsed again.
    events_.record(l.node_id, "control.node.unreachable." + std::to_string(l.last_seen_ms), "warning",
                   "node.unreachable", "no heartbeat since " + last_seen + ": the node is Unreachable");
  }
  return lapsed.size();
}

void LivenessSweep::start() {
  sweep_once();  // at once: a restart after a long stop shows lapsed nodes as Unreachable
  thread_ = std::thread([this] {
    std::unique_lock lock(mutex_);
    while (!cv_.wait_for(lock, config_.liveness_sweep_period, [&] { return stopping_; })) {
      lock.unlock();
      sweep_once();
      lock.lock();
    }
  });
}

void LivenessSweep::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace cairn::control
