#include "agent/runtime/status_file.hpp"

#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::agent {
namespace {

Json time_or_null(const std::optional<Clock::WallTime>& t) { return t ? Json(format_rfc3339(*t)) : Json(nullptr); }

std::optional<Clock::WallTime> time_from(const Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return std::nullopt;
  auto t = parse_rfc3339(it->get<std::string>());
  return t ? std::optional(*t) : std::nullopt;
}

}  // namespace

Json to_json(const ServiceStatus& s) {
  return {{"node_id", s.node_id}, {"cert_serial", s.cert_serial}, {"last_attempt", time_or_null(s.last_attempt)}, {"last_ok", time_or_null(s.last_ok)},
          {"last_error", s.last_error}, {"server_time", s.server_time}, {"next_interval_s", s.next_interval_s},
          {"consecutive_failures", s.consecutive_failures}, {"rotation_failures", s.rotation_failures},
          {"rotation_failing_event_id", s.rotation_failing_event_id}, {"heartbeats_acked", s.heartbeats_acked}};
}

void write_status(const std::filesystem::path& state_dir, const ServiceStatus& status) {
  if (auto ok = write_file_atomic(state_dir / "status.json", dump_json(to_json(status), 2) + "\n"); !ok) {
    log::warn("status.write_failed", {{"error", ok.error().message}});
  }
}

Result<std::optional<ServiceStatus>> read_status(const std::filesystem::path& state_dir) {
  const auto path = state_dir / "status.json";
  auto text = read_file_if_exists(path, 64 * 1024);
  if (!text) return fail(text.error());
  if (!*text) return std::optional<ServiceStatus>{};
  auto status = decode_json<ServiceStatus>(**text, path.string(), [](const Json& j) {
    ServiceStatus s;
    s.node_id = j.value("node_id", "");
    s.last_attempt = time_from(j, "last_attempt");
    s.last_ok = time_from(j, "last_ok");
    s.last_error = j.value("last_error", "");
    s.server_time = j.value("server_time", "");
    s.next_interval_s = j.value("next_interval_s", std::int64_t{0});
    s.consecutive_failures = j.value("consecutive_failures", 0);
    s.rotation_failures = j.value("rotation_failures", 0);
    s.cert_serial = j.value("cert_serial", "");
    s.rotation_failing_event_id = j.value("rotation_failing_event_id", "");
    s.heartbeats_acked = j.value("heartbeats_acked", std::uint64_t{0});
    return s;
  });
  if (!status) return fail(status.error());
  return std::optional<ServiceStatus>(std::move(*status));
}

}  // namespace cairn::agent
