// RFC 3339 timestamps (UTC, "Z") for the wire protocol and logs.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace cairn {

std::string format_rfc3339(std::chrono::system_clock::time_point t);  // 2026-11-25T13:00:00.123Z
std::string format_rfc3339_seconds(std::chrono::sys_seconds t);      // 2026-11-25T13:00:00Z
// UTC only (a trailing Z), an optional fraction; a date or time of day that does not exist
// (2026-02-30, 24:00, a leap second) is refused rather than rolled over.
Result<std::chrono::system_clock::time_point> parse_rfc3339(std::string_view text);
std::int64_t to_unix_ms(std::chrono::system_clock::time_point t);
std::chrono::system_clock::time_point from_unix_ms(std::int64_t ms);

}  // namespace cairn
