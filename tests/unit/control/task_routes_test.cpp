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

TEST_CASE("task batches: an admin submits many tasks in one request; a node completes several in one") {
  Routes t;
  const auto admin = t.f.state_admin();
  const auto node = make_node();
  const auto peer = t.f.enrolled(node);

  Json tasks = Json::array();
  for (int i = 0; i < 3; ++i) {
    tasks.push_back({{"kind", "exec"}, {"args", {{"argv", {"true"}}}}, {"node", node.id},
                     {"idempotency_key", "batch-" + std::to_string(i)}});
  }
  auto created = t.call("POST", "/v1/admin/tasks/batch", dump_json(Json{{"tasks", tasks}}), admin);
  REQUIRE_MESSAGE(created.status == 200, created.body);
  auto answer = parse_json(created.body, "answer");
  REQUIRE(answer);
  CHECK(answer->at("created") == 3);
  REQUIRE(answer->at("tasks").size() == 3);
  // The same file again: nothing new, the same tasks answer.
  auto again = t.call("POST", "/v1/admin/tasks/batch", dump_json(Json{{"tasks", tasks}}), admin);
  REQUIRE(again.status == 200);
  CHECK(parse_json(again.body, "answer")->at("created") == 0);
  CHECK(parse_json(again.body, "answer")->at("tasks")[2].at("id") == answer->at("tasks")[2].at("id"));
  // One bad item refuses the batch, naming it; nothing of it is stored.
  Json bad = tasks;
  bad.push_back({{"kind", "exec"}, {"args", {{"argv", {"true"}}}}, {"idempotency_key", "batch-new"}});
  bad.push_back({{"kind", "teleport"}});
  auto refused = t.call("POST", "/v1/admin/tasks/batch", dump_json(Json{{"tasks", bad}}), admin);
  CHECK(refused.status == 400);
  CHECK(code(refused) == "unknown_kind");
  CHECK(refused.body.find("tasks[4]") != std::string::npos);
  CHECK(parse_json(t.call("GET", "/v1/admin/tasks", {}, admin).body, "answer")->at("tasks").size() == 3);
  CHECK(code(t.call("POST", "/v1/admin/tasks/batch", R"({"tasks": 5})", admin)) == "invalid_request");
  CHECK(t.call("POST", "/v1/admin/tasks/batch", dump_json(Json{{"tasks", tasks}}), peer).status == 403);

  auto leased = t.call("POST", "/v1/tasks/lease", R"({"max_tasks": 3, "lease_s": 30})", peer);
  REQUIRE(leased.status == 200);
  auto lease = protocol::decode_lease_response(leased.body);
  REQUIRE(lease);
  REQUIRE(lease->tasks.size() == 3);

  protocol::CompleteBatchRequest batch;
  for (const auto& lt : lease->tasks) {
    protocol::CompleteItem item;
    item.id = lt.id;
    item.request.fence = lt.fence;
    item.request.outcome = "succeeded";
    item.request.exit_code = 0;
    batch.completions.push_back(item);
  }
  batch.completions[1].request.fence = 99;  // stale: refused alone
  batch.completions[2].request.outcome = "failed";
  batch.completions[2].request.reason = protocol::FailureReason::exit_nonzero;
  batch.completions[2].request.exit_code = 2;
  CHECK(t.call("POST", "/v1/tasks/complete", dump_json(protocol::to_json(batch)), admin).status == 403);
  CHECK(code(t.call("POST", "/v1/tasks/complete", R"({"completions": [{"id": "x", "fence": 1, "outcome": "maybe"}]})",
                    peer)) == "bad_request");
  auto done = t.call("POST", "/v1/tasks/complete", dump_json(protocol::to_json(batch)), peer);
  REQUIRE_MESSAGE(done.status == 200, done.body);
  auto results = protocol::decode_complete_batch_response(done.body);
  REQUIRE(results);
  REQUIRE(results->results.size() == 3);
  CHECK(results->results[0].ok());
  CHECK(results->results[0].id == lease->tasks[0].id);
  CHECK(results->results[0].state == "succeeded");
  CHECK(results->results[1].status == 409);
  CHECK(results->results[1].code == "stale_fence");
  CHECK(results->results[2].ok());
  CHECK(results->results[2].state == "failed");

  auto shown = t.call("GET", "/v1/admin/tasks/" + lease->tasks[1].id, {}, admin);
  CHECK(parse_json(shown.body, "answer")->at("state") == "leased");
}
