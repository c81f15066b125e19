// Prometheus text rendering of the server's counters (exposition format 0.0.4).
#include <doctest/doctest.h>

#include <chrono>
#include <sstream>
#include <string>

#include "control/server/metrics.hpp"
#include "tests/unit/control/control_fixture.hpp"

using namespace cairn;
using namespace cairn::test;
using namespace cairn::control::server;
using namespace std::chrono_literals;

namespace {

// The value of the one sample line that starts with `series ` (-1 if absent or repeated).
double sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  double value = -1;
  int found = 0;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) {
      value = std::stod(line.substr(series.size() + 1));
      ++found;
    }
  }
  return found == 1 ? value : -1;
}

}  // namespace

TEST_CASE("metrics: requests by endpoint and status, and a cumulative latency histogram") {
  Metrics m;
  m.record_request(Endpoint::heartbeat, 200, 500us);   // <= 1 ms
  m.record_request(Endpoint::heartbeat, 200, 3ms);     // <= 5 ms
  m.record_request(Endpoint::heartbeat, 503, 10s);     // beyond 5 s: +Inf only
  m.record_request(Endpoint::enroll, 401, 20ms);
  m.record_request(Endpoint::other, 999, 1ms);         // out of range: counted as status 0
  const auto text = m.render(nullptr);

  CHECK(sample(text, R"(cairn_http_requests_total{endpoint="heartbeat",status="200"})") == 2);
  CHECK(sample(text, R"(cairn_http_requests_total{endpoint="heartbeat",status="503"})") == 1);
  CHECK(sample(text, R"(cairn_http_requests_total{endpoint="enroll",status="401"})") == 1);
  CHECK(sample(text, R"(cairn_http_requests_total{endpoint="other",status="0"})") == 1);
  CHECK(text.find(R"(endpoint="rotate")") == std::string::npos);  // nothing recorded, nothing shown
  CHECK(m.requests(Endpoint::heartbeat, 200) == 2);
  CHECK(m.requests(Endpoint::heartbeat, 700) == 0);

  CHECK(sample(text, R"(cairn_http_request_duration_seconds_bucket{endpoint="heartbeat",le="0.001"})") == 1);
  CHECK(sample(text, R"(cairn_http_request_duration_seconds_bucket{endpoint="heartbeat",le="0.0025"})") == 1);
  CHECK(sample(text, R"(cairn_http_request_duration_seconds_bucket{endpoint="heartbeat",le="0.005"})") == 2);
  CHECK(sample(text, R"(cairn_http_request_duration_seconds_bucket{endpoint="heartbeat",le="5"})") == 2);
  CHECK(sample(text, R"(cairn_http_request_duration_seconds_bucket{endpoint="heartbeat",le="+Inf"})") == 3);
  CHECK(sample(text, R"(cairn_http_request_duration_seconds_count{endpoint="heartbeat"})") == 3);
  CHECK(sample(text, R"(cairn_http_request_duration_seconds_sum{endpoint="heartbeat"})") == doctest::Approx(10.0035));
  CHECK(text.find("# TYPE cairn_http_request_duration_seconds histogram\n") != std::string::npos);
  CHECK(text.find("# TYPE cairn_http_requests_total counter\n") != std::string::npos);
}

TEST_CASE("metrics: connection and handshake counters") {
  Metrics m;
  m.connection_opened();
  m.connection_opened();
  m.connection_closed();
  m.connection_refused();
  m.tls_handshake_failed();
  m.tls_handshake_failed();
  const auto text = m.render(nullptr);
  CHECK(sample(text, "cairn_connections_open") == 1);
  CHECK(sample(text, "cairn_connections_refused_total") == 1);
  CHECK(sample(text, "cairn_tls_handshake_failures_total") == 2);
  CHECK(text.find("cairn_nodes") == std::string::npos);  // no service, no node gauges
}

TEST_CASE("metrics: node states as the liveness sweep set them, and enrollments") {
  ControlFixture f;
  const auto a = f.enrolled(make_node());
  f.enrolled(make_node());
  const auto revoked = make_node();
  f.enrolled(revoked);
  REQUIRE(f.service->admin_revoke_node(revoked.id));
  REQUIRE(f.beat(a));
  Metrics m;
  auto text = m.render(f.service.get());
  CHECK(sample(text, R"(cairn_nodes{state="ready"})") == 1);
  CHECK(sample(text, R"(cairn_nodes{state="enrolled"})") == 1);
  CHECK(sample(text, R"(cairn_nodes{state="revoked"})") == 1);
  CHECK(sample(text, R"(cairn_nodes{state="unreachable"})") == 0);
  CHECK(sample(text, "cairn_enrollments_total") == 3);

  // Rendering does not move states (the sweep does): past the grace, still as they were...
  f.clock.advance(10min);
  text = m.render(f.service.get());
  CHECK(sample(text, R"(cairn_nodes{state="unreachable"})") == 0);
  // ...until the sweep runs.
  f.service->sweep_liveness();
  text = m.render(f.service.get());
  CHECK(sample(text, R"(cairn_nodes{state="unreachable"})") == 2);
  CHECK(sample(text, R"(cairn_nodes{state="ready"})") == 0);
}

TEST_CASE("endpoint_name names every endpoint") {
  CHECK(endpoint_name(Endpoint::enroll) == "enroll");
  CHECK(endpoint_name(Endpoint::heartbeat) == "heartbeat");
  CHECK(endpoint_name(Endpoint::rotate) == "rotate");
  CHECK(endpoint_name(Endpoint::admin) == "admin");
  CHECK(endpoint_name(Endpoint::healthz) == "healthz");
  CHECK(endpoint_name(Endpoint::metrics) == "metrics");
  CHECK(endpoint_name(Endpoint::other) == "other");
}
