// Helpers shared by the protocol's JSON codecs (messages.cpp, tasks.cpp); not an interface.
// They throw nlohmann's exceptions on a field of the wrong type: call them only inside the
// decode_json / decode_object callbacks, which turn that into Errc::data naming the body.
#pragma once

#include <string>

#include "common/json.hpp"
#include "common/protocol/messages.hpp"

namespace cairn::protocol::detail {

// Optional fields default; present fields of the wrong type throw (see above).
template <class T>
void get_opt(const Json& j, const char* key, T& out) {
  if (auto it = j.find(key); it != j.end() && !it->is_null()) out = it->get<T>();
}

// One event, as heartbeats and event batches carry it.
inline Json event_json(const Event& v) {
  return {{"id", v.id}, {"severity", v.severity}, {"kind", v.kind}, {"message", v.message}, {"time", v.time}};
}

inline Event event_from(const Json& e) {
  Event ev;
  ev.id = e.at("id").get<std::string>();
  get_opt(e, "severity", ev.severity);
  get_opt(e, "kind", ev.kind);
  get_opt(e, "message", ev.message);
  get_opt(e, "time", ev.time);
  return ev;
}

}  // namespace cairn::protocol::detail
