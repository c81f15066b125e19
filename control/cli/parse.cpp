// Parsers of the command-line values of cairn-control.
#include "control/cli/parse.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <limits>

#include "common/time.hpp"

namespace cairn::control::cli {
namespace {

// Splits "123abc" into 123 and "abc"; false if there is no leading number.
bool split_number(std::string_view text, std::uint64_t& number, std::string_view& unit) {
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, number);
  if (ec != std::errc() || ptr == text.data()) return false;
  unit = std::string_view(ptr, static_cast<std::size_t>(end - ptr));
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  return true;
}

}  // namespace

Result<std::chrono::milliseconds> parse_duration(std::string_view text, std::string_view what) {
  std::uint64_t n = 0;
  std::string_view unit;
  const auto bad = [&] {
    return fail(Errc::usage, std::string(what) + ": not a duration ('" + std::string(text) + "')",
                "write a number with a unit: 500ms, 30s, 15m, 1h, 90d");
  };
  if (!split_number(text, n, unit)) return bad();
  std::uint64_t ms_per_unit = 0;
  if (unit.empty() || unit == "s") ms_per_unit = 1000;
  else if (unit == "ms") ms_per_unit = 1;
  else if (unit == "m") ms_per_unit = 60'000;
  else if (unit == "h") ms_per_unit = 3'600'000;
  else if (unit == "d") ms_per_unit = 86'400'000;
  else return bad();
  if (n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) / ms_per_unit) return bad();
  return std::chrono::milliseconds(static_cast<std::int64_t>(n * ms_per_unit));
}

Result<std::size_t> parse_size(std::string_view text, std::string_view what) {
  std::uint64_t n = 0;
  std::string_view unit;
  const auto bad = [&] {
    return fail(Errc::usage, std::string(what) + ": not a size ('" + std::string(text) + "')",
                "write a number with a unit: 65536, 64KiB, 1MiB");
  };
  if (!split_number(text, n, unit)) return bad();
  std::uint64_t factor = 0;
  if (unit.empty() || unit == "B") factor = 1;
  else if (unit == "K" || unit == "KiB" || unit == "k") factor = 1ULL << 10;
  else if (unit == "M" || unit == "MiB") factor = 1ULL << 20;
  else if (unit == "G" || unit == "GiB") factor = 1ULL << 30;
  else return bad();
  if (n > std::numeric_limits<std::size_t>::max() / factor) return bad();
  return static_cast<std::size_t>(n * factor);
}

Result<ListenAddress> parse_listen(std::string_view text) {
  const auto bad = [&](std::string why) {
    return fail(Errc::usage, "--listen '" + std::string(text) + "': " + why,
                "write HOST:PORT with an IP literal, e.g. 127.0.0.1:8443 or [::1]:8443");
  };
  ListenAddress out;
  std::string_view port_text;
  if (text.starts_with("[")) {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return bad("an IPv6 address needs [ADDR]:PORT");
    }
    out.host = std::string(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad("no port");
    out.host = std::string(text.substr(0, colon));
    if (out.host.find(':') != std::string::npos) return bad("put an IPv6 address in brackets");
    port_text = text.substr(colon + 1);
  }
  if (out.host.empty()) return bad("no host");
  unsigned char addr[16];
  if (::inet_pton(AF_INET, out.host.c_str(), addr) != 1 && ::inet_pton(AF_INET6, out.host.c_str(), addr) != 1) {
    return bad("'" + out.host + "' is not an IP address");
  }
  unsigned port = 0;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || ptr != port_text.data() + port_text.size() || port > 65535 || port_text.empty()) {
    return bad("port is not a number in 0..65535");
  }
  out.port = static_cast<std::uint16_t>(port);
  return out;
}

Result<std::set<std::string, std::less<>>> parse_label_keys(std::string_view text, std::string_view what) {
  std::set<std::string, std::less<>> keys;
  if (text.empty()) return keys;
  for (;;) {
    const auto comma = text.find(',');
    const auto key = text.substr(0, comma);
    const bool ok = !key.empty() && key.size() <= 63 &&
                    std::all_of(key.begin(), key.end(), [](char c) {
                      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                             c == '.' || c == '_' || c == '-' || c == '/';
                    });
    if (!ok) {
      return fail(Errc::usage, std::string(what) + ": '" + std::string(key.substr(0, 80)) + "' is not a label key",
                  "write keys of 1-63 letters, digits, '.', '_', '-', '/', separated by commas: zone,rack");
    }
    keys.emplace(key);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return keys;
}

Result<std::int64_t> parse_since(std::string_view text, std::chrono::system_clock::time_point now,
                                 std::string_view what) {
  if (auto t = parse_rfc3339(text)) return to_unix_ms(*t);
  if (auto d = parse_duration(text, what)) return to_unix_ms(now) - d->count();
  return fail(Errc::usage, std::string(what) + ": '" + std::string(text.substr(0, 80)) + "' is neither a time nor a duration",
              "write an RFC 3339 time (2030-01-01T00:00:00Z) or how long ago (15m, 2h, 7d)");
}

}  // namespace cairn::control::cli
