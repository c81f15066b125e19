#include "control/service/event_log.hpp"

#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::control {
namespace {

constexpr std::size_t kMaxEventIdBytes = 128;
constexpr std::size_t kMaxEventFieldBytes = 128;
constexpr std::size_t kMaxEventMessageBytes = 4096;

}  // namespace

void cap_events(std::vector<protocol::Event>& events, std::size_t max_events) {
  if (events.size() > max_events) events.resize(max_events);
  for (auto& e : events) {
    if (e.id.size() > kMaxEventIdBytes) e.id.resize(kMaxEventIdBytes);
    if (e.severity.size() > kMaxEventFieldBytes) e.severity.resize(kMaxEventFieldBytes);
    if (e.kind.size() > kMaxEventFieldBytes) e.kind.resize(kMaxEventFieldBytes);
    if (e.time.size() > kMaxEventFieldBytes) e.time.resize(kMaxEventFieldBytes);
    if (e.message.size() > kMaxEventMessageBytes) e.message.resize(kMaxEventMessageBytes);
  }
}

ApiResult<protocol::EventBatchResponse> EventLog::store_batch(const std::string& node_id, protocol::EventBatch batch) {
  if (batch.events.size() > protocol::kMaxEventsPerBatch) {
    return refuse(413, "batch_too_large",
                  "event batch of " + std::to_string(batch.events.size()) + " events; at most " +
                      std::to_string(protocol::kMaxEventsPerBatch) + " per request",
                  "send the buffer in smaller batches");
  }
  for (std::size_t i = 0; i < batch.events.size(); ++i) {
    if (batch.events[i].id.empty()) {
      return refuse(400, "invalid_request", "events[" + std::to_string(i) + "].id: missing",
                    "give every event an idempotency id (it is stored once per node)");
    }
  }
  cap_events(batch.events, protocol::kMaxEventsPerBatch);
  const auto now = clock_.now();
  std::vector<NodeEventRecord> records;
  records.reserve(batch.events.size());
  for (auto& ev : batch.events) {
    NodeEventRecord e;
    e.node_id = node_id;
    e.event_id = std::move(ev.id);
    e.severity = ev.severity.empty() ? "info" : std::move(ev.severity);
    e.kind = std::move(ev.kind);
    e.message = std::move(ev.message);
    e.time = ev.time.empty() ? format_rfc3339(now) : std::move(ev.time);
    e.received_at_ms = to_unix_ms(now);
    records.push_back(std::move(e));
  }
  auto stored = store_.insert_events(records);
  if (!stored) {
    log::error("event.store_failed", {{"node", node_id}, {"count", records.size()}, {"message", stored.error().message}});
    return refuse(503, "store_error", stored.error().message, "retry the batch after a backoff");
  }
  protocol::EventBatchResponse out;
  out.accepted = *stored;
  out.duplicates = static_cast<std::int64_t>(records.size()) - *stored;
  return out;
}

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
