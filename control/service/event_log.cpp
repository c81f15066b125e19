#include "control/service/event_log.hpp"

#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::control {

void EventLog::record(const std::string& node_id, std::string event_id, std::string severity,
                      std::string kind, std::string message) {
  const auto now = clock_.now();
  NodeEventRecord e{node_id,        std::move(event_id),   std::move(severity), std::move(kind),
                    std::move(message), format_rfc3339(now), to_unix_ms(now)};
  if (auto ok = store_.insert_events({&e, 1}); !ok) {
    log::error("event.store_failed", {{"node", node_id}, {"kind", e.kind}, {"message", ok.error().message}});
  }
}

}  // namespace cairn::control
