// JSON at the edges: nlohmann parsing that returns a Result instead of throwing.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace cairn {

using Json = nlohmann::json;

// `what` names the input in the error ("heartbeat body", "GCP metadata response").
Result<Json> parse_json(std::string_view text, std::string_view what);

// The one way any JSON leaves a process (wire bodies, state files, --json output): invalid
// UTF-8 in a string (DMI, fw-cfg, metadata answers) becomes U+FFFD instead of an exception.
// indent < 0: compact; otherwise pretty-printed with that many spaces.
std::string dump_json(const Json& j, int indent = -1);

// Runs fn(json) -> T, turning nlohmann's type and missing-key exceptions into Errc::data.
template <class T, class Fn>
Result<T> decode_json(std::string_view text, std::string_view what, Fn&& fn) {
  auto j = parse_json(text, what);
  if (!j) return fail(j.error());
  try {
    return fn(*j);
  } catch (const nlohmann::json::exception& e) {
    return fail(Errc::data, std::string(what) + ": " + e.what());
  }
}

}  // namespace cairn
