// The command-line value parsers of cairn-control, table-driven.
#include <doctest/doctest.h>

#include <chrono>
#include <string>

#include "common/time.hpp"
#include "control/cli/parse.hpp"

using namespace cairn;
using namespace cairn::control::cli;
using namespace std::chrono_literals;

TEST_CASE("parse_duration: a number with ms, s, m, h or d; a bare number is seconds") {
  const std::pair<const char*, std::chrono::milliseconds> good[] = {
      {"0", 0ms}, {"30", 30s}, {"30s", 30s}, {"500ms", 500ms}, {"15m", 15min},
      {"1h", 1h}, {"90d", 90 * 24h}, {"10 s", 10s},
  };
  for (const auto& [text, want] : good) {
    CAPTURE(text);
    auto d = parse_duration(text, "--x");
    REQUIRE_MESSAGE(d, (d ? "" : d.error().message));
    CHECK(*d == want);
  }
  for (const char* text : {"", "s", "-1s", "1.5s", "10w", "1 hour", "99999999999999999999d", "106751991167301d"}) {
    CAPTURE(text);
    auto d = parse_duration(text, "--heartbeat-interval");
    REQUIRE_FALSE(d);
    CHECK(d.error().code == Errc::usage);
    CHECK(d.error().message.find("--heartbeat-interval") != std::string::npos);
    CHECK(!d.error().hint.empty());
  }
}

TEST_CASE("parse_size: bytes, K/KiB, M/MiB, G/GiB") {
  const std::pair<const char*, std::size_t> good[] = {
      {"0", 0}, {"65536", 65536}, {"10B", 10}, {"64K", 64 << 10}, {"64KiB", 64 << 10}, {"1k", 1024},
      {"1M", 1 << 20}, {"1MiB", 1 << 20}, {"2G", 2ULL << 30}, {"2GiB", 2ULL << 30},
  };
  for (const auto& [text, want] : good) {
    CAPTURE(text);
    auto s = parse_size(text, "--max-body");
    REQUIRE(s);
    CHECK(*s == want);
  }
  for (const char* text : {"", "MiB", "1TB", "1.5M", "-1", "18446744073709551615G"}) {
    CAPTURE(text);
    auto s = parse_size(text, "--max-body");
    REQUIRE_FALSE(s);
    CHECK(s.error().message.find("--max-body") != std::string::npos);
  }
}

TEST_CASE("parse_listen: IPv4 or bracketed IPv6 literal and a port") {
  struct Case {
    const char* text;
    const char* host;
    std::uint16_t port;
  };
  const Case good[] = {
      {"127.0.0.1:8443", "127.0.0.1", 8443},
      {"0.0.0.0:0", "0.0.0.0", 0},
      {"[::1]:8443", "::1", 8443},
      {"[::]:65535", "::", 65535},
  };
  for (const auto& c : good) {
    CAPTURE(c.text);
    auto l = parse_listen(c.text);
    REQUIRE_MESSAGE(l, (l ? "" : l.error().message));
    CHECK(l->host == c.host);
    CHECK(l->port == c.port);
  }
  for (const char* text : {"", "127.0.0.1", "localhost:8443", "127.0.0.1:65536", "127.0.0.1:-1", "::1:8443",
                           "[::1]", "[::1]8443", "127.0.0.1:http", "[nope]:1"}) {
    CAPTURE(text);
    auto l = parse_listen(text);
    REQUIRE_FALSE(l);
    CHECK(l.error().code == Errc::usage);
  }
}

TEST_CASE("parse_label_keys: comma-separated keys, empty for none") {
  auto none = parse_label_keys("", "--node-label-keys");
  REQUIRE(none);
  CHECK(none->empty());
  auto keys = parse_label_keys("zone,rack,topology.kubernetes.io/zone", "--node-label-keys");
  REQUIRE(keys);
  CHECK(*keys == std::set<std::string, std::less<>>{"rack", "topology.kubernetes.io/zone", "zone"});
  for (const char* text : {"zone,", ",zone", "a b", "k=v", "zone,,rack"}) {
    CAPTURE(text);
    auto bad = parse_label_keys(text, "--node-label-keys");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.find("--node-label-keys") != std::string::npos);
  }
  CHECK_FALSE(parse_label_keys(std::string(64, 'k'), "--node-label-keys"));
}

TEST_CASE("parse_since: an RFC 3339 time, or a duration before now") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1893456000));
  auto at = parse_since("2030-01-01T00:00:00Z", now, "--since");
  REQUIRE(at);
  CHECK(*at == 1893456000000);
  auto ago = parse_since("15m", now, "--since");
  REQUIRE(ago);
  CHECK(*ago == 1893456000000 - 15 * 60 * 1000);
  auto bad = parse_since("yesterday", now, "--since");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == Errc::usage);
  CHECK(bad.error().message.find("--since") != std::string::npos);
}
