#include <doctest/doctest.h>

#include <chrono>

#include "agent/cli/status.hpp"
#include "common/time.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace std::chrono;

namespace {

const char* kNode = "4c4c4544-0042-3510-8053-b7c04f4e4b32";

CertInfo cert_until(Clock::WallTime not_after) {
  CertInfo c;
  c.subject_cn = kNode;
  c.serial_hex = "0a1b2c";
  c.not_before = not_after - hours(24 * 90);
  c.not_after = not_after;
  return c;
}

}  // namespace

TEST_CASE("status of a node off past its certificate's expiry says it needs a token bound to its id") {
  const auto not_after = system_clock::time_point(seconds(1893456000));
  const auto r = cli::certificate_report(cert_until(not_after), not_after + hours(24 * 30));
  CHECK(r.details["expired"] == true);
  CHECK(r.details["not_after"] == format_rfc3339(not_after));
  CHECK(r.human.find("EXPIRED at " + format_rfc3339(not_after)) != std::string::npos);
  CHECK(r.human.find("re-enrollment with a token bound to its id") != std::string::npos);
  const std::string command = std::string("cairn-control token create --expect-id ") + kNode;
  CHECK(r.human.find(command) != std::string::npos);
  CHECK(r.human.find("cairn-agent enroll") != std::string::npos);
  REQUIRE(r.details.contains("action"));
  CHECK(r.details["action"].get<std::string>().find(command) != std::string::npos);
}

TEST_CASE("status of a valid certificate gives the hours left and no action") {
  const auto not_after = system_clock::time_point(seconds(1893456000));
  const auto r = cli::certificate_report(cert_until(not_after), not_after - hours(49) - minutes(30));
  CHECK(r.details["expired"] == false);
  CHECK_FALSE(r.details.contains("action"));
  CHECK(r.human.find("(49 h left)") != std::string::npos);
  CHECK(r.human.find("EXPIRED") == std::string::npos);
  CHECK(r.human.find("--expect-id") == std::string::npos);
  // The instant of expiry is already expired: control refuses a certificate at not_after.
  CHECK(cli::certificate_report(cert_until(not_after), not_after).details["expired"] == true);
}
