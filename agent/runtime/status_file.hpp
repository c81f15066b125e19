// status.json under the agent's state dir: what the service last saw, for `cairn-agent status`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "common/clock.hpp"
#include "common/json.hpp"
#include "common/result.hpp"

namespace cairn::agent {

struct ServiceStatus {
  std::string node_id;
  std::string cert_serial;  // the certificate the service runs on
  std::optional<Clock::WallTime> last_attempt;
  std::optional<Clock::WallTime> last_ok;
  std::string last_error;  // empty when the last heartbeat succeeded
  std::string server_time;
  std::int64_t next_interval_s = 0;
  int consecutive_failures = 0;
  int rotation_failures = 0;
  // The id of the critical cert.rotation_failing event of the current failure episode; empty
  // when rotation is not failing (or not for long enough to alert).
  std::string rotation_failing_event_id;
  // Heartbeats control answered with 2xx, over every run of the service for this node: each
  // one control acknowledged must be in its store.
  std::uint64_t heartbeats_acked = 0;
};

// Written atomically; a failure to write is logged, never fatal to the loop.
void write_status(const std::filesystem::path& state_dir, const ServiceStatus& status);
Result<std::optional<ServiceStatus>> read_status(const std::filesystem::path& state_dir);
Json to_json(const ServiceStatus& status);

}  // namespace cairn::agent
