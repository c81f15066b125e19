// The task service (issue 13) on a real control service (SQLite, manual clock): submit
// validation, lease / extend / complete with fencing, backoff and the sweep, the
// heartbeat's hints, node event batches and the event cursor.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "control/server/metrics.hpp"
#include "control/service/task_queue.hpp"
#include "tests/unit/control/control_fixture.hpp"

using namespace cairn;
using namespace cairn::test;
using control::ApiResult;

namespace {

control::ServiceConfig fixed_jitter() {
  control::ServiceConfig c;
  c.random = [] { return 0.5; };  // backoff = 3/4 of the exponential delay
  return c;
}

struct TaskFixture : ControlFixture {
  TaskFixture() : ControlFixture(fixed_jitter()) {}

  control::AuthorizedNode node_of(const control::Peer& peer) {
    auto n = service->authorize_node(peer);
    REQUIRE(n);
    return *n;
  }

  std::string submit(Json body) {
    auto r = service->admin_submit_task(body);
    REQUIRE_MESSAGE(r, (r ? "" : r.error().body.message));
    return (*r)["id"].get<std::string>();
  }

  std::vector<protocol::LeasedTask> lease(const control::Peer& peer, std::int64_t max = 1,
                                          std::vector<std::string> running = {}) {
    protocol::LeaseRequest req;
    req.max_tasks = max;
    req.lease_s = 30;
    req.running = std::move(running);
    auto r = service->lease_tasks(node_of(peer), req);
    REQUIRE_MESSAGE(r, (r ? "" : r.error().body.message));
    leased_cancel = r->cancel;
    return r->tasks;
  }

  ApiResult<protocol::CompleteResponse> complete(const control::Peer& peer, const protocol::LeasedTask& t,
                                                 std::string outcome,
                                                 std::optional<protocol::FailureReason> reason = std::nullopt) {
    protocol::CompleteRequest c;
    c.fence = t.fence;
    c.outcome = std::move(outcome);
    c.reason = reason;
    c.exit_code = reason == protocol::FailureReason::exit_nonzero ? 2 : 0;
    c.output = "out";
    c.output_bytes = 3;
    return service->complete_task(node_of(peer), t.id, c);
  }

  Json show(const std::string& id) {
    auto r = service->admin_show_task(id);
    REQUIRE_MESSAGE(r, (r ? "" : r.error().body.message));
    return *r;
  }

  std::vector<std::string> leased_cancel;
};

Json exec_task(std::vector<std::string> argv = {"true"}) {
  return Json{{"kind", "exec"}, {"args", {{"argv", argv}}}};
}

}  // namespace

TEST_CASE("submit refuses unknown kinds and malformed arguments, naming the field") {
  TaskFixture f;
  auto r = f.service->admin_submit_task(Json{{"kind", "format-disk"}});
  CHECK(status_of(r) == 400);
  CHECK(code_of(r) == "unknown_kind");
  CHECK(r.error().body.message.find("format-disk") != std::string::npos);

  r = f.service->admin_submit_task(Json{{"kind", "exec"}, {"args", {{"argv", Json::array()}}}});
  CHECK(code_of(r) == "invalid_args");
  CHECK(r.error().body.message.find("argv") != std::string::npos);
  r = f.service->admin_submit_task(Json{{"kind", "exec"}, {"args", {{"argv", {"ls"}}, {"shell", true}}}});
  CHECK(code_of(r) == "invalid_args");
  CHECK(r.error().body.message.find("shell") != std::string::npos);
  r = f.service->admin_submit_task(Json{{"kind", "exec"}, {"args", "ls -l"}});
  CHECK(code_of(r) == "invalid_args");
  r = f.service->admin_submit_task(Json{{"kind", "service.install"}, {"args", {{"name", "../etc"}}}});
  CHECK(code_of(r) == "invalid_args");
  CHECK(r.error().body.message.find("name") != std::string::npos);

  Json both = exec_task();
  both["node"] = random_uuid().str();
  both["selector"] = {{"zone", "a"}};
  r = f.service->admin_submit_task(both);
  CHECK(code_of(r) == "invalid_request");
  CHECK(r.error().body.message.find("selector") != std::string::npos);
  Json bad_node = exec_task();
  bad_node["node"] = "not-a-uuid";
  r = f.service->admin_submit_task(bad_node);
  CHECK(code_of(r) == "invalid_request");
  CHECK(r.error().body.message.find("node") != std::string::npos);
  Json bad_attempts = exec_task();
  bad_attempts["max_attempts"] = 0;
  r = f.service->admin_submit_task(bad_attempts);
  CHECK(r.error().body.message.find("max_attempts") != std::string::npos);
  Json greedy = exec_task();
  greedy["min"] = {{"mem_bytes", std::int64_t{1} << 62}};
  r = f.service->admin_submit_task(greedy);
  CHECK(r.error().body.message.find("min.mem_bytes") != std::string::npos);
  Json unknown = exec_task();
  unknown["priority"] = 1;
  r = f.service->admin_submit_task(unknown);
  CHECK(r.error().body.message.find("priority") != std::string::npos);

  auto list = f.service->admin_list_tasks({});
  REQUIRE(list);
  CHECK((*list)["tasks"].empty());  // nothing refused was stored

  auto ok = f.service->admin_submit_task(Json{{"kind", "reboot"}});
  CHECK(code_of(ok) == "ok");
}

