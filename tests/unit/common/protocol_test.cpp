#include <doctest/doctest.h>

#include "common/protocol/messages.hpp"
#include "common/time.hpp"

using namespace cairn;
using namespace cairn::protocol;

TEST_CASE("a heartbeat survives encode and decode") {
  HeartbeatRequest hb;
  hb.boot_id = "b";
  hb.agent_version = "0.1.0";
  hb.modules = {{"base", "sha256:00", true}};
  hb.load1 = 0.5;
  hb.mem_total_bytes = 1ull << 34;
  hb.labels = {{"rack", "r1"}};
  hb.events = {{"e1", "critical", "cert.rotation_failing", "m", "t"}};
  auto back = decode_heartbeat_request(to_json(hb).dump());
  REQUIRE(back);
  CHECK(back->boot_id == "b");
  CHECK(back->modules.at(0).mounted);
  CHECK(back->load1 == doctest::Approx(0.5));
  CHECK(back->mem_total_bytes == 1ull << 34);
  CHECK(back->labels.at("rack") == "r1");
  CHECK(back->events.at(0).kind == "cert.rotation_failing");
}

TEST_CASE("malformed bodies are data errors that name the body") {
  const char* bodies[] = {"", "{", "[]", "{\"boot_id\": 5}", "{\"identity\": {}}"};
  for (const char* b : bodies) {
    CAPTURE(b);
    auto r = decode_heartbeat_request(b);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::data);
    CHECK(r.error().message.find("heartbeat body") == 0);
  }
  CHECK_FALSE(decode_enroll_request("{\"identity\": {}}"));
}

TEST_CASE("RFC 3339 times round-trip at millisecond precision") {
  const auto t = from_unix_ms(1795000000123);
  const auto s = format_rfc3339(t);
  CHECK(s == "2026-11-18T11:06:40.123Z");
  CHECK(*parse_rfc3339(s) == t);
  CHECK_FALSE(parse_rfc3339("yesterday"));
  CHECK_FALSE(parse_rfc3339("2026-11-18T08:26:40+02:00"));
  // A date or time that does not exist is refused, not rolled over by timegm.
  CHECK_FALSE(parse_rfc3339("2026-02-30T00:00:00Z"));
  CHECK_FALSE(parse_rfc3339("2026-11-18T24:00:00Z"));
  CHECK_FALSE(parse_rfc3339("2026-11-18T08:26:60Z"));
  CHECK(format_rfc3339_seconds(std::chrono::sys_seconds{std::chrono::seconds{1763454400}}) == "2025-11-18T08:26:40Z");
}
