#include "control/service/event_log.hpp"

#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::control {

void EventLog::record(const std::string& node_id, std::string event_id, std::string severity,
                      std::string kind, std::string message) {
  const auto now = clock_.now();
  NodeEventRecord e;
  e.node_id = node_id;
  e.event_id = std::move(event_id);
  e.severity = std::move(severity);
  e.kind = std::move(kind);
  e.message = std::move(message);
  e.time = format_rfc3339(now);
  e.received_at_ms = to_unix_ms(now);
  if (auto ok = store_.insert_events({&e, 1}); !ok) {
    log::error("event.store_failed", {{"node", node_id}, {"kind", e.kind}, {"message", ok.error().message}});
  }
}

}  // namespace cairn::control