TEST_CASE("a node leases, extends and completes a task; show tells the whole story") {
  TaskFixture f;
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  REQUIRE(f.beat(peer));
  Json body = exec_task({"echo", "hi"});
  body["idempotency_key"] = "hello-1";
  const auto id = f.submit(body);
  // The same idempotency key returns the same task.
  auto again = f.service->admin_submit_task(body);
  REQUIRE(again);
  CHECK((*again)["id"] == id);
  CHECK((*again)["created"] == false);

  auto leased = f.lease(peer, 4);
  REQUIRE(leased.size() == 1);
  CHECK(leased[0].id == id);
  CHECK(leased[0].fence == 1);
  CHECK(leased[0].attempt == 1);
  CHECK(leased[0].lease_s == 30);
  CHECK(leased[0].args["argv"] == Json({"echo", "hi"}));
  CHECK(f.lease(peer, 4).empty());

  f.clock.advance(std::chrono::seconds(20));
  protocol::ExtendRequest ext;
  ext.fence = 1;
  ext.lease_s = 30;
  auto e = f.service->extend_task(f.node_of(peer), id, ext);
  REQUIRE(e);
  CHECK(e->lease_s == 30);
  CHECK(!e->cancel);
  CHECK(f.show(id)["state"] == "running");
  f.clock.advance(std::chrono::seconds(20));  // past the first lease, within the extended one
  f.service->sweep_tasks();
  CHECK(f.show(id)["state"] == "running");  // the extended lease has not run out

  auto done = f.complete(peer, leased[0], "succeeded");
  REQUIRE(done);
  CHECK(done->state == "succeeded");
  auto repeat = f.complete(peer, leased[0], "succeeded");  // a lost answer, sent again
  REQUIRE(repeat);
  CHECK(repeat->state == "succeeded");

  const Json shown = f.show(id);
  CHECK(shown["state"] == "succeeded");
  CHECK(shown["leased_by"] == node.id);
  CHECK(shown["fence"] == 1);
  CHECK(shown["exit_code"] == 0);
  CHECK(shown["output"] == "out");
  CHECK(shown["started_at"].is_string());
  CHECK(shown["finished_at"].is_string());
  REQUIRE(shown["attempts"].size() == 1);
  CHECK(shown["attempts"][0]["outcome"] == "succeeded");
  CHECK(shown["attempts"][0]["node"] == node.id);
}

