// Events control records about a node (node.unreachable, enroll.node_exists, ...), stored
// with the node's own events so `cairn-control events` shows both. Ids are stable per
// episode, so recording the same episode twice (e.g. after a restart) stores it once.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "common/clock.hpp"
#include "common/protocol/tasks.hpp"
#include "control/api_error.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

// Caps what a node sends: at most `max_events`, and each field's length (ids, kinds and
// messages are stored and shown to operators).
void cap_events(std::vector<protocol::Event>& events, std::size_t max_events);

class EventLog {
 public:
  EventLog(Store& store, const Clock& clock) : store_(store), clock_(clock) {}

  // Stores the event (a failure is logged, never returned: events must not fail a request).
  void record(const std::string& node_id, std::string event_id, std::string severity,
              std::string kind, std::string message);

  // POST /v1/events: a node's batch, each event stored once per (node, id). Every event needs
  // its idempotency id; a batch beyond kMaxEventsPerBatch is refused (413), fields are capped.
  ApiResult<protocol::EventBatchResponse> store_batch(const std::string& node_id, protocol::EventBatch batch);

 private:
  Store& store_;
  const Clock& clock_;
};

}  // namespace cairn::control
