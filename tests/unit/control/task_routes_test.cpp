// The task and event routes of /v1/ (issue 13) on a real service: node endpoints need the
// node's certificate, admin task endpoints the admin's, and query strings are checked.
#include <doctest/doctest.h>

#include <future>
#include <string>

#include "control/server/router.hpp"
#include "tests/unit/control/control_fixture.hpp"

using namespace cairn;
using namespace cairn::test;
using namespace cairn::control;
using namespace cairn::control::server;

namespace {

struct Routes {
  ControlFixture f;
  Metrics metrics;

  Reply call(std::string_view method, std::string_view target, std::string_view body = {}, Peer peer = {}) {
    RouteRequest r{method, target, {}, body, std::move(peer), {}};
    std::promise<Reply> promise;
    auto future = promise.get_future();
    route(*f.service, metrics, r, [&](Reply reply) { promise.set_value(std::move(reply)); });
    return future.get();
  }
};

std::string code(const Reply& r) {
  auto e = protocol::decode_error_body(r.body);
  return e ? e->code : "(no error: " + r.body.substr(0, 80) + ")";
}

}  // namespace

TEST_CASE("task routes: submit, list, show, cancel as admin; lease, extend, complete, events as a node") {
  Routes t;
  const auto admin = t.f.state_admin();
  const auto node = make_node();
  const auto peer = t.f.enrolled(node);

  const Json submit = {{"kind", "exec"}, {"args", {{"argv", {"true"}}}}, {"node", node.id}};
  auto created = t.call("POST", "/v1/admin/tasks", dump_json(submit), admin);
  REQUIRE(created.status == 200);
  const std::string id = parse_json(created.body, "answer")->at("id").get<std::string>();
  CHECK(t.call("POST", "/v1/admin/tasks", dump_json(submit), peer).status == 403);  // a node is no admin

  auto listed = t.call("GET", "/v1/admin/tasks?state=queued&node=" + node.id + "&limit=5", {}, admin);
  REQUIRE(listed.status == 200);
  CHECK(parse_json(listed.body, "answer")->at("tasks").size() == 1);
  CHECK(code(t.call("GET", "/v1/admin/tasks?colour=red", {}, admin)) == "bad_request");
  CHECK(code(t.call("GET", "/v1/admin/tasks?limit=-1", {}, admin)) == "bad_request");
  CHECK(code(t.call("GET", "/v1/admin/tasks?state=asleep", {}, admin)) == "invalid_request");
  CHECK(code(t.call("DELETE", "/v1/admin/tasks/" + id, {}, admin)) == "method_not_allowed");

  // Node side: the admin certificate cannot lease; a GET is not allowed.
  const std::string lease_body = R"({"max_tasks": 2, "lease_s": 30})";
  CHECK(t.call("POST", "/v1/tasks/lease", lease_body, admin).status == 403);
  CHECK(code(t.call("GET", "/v1/tasks/lease", {}, peer)) == "method_not_allowed");
  CHECK(code(t.call("POST", "/v1/tasks/lease", "[1, 2]", peer)) == "bad_request");
  auto leased = t.call("POST", "/v1/tasks/lease", lease_body, peer);
  REQUIRE(leased.status == 200);
  auto lease = protocol::decode_lease_response(leased.body);
  REQUIRE(lease);
  REQUIRE(lease->tasks.size() == 1);
  CHECK(lease->tasks[0].id == id);

  auto ext = t.call("POST", "/v1/tasks/" + id + "/extend", R"({"fence": 1, "lease_s": 30})", peer);
  CHECK(ext.status == 200);
  auto stale = t.call("POST", "/v1/tasks/" + id + "/complete", R"({"fence": 7, "outcome": "succeeded"})", peer);
  CHECK(stale.status == 409);
  CHECK(code(stale) == "stale_fence");
  auto done = t.call("POST", "/v1/tasks/" + id + "/complete", R"({"fence": 1, "outcome": "succeeded"})", peer);
  CHECK(done.status == 200);
  CHECK(code(t.call("POST", "/v1/tasks/" + id + "/restart", "{}", peer)) == "not_found");

  auto shown = t.call("GET", "/v1/admin/tasks/" + id, {}, admin);
  REQUIRE(shown.status == 200);
  CHECK(parse_json(shown.body, "answer")->at("state") == "succeeded");
  auto cancel = t.call("POST", "/v1/admin/tasks/" + id + "/cancel", {}, admin);
  REQUIRE(cancel.status == 200);
  CHECK(parse_json(cancel.body, "answer")->at("outcome") == "already_final");

  auto events = t.call("POST", "/v1/events", R"({"events": [{"id": "x1", "kind": "task.done"}]})", peer);
  REQUIRE(events.status == 200);
  auto counts = protocol::decode_event_batch_response(events.body);
  REQUIRE(counts);
  CHECK(counts->accepted == 1);
  auto listed_events = t.call("GET", "/v1/admin/events?node=" + node.id + "&after=0", {}, admin);
  REQUIRE(listed_events.status == 200);
  const auto j = parse_json(listed_events.body, "answer");
  REQUIRE(j);
  CHECK(j->at("events").size() == 1);
  CHECK(j->at("cursor").get<std::int64_t>() == j->at("events")[0].at("seq").get<std::int64_t>());
  CHECK(code(t.call("GET", "/v1/admin/events?after=x", {}, admin)) == "bad_request");
}