TEST_CASE("a stale fence is refused with 409 stale_fence naming the task and the fence") {
  TaskFixture f;
  const auto a = f.enrolled(make_node());
  const auto b = f.enrolled(make_node());
  const auto id = f.submit(exec_task());
  auto first = f.lease(a);
  REQUIRE(first.size() == 1);
  f.clock.advance(std::chrono::seconds(31));  // A's lease runs out
  f.service->sweep_tasks();
  CHECK(f.show(id)["state"] == "queued");
  CHECK(f.show(id)["last_reason"] == "lease_lost");
  f.clock.advance(std::chrono::seconds(2));  // the first backoff: 1 s * 3/4
  auto second = f.lease(b);
  REQUIRE(second.size() == 1);
  CHECK(second[0].fence == 2);
  CHECK(second[0].attempt == 2);

  auto late = f.complete(a, first[0], "succeeded");
  CHECK(status_of(late) == 409);
  CHECK(code_of(late) == "stale_fence");
  CHECK(late.error().body.message.find(id) != std::string::npos);
  CHECK(late.error().body.message.find("fence 1") != std::string::npos);
  CHECK(!late.error().body.hint.empty());
  protocol::ExtendRequest ext;
  ext.fence = 1;
  auto e = f.service->extend_task(f.node_of(a), id, ext);
  CHECK(code_of(e) == "stale_fence");
  auto unknown = f.service->extend_task(f.node_of(a), random_uuid().str(), ext);
  CHECK(status_of(unknown) == 404);

  REQUIRE(f.complete(b, second[0], "succeeded"));
  CHECK(f.show(id)["state"] == "succeeded");
  CHECK(f.show(id)["leased_by"] != Json(nullptr));
}

