// Events control records about a node (node.unreachable, enroll.node_exists, ...), stored
// with the node's own events so `cairn-control events` shows both. Ids are stable per
// episode, so recording the same episode twice (e.g. after a restart) stores it once.
#pragma once

#include <string>

#include "common/clock.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

class EventLog {
 public:
  EventLog(Store& store, const Clock& clock) : store_(store), clock_(clock) {}

  // Stores the event (a failure is logged, never returned: events must not fail a request).
  void record(const std::string& node_id, std::string event_id, std::string severity,
              std::string kind, std::string message);

 private:
  Store& store_;
  const Clock& clock_;
};

}  // namespace cairn::control
