// Command-line value parsers of cairn-control: durations ("90d", "3600s"), sizes ("1MiB")
// and listen addresses ("127.0.0.1:8443", "[::1]:8443").
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace cairn::control::cli {

// "<n>[ms|s|m|h|d]"; a bare number is seconds. `what` names the flag in the error.
Result<std::chrono::milliseconds> parse_duration(std::string_view text, std::string_view what);

// "<n>[B|K|KiB|M|MiB|G|GiB]" (binary units); a bare number is bytes.
Result<std::size_t> parse_size(std::string_view text, std::string_view what);

struct ListenAddress {
  std::string host;  // IP literal without brackets
  std::uint16_t port = 0;
};
// "HOST:PORT" or "[V6]:PORT"; the host must be an IP literal.
Result<ListenAddress> parse_listen(std::string_view text);

// "k1,k2" -> {"k1", "k2"}; empty text -> none. Keys are 1-63 of [A-Za-z0-9._/-].
Result<std::set<std::string, std::less<>>> parse_label_keys(std::string_view text, std::string_view what);

// An RFC 3339 time, or a duration meaning that long before `now` ("15m", "2d"): Unix ms.
Result<std::int64_t> parse_since(std::string_view text, std::chrono::system_clock::time_point now,
                                 std::string_view what);

}  // namespace cairn::control::cli