TEST_CASE("transient failures back off exponentially with the injected jitter, then the task is dead") {
  CHECK(control::retry_backoff_ms(1, 1000, 300'000, 0.0) == 500);
  CHECK(control::retry_backoff_ms(1, 1000, 300'000, 0.999) == 999);
  CHECK(control::retry_backoff_ms(3, 1000, 300'000, 0.5) == 3000);  // 4 s: 2 s fixed + 1 s jitter
  CHECK(control::retry_backoff_ms(30, 1000, 300'000, 1.0) == 300'000);  // capped at 5 min

  TaskFixture f;
  const auto peer = f.enrolled(make_node());
  Json body = exec_task();
  body["max_attempts"] = 2;
  const auto id = f.submit(body);
  auto first = f.lease(peer);
  REQUIRE(first.size() == 1);
  auto r = f.complete(peer, first[0], "failed", protocol::FailureReason::timeout);
  REQUIRE(r);
  CHECK(r->state == "queued");
  f.clock.advance(std::chrono::milliseconds(749));
  CHECK(f.lease(peer).empty());  // 1 s * (1/2 + 0.5/2) = 750 ms
  f.clock.advance(std::chrono::milliseconds(1));
  auto second = f.lease(peer);
  REQUIRE(second.size() == 1);
  r = f.complete(peer, second[0], "failed", protocol::FailureReason::killed);
  REQUIRE(r);
  CHECK(r->state == "dead");
  CHECK(f.show(id)["last_reason"] == "killed");

  // A permanent failure is not retried.
  const auto permanent = f.submit(exec_task({"false"}));
  auto leased = f.lease(peer);
  REQUIRE(leased.size() == 1);
  r = f.complete(peer, leased[0], "failed", protocol::FailureReason::exit_nonzero);
  REQUIRE(r);
  CHECK(r->state == "failed");
  CHECK(f.show(permanent)["exit_code"] == 2);

  // A failure needs a reason; an outcome must be one of three.
  const auto third = f.submit(exec_task());
  leased = f.lease(peer);
  REQUIRE(leased.size() == 1);
  CHECK(code_of(f.complete(peer, leased[0], "failed")) == "invalid_request");
  CHECK(code_of(f.complete(peer, leased[0], "exploded")) == "invalid_request");
  CHECK(f.show(third)["state"] == "leased");
}

TEST_CASE("admission uses the node's last heartbeat with headroom") {
  protocol::HeartbeatRequest hb = sample_heartbeat();  // 4 CPUs at load 0.5, 8 GiB with 6 free
  control::ServiceConfig config;
  const auto budget = control::node_budget(hb, config);
  CHECK(budget.cpu_millis == 4 * 800 - 500);
  CHECK(budget.mem_bytes == static_cast<std::int64_t>((8ULL << 30) * 8 / 10 - (2ULL << 30)));
  CHECK(budget.disk_bytes == static_cast<std::int64_t>((100ULL << 30) * 9 / 10 - (30ULL << 30)));
  protocol::HeartbeatRequest absurd;  // a node may send anything: no overflow
  absurd.cpu_count = 0xffffffffu;
  absurd.mem_total_bytes = ~0ULL;
  absurd.mem_available_bytes = ~0ULL;
  absurd.disk_total_bytes = ~0ULL;
  absurd.disk_free_bytes = ~0ULL;
  absurd.load1 = -1e300;
  const auto clamped = control::node_budget(absurd, config);
  CHECK(clamped.mem_bytes == 9'000'000'000'000'000'000);  // clamped, not wrapped
  CHECK(clamped.disk_bytes == 9'000'000'000'000'000'000);
  CHECK(clamped.cpu_millis == 9'000'000'000'000'000'000);

  TaskFixture f;
  const auto peer = f.enrolled(make_node());
  REQUIRE(f.beat(peer));
  Json big = exec_task();
  big["min"] = {{"cpu_millis", 2000}};
  const auto first = f.submit(big);
  const auto second = f.submit(big);
  auto leased = f.lease(peer, 8);
  REQUIRE(leased.size() == 1);  // 2 + 2 CPUs would pass 80% of 4 CPUs at load 0.5
  CHECK(leased[0].id == first);
  REQUIRE(f.complete(peer, leased[0], "succeeded"));
  leased = f.lease(peer, 8);
  REQUIRE(leased.size() == 1);
  CHECK(leased[0].id == second);

  // A node over its headroom gets nothing, not even a task without reservations.
  auto busy = sample_heartbeat();
  busy.load1 = 3.9;
  REQUIRE(f.beat(peer, busy));
  REQUIRE(f.complete(peer, leased[0], "succeeded"));
  f.submit(exec_task());
  CHECK(f.lease(peer, 8).empty());
}

TEST_CASE("the heartbeat says when work waits and which running tasks were cancelled") {
  TaskFixture f;
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  auto hb = sample_heartbeat();
  hb.capabilities = {"systemd"};
  auto reply = f.beat(peer, hb);
  REQUIRE(reply);
  CHECK(!reply->work_waiting);

  Json needs_kvm = exec_task();
  needs_kvm["capabilities"] = {"kvm"};
  f.submit(needs_kvm);
  f.clock.advance(std::chrono::seconds(1));  // the index is rebuilt at most every 50 ms
  reply = f.beat(peer, hb);
  REQUIRE(reply);
  CHECK(!reply->work_waiting);  // this node lacks kvm

  Json addressed = exec_task();
  addressed["node"] = node.id;
  const auto id = f.submit(addressed);
  f.clock.advance(std::chrono::seconds(1));
  reply = f.beat(peer, hb);
  REQUIRE(reply);
  CHECK(reply->work_waiting);

  auto leased = f.lease(peer, 8);
  REQUIRE(leased.size() == 1);
  CHECK(leased[0].id == id);
  f.clock.advance(std::chrono::seconds(1));
  hb.running_tasks = {id};
  reply = f.beat(peer, hb);
  REQUIRE(reply);
  CHECK(!reply->work_waiting);
  CHECK(reply->cancel_tasks.empty());

  auto c = f.service->admin_cancel_task(id);
  REQUIRE(c);
  CHECK((*c)["outcome"] == "stop_requested");
  reply = f.beat(peer, hb);
  REQUIRE(reply);
  CHECK(reply->cancel_tasks == std::vector<std::string>{id});
  // The lease request carries the same news.
  CHECK(f.lease(peer, 0, {id}).empty());
  CHECK(f.leased_cancel == std::vector<std::string>{id});
  REQUIRE(f.complete(peer, leased[0], "cancelled"));
  CHECK(f.show(id)["state"] == "cancelled");

  // Capabilities from the heartbeat place tasks.
  hb.capabilities = {"systemd", "kvm"};
  hb.running_tasks.clear();
  f.clock.advance(std::chrono::seconds(1));
  reply = f.beat(peer, hb);
  REQUIRE(reply);
  CHECK(reply->work_waiting);
  CHECK(f.lease(peer, 8).size() == 1);
}

TEST_CASE("cancel: a queued task ends at once; list filters by state") {
  TaskFixture f;
  const auto id = f.submit(exec_task());
  auto c = f.service->admin_cancel_task(id);
  REQUIRE(c);
  CHECK((*c)["outcome"] == "cancelled");
  CHECK((*c)["state"] == "cancelled");
  c = f.service->admin_cancel_task(id);
  REQUIRE(c);
  CHECK((*c)["outcome"] == "already_final");
  CHECK(status_of(f.service->admin_cancel_task(random_uuid().str())) == 404);
  f.submit(exec_task());
  control::TaskFilter filter;
  filter.state = "cancelled";
  auto list = f.service->admin_list_tasks(filter);
  REQUIRE(list);
  REQUIRE((*list)["tasks"].size() == 1);
  CHECK((*list)["tasks"][0]["id"] == id);
  filter.state = "sleeping";
  CHECK(code_of(f.service->admin_list_tasks(filter)) == "invalid_request");
}

TEST_CASE("the sweep prunes finished tasks past the history period") {
  TaskFixture f;
  f.config.task_history = std::chrono::hours(1);
  f.reopen();
  const auto peer = f.enrolled(make_node());
  const auto id = f.submit(exec_task());
  auto leased = f.lease(peer);
  REQUIRE(leased.size() == 1);
  REQUIRE(f.complete(peer, leased[0], "succeeded"));
  f.service->sweep_tasks();
  CHECK(f.show(id)["state"] == "succeeded");
  f.clock.advance(std::chrono::minutes(61));
  f.service->sweep_tasks();
  CHECK(status_of(f.service->admin_show_task(id)) == 404);
}

TEST_CASE("event batches: duplicates are dropped and counted; a cursor follows without repeats") {
  TaskFixture f;
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  protocol::EventBatch batch;
  batch.events = {{"e1", "info", "task.started", "m1", "2030-01-01T00:00:00Z"},
                  {"e2", "warning", "task.failed", "m2", "2030-01-01T00:00:01Z"}};
  auto r = f.service->post_events(f.node_of(peer), batch);
  REQUIRE(r);
  CHECK(r->accepted == 2);
  CHECK(r->duplicates == 0);
  batch.events.push_back({"e3", "info", "task.succeeded", "m3", ""});
  r = f.service->post_events(f.node_of(peer), batch);
  REQUIRE(r);
  CHECK(r->accepted == 1);
  CHECK(r->duplicates == 2);

  protocol::EventBatch anonymous;
  anonymous.events = {{"", "info", "x", "no id", ""}};
  CHECK(code_of(f.service->post_events(f.node_of(peer), anonymous)) == "invalid_request");
  protocol::EventBatch huge;
  huge.events.resize(protocol::kMaxEventsPerBatch + 1, {"id", "info", "k", "m", ""});
  CHECK(status_of(f.service->post_events(f.node_of(peer), huge)) == 413);

  control::EventFilter filter;
  filter.node_id = node.id;
  filter.limit = 2;
  auto page = f.service->admin_list_events(filter);  // the newest two, oldest first
  REQUIRE(page);
  REQUIRE((*page)["events"].size() == 2);
  CHECK((*page)["events"][1]["id"] == "e3");
  filter.after_seq = (*page)["cursor"].get<std::int64_t>();
  auto next = f.service->admin_list_events(filter);
  REQUIRE(next);
  CHECK((*next)["events"].empty());
  CHECK((*next)["cursor"] == *filter.after_seq);
  batch.events = {{"e4", "info", "task.started", "m4", ""}};
  REQUIRE(f.service->post_events(f.node_of(peer), batch));
  next = f.service->admin_list_events(filter);
  REQUIRE(next);
  REQUIRE((*next)["events"].size() == 1);
  CHECK((*next)["events"][0]["id"] == "e4");
  CHECK((*next)["cursor"].get<std::int64_t>() > *filter.after_seq);
}

namespace {

std::vector<std::string> event_kinds(TaskFixture& f, const std::string& node_id) {
  control::EventFilter filter;
  filter.node_id = node_id;
  auto r = f.service->admin_list_events(filter);
  REQUIRE_MESSAGE(r, (r ? "" : r.error().body.message));
  std::vector<std::string> kinds;
  for (const auto& e : (*r)["events"]) kinds.push_back(e["kind"].get<std::string>());
  return kinds;
}

int count_of(const std::vector<std::string>& kinds, std::string_view kind) {
  return static_cast<int>(std::count(kinds.begin(), kinds.end(), kind));
}

// The value of the one sample line `series value` (-1 if absent).
double sample(const std::string& text, const std::string& series) {
  const auto at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

}  // namespace

TEST_CASE("control records what an operator must see of tasks as events, and counts tasks in /metrics") {
  TaskFixture f;
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  control::server::Metrics metrics;

  // 1. A lease that runs out with attempts left: lease_expired, the task queued again.
  Json retried = exec_task();
  retried["max_attempts"] = 3;
  const auto again_id = f.submit(retried);
  REQUIRE(f.lease(peer).size() == 1);
  f.clock.advance(std::chrono::seconds(31));
  f.service->sweep_tasks();
  CHECK(f.show(again_id)["state"] == "queued");
  auto kinds = event_kinds(f, node.id);
  CHECK(count_of(kinds, "task.lease_expired") == 1);
  CHECK(count_of(kinds, "task.dead") == 0);
  f.service->sweep_tasks();  // nothing new: no second event
  CHECK(count_of(event_kinds(f, node.id), "task.lease_expired") == 1);
  f.service->admin_cancel_task(again_id);

  // 2. A lease that runs out on the last attempt: lease_expired and dead (critical).
  Json once = exec_task();
  once["max_attempts"] = 1;
  const auto expired_id = f.submit(once);
  REQUIRE(f.lease(peer).size() == 1);
  f.clock.advance(std::chrono::seconds(31));
  f.service->sweep_tasks();
  CHECK(f.show(expired_id)["state"] == "dead");
  kinds = event_kinds(f, node.id);
  CHECK(count_of(kinds, "task.lease_expired") == 2);
  CHECK(count_of(kinds, "task.dead") == 1);

  // 3. A node reports the last transient failure: dead.
  const auto failed_id = f.submit(once);
  auto leased = f.lease(peer);
  REQUIRE(leased.size() == 1);
  auto r = f.complete(peer, leased[0], "failed", protocol::FailureReason::killed);
  REQUIRE(r);
  CHECK(r->state == "dead");
  CHECK(count_of(event_kinds(f, node.id), "task.dead") == 2);
  // The same completion again (a retry of the request): answered, stored once.
  REQUIRE(f.complete(peer, leased[0], "failed", protocol::FailureReason::killed));
  CHECK(count_of(event_kinds(f, node.id), "task.dead") == 2);

  // 4. Cancelled while it ran: the node stops it and completes it cancelled.
  const auto cancelled_id = f.submit(exec_task());
  leased = f.lease(peer);
  REQUIRE(leased.size() == 1);
  auto cancel = f.service->admin_cancel_task(cancelled_id);
  REQUIRE(cancel);
  CHECK((*cancel)["outcome"] == "stop_requested");
  r = f.complete(peer, leased[0], "cancelled");
  REQUIRE(r);
  CHECK(r->state == "cancelled");
  kinds = event_kinds(f, node.id);
  CHECK(count_of(kinds, "task.cancelled") == 1);

  // 5. A success is no event.
  f.submit(exec_task());
  leased = f.lease(peer);
  REQUIRE(leased.size() == 1);
  REQUIRE(f.complete(peer, leased[0], "succeeded"));
  CHECK(event_kinds(f, node.id).size() == kinds.size());

  const std::string text = metrics.render(f.service.get());
  CHECK(sample(text, "cairn_task_lease_expirations_total") == 2);
  CHECK(sample(text, "cairn_task_dead_total") == 2);
  CHECK(sample(text, "cairn_task_leases_total") == 5);
  CHECK(sample(text, "cairn_task_lease_requests_total") == 5);
  CHECK(sample(text, "cairn_task_completions_total{reason=\"killed\"}") == 1);  // its repeat is not counted
  CHECK(sample(text, "cairn_task_completions_total{reason=\"cancelled\"}") == 1);
  CHECK(sample(text, "cairn_task_completions_total{reason=\"succeeded\"}") == 1);
  CHECK(sample(text, "cairn_tasks{state=\"dead\"}") == 2);
  CHECK(sample(text, "cairn_tasks{state=\"cancelled\"}") == 2);
  CHECK(sample(text, "cairn_tasks{state=\"succeeded\"}") == 1);
  CHECK(sample(text, "cairn_tasks{state=\"queued\"}") == 0);
  CHECK(sample(text, "cairn_task_queue_depth") == 0);
  CHECK(sample(text, "cairn_task_lease_duration_seconds_count") == 5);
  CHECK(sample(text, "cairn_task_lease_duration_seconds_bucket{le=\"+Inf\"}") == 5);
}
