// Tasks and events against a real `cairn-control serve` on loopback (issue 13): enrolled
// nodes lease, extend and complete over mTLS; an expired lease goes to another node and the
// first node's stale fence is refused; cancel reaches the node through its heartbeat, its
// lease request and its extend; a revoked node cannot lease; event batches are stored once
// and `events --follow` prints each new event once.
#include <doctest/doctest.h>

#include <chrono>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "common/protocol/tasks.hpp"
#include "tests/integration/control/server_helpers.hpp"

namespace cairn::test {
namespace {

using namespace std::chrono_literals;

Json json_of(const RunResult& r) {
  REQUIRE_MESSAGE(r.exit_code == 0, (r.err + r.out));
  auto j = parse_json(r.out, "cli output");
  REQUIRE_MESSAGE(j, r.out);
  return *j;
}

// `task submit --json ARGS...`: the state dir and server go first, since ARGS may end with
// "-- argv..." (ControlServer::cli appends them at the end).
RunResult submit_cli(const ControlServer& server, std::vector<std::string> args) {
  std::vector<std::string> argv = {control_binary(), "task", "submit", "--json", "--state", server.state().string(),
                                   "--server", server.url()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_capture(argv, server.scratch());
}

std::string submit(const ControlServer& server, std::vector<std::string> args) {
  const Json j = json_of(submit_cli(server, std::move(args)));
  REQUIRE(j.contains("id"));
  return j["id"].get<std::string>();
}

Json show(const ControlServer& server, const std::string& id) { return json_of(server.cli({"task", "show", id, "--json"})); }

struct Answer {
  long status = 0;
  Json body;
};
Answer post_json(const TlsOptions& tls, const std::string& url, const Json& body) {
  auto r = send(tls, "POST", url, dump_json(body), {{"Content-Type", "application/json"}});
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message));
  auto j = parse_json(r->body, "answer");
  return {r->status, j ? *j : Json(r->body)};
}

Answer lease(const ControlServer& server, const EnrolledNode& node, std::int64_t max, std::vector<std::string> running = {}) {
  protocol::LeaseRequest req;
  req.max_tasks = max;
  req.lease_s = 5;
  req.running = std::move(running);
  return post_json(as_node(server, node), server.url("/v1/tasks/lease"), protocol::to_json(req));
}

Answer complete(const ControlServer& server, const EnrolledNode& node, const std::string& id, std::int64_t fence,
                const std::string& outcome) {
  protocol::CompleteRequest c;
  c.fence = fence;
  c.outcome = outcome;
  c.exit_code = 0;
  c.output = "hi\n";
  c.output_bytes = 3;
  return post_json(as_node(server, node), server.url("/v1/tasks/" + id + "/complete"), protocol::to_json(c));
}

Answer heartbeat(const ControlServer& server, const EnrolledNode& node, std::vector<std::string> running = {}) {
  protocol::HeartbeatRequest hb;
  hb.boot_id = "boot";
  hb.agent_version = "test";
  hb.mount_state = "none";
  hb.cpu_count = 2;
  hb.mem_total_bytes = 1ULL << 30;
  hb.mem_available_bytes = 1ULL << 29;
  hb.disk_total_bytes = 10ULL << 30;
  hb.disk_free_bytes = 5ULL << 30;
  hb.capabilities = {"systemd"};
  hb.running_tasks = std::move(running);
  return post_json(as_node(server, node), server.url("/v1/heartbeat"), protocol::to_json(hb));
}

}  // namespace

TEST_CASE("a node leases, extends and completes a task over mTLS; a stale fence and a revoked node are refused") {
  ControlServer server;
  const auto a = enroll_node(server);
  const auto b = enroll_node(server);
  REQUIRE(heartbeat(server, a).status == 200);

  const auto id = submit(server, {"--kind", "exec", "--node", a.id, "--idempotency-key", "first", "--", "echo", "hi"});
  // Submitting again with the same key returns the same task.
  const Json again = json_of(submit_cli(server, {"--kind", "exec", "--idempotency-key", "first", "--", "echo", "other"}));
  CHECK(again["id"] == id);
  CHECK(again["created"] == false);

  // The heartbeat tells A that work waits (the index may lag by up to 50 ms).
  CHECK(wait_for([&] { return heartbeat(server, a).body.value("work_waiting", false); }, 10s, 100ms));
  CHECK(!heartbeat(server, b).body.value("work_waiting", true));  // addressed to A only
  CHECK(lease(server, b, 4).body["tasks"].empty());

  auto leased = lease(server, a, 4);
  REQUIRE(leased.status == 200);
  REQUIRE(leased.body["tasks"].size() == 1);
  const Json task = leased.body["tasks"][0];
  CHECK(task["id"] == id);
  CHECK(task["fence"] == 1);
  CHECK(task["args"]["argv"] == Json({"echo", "hi"}));

  protocol::ExtendRequest ext;
  ext.fence = 1;
  ext.lease_s = 5;
  auto extended = post_json(as_node(server, a), server.url("/v1/tasks/" + id + "/extend"), protocol::to_json(ext));
  CHECK(extended.status == 200);
  CHECK(extended.body["lease_s"] == 5);
  CHECK(show(server, id)["state"] == "running");
  // B is not the leaseholder.
  auto foreign = post_json(as_node(server, b), server.url("/v1/tasks/" + id + "/extend"), protocol::to_json(ext));
  CHECK(foreign.status == 409);
  CHECK(foreign.body["error"]["code"] == "stale_fence");

  auto done = complete(server, a, id, 1, "succeeded");
  CHECK(done.status == 200);
  CHECK(done.body["state"] == "succeeded");
  CHECK(complete(server, a, id, 1, "succeeded").status == 200);  // idempotent
  const Json shown = show(server, id);
  CHECK(shown["state"] == "succeeded");
  CHECK(shown["output"] == "hi\n");
  CHECK(shown["leased_by"] == a.id);
  REQUIRE(shown["attempts"].size() == 1);
  // The human view names the leaseholder and the output.
  const auto human = server.cli({"task", "show", id});
  CHECK(human.exit_code == 0);
  CHECK(human.out.find(a.id) != std::string::npos);
  CHECK(human.out.find("hi") != std::string::npos);
  const auto table = server.cli({"task", "list", "--status", "succeeded"});
  CHECK(table.exit_code == 0);
  CHECK(table.out.find(id) != std::string::npos);

  // An expired lease: the task goes back to the queue and to B; A's late result is refused.
  const auto second = submit(server, {"--kind", "exec", "--", "sleep", "100"});
  auto first_lease = lease(server, a, 1);
  REQUIRE(first_lease.body["tasks"].size() == 1);
  CHECK(first_lease.body["tasks"][0]["id"] == second);
  REQUIRE(wait_for([&] { return show(server, second)["state"] == "queued"; }, 20s, 200ms));
  Json b_task;
  REQUIRE(wait_for([&] {
    auto l = lease(server, b, 1);
    if (l.body["tasks"].empty()) return false;
    b_task = l.body["tasks"][0];
    return true;
  }, 20s, 200ms));
  CHECK(b_task["id"] == second);
  CHECK(b_task["fence"] == 2);
  auto stale = complete(server, a, second, 1, "succeeded");
  CHECK(stale.status == 409);
  CHECK(stale.body["error"]["code"] == "stale_fence");
  CHECK(stale.body["error"]["message"].get<std::string>().find(second) != std::string::npos);
  CHECK(complete(server, b, second, 2, "succeeded").status == 200);
  CHECK(show(server, second)["leased_by"] == b.id);

  // A revoked node cannot lease.
  const auto revoked = server.cli({"node", "revoke", b.id});
  REQUIRE_MESSAGE(revoked.exit_code == 0, revoked.err);
  submit(server, {"--kind", "inventory"});
  auto refused = lease(server, b, 1);
  CHECK(refused.status >= 400);
  CHECK(refused.status < 500);
  CHECK(refused.body["error"]["code"].is_string());
  CHECK(json_of(server.cli({"task", "list", "--status", "queued", "--json"}))["tasks"].size() == 1);

  // Bad input: an unknown kind is refused by the CLI with the service's message.
  const auto unknown = server.cli({"task", "submit", "--kind", "format-disk"});
  CHECK(unknown.exit_code != 0);
  CHECK((unknown.err + unknown.out).find("format-disk") != std::string::npos);
}

TEST_CASE("cancel reaches a running task through the heartbeat, the lease request and extend") {
  ControlServer server;
  const auto a = enroll_node(server);
  REQUIRE(heartbeat(server, a).status == 200);
  const auto id = submit(server, {"--kind", "exec", "--node", a.id, "--", "sleep", "1000"});
  auto leased = lease(server, a, 1);
  REQUIRE(leased.body["tasks"].size() == 1);
  CHECK(heartbeat(server, a, {id}).body["cancel_tasks"].empty());

  // Output of gigabytes never reaches the store: a body over the server's cap is refused
  // and the task keeps its lease; so is output over the per-task cap in a small body.
  protocol::CompleteRequest huge;
  huge.fence = 1;
  huge.outcome = "succeeded";
  huge.output = std::string(2 << 20, 'x');
  auto refused_big = post_json(as_node(server, a), server.url("/v1/tasks/" + id + "/complete"), protocol::to_json(huge));
  CHECK(refused_big.status == 413);
  huge.output = std::string(protocol::kMaxTaskOutputBytes + 1, 'x');
  auto refused_cap = post_json(as_node(server, a), server.url("/v1/tasks/" + id + "/complete"), protocol::to_json(huge));
  CHECK(refused_cap.status == 400);
  CHECK(show(server, id)["state"] == "leased");

  const auto cancel = server.cli({"task", "cancel", id});
  REQUIRE_MESSAGE(cancel.exit_code == 0, cancel.err);
  CHECK(cancel.out.find("told to stop") != std::string::npos);
  CHECK(heartbeat(server, a, {id}).body["cancel_tasks"] == Json({id}));
  CHECK(lease(server, a, 0, {id}).body["cancel"] == Json({id}));
  protocol::ExtendRequest ext;
  ext.fence = 1;
  auto extended = post_json(as_node(server, a), server.url("/v1/tasks/" + id + "/extend"), protocol::to_json(ext));
  CHECK(extended.body["cancel"] == true);
  CHECK(complete(server, a, id, 1, "cancelled").body["state"] == "cancelled");
  CHECK(show(server, id)["state"] == "cancelled");
  // A queued task is cancelled at once.
  const auto queued = submit(server, {"--kind", "reboot", "--node", a.id});
  const Json c = json_of(server.cli({"task", "cancel", queued, "--json"}));
  CHECK(c["outcome"] == "cancelled");
  CHECK(lease(server, a, 4).body["tasks"].empty());
}

TEST_CASE("event batches are stored once and `events --follow` prints each new event once") {
  ControlServer server;
  const auto a = enroll_node(server);
  protocol::EventBatch batch;
  batch.events = {{"ev-1", "info", "task.started", "first", "2030-01-01T00:00:00Z"},
                  {"ev-2", "warning", "task.failed", "second", "2030-01-01T00:00:01Z"}};
  auto r = post_json(as_node(server, a), server.url("/v1/events"), protocol::to_json(batch));
  REQUIRE(r.status == 200);
  CHECK(r.body["accepted"] == 2);
  CHECK(r.body["duplicates"] == 0);
  r = post_json(as_node(server, a), server.url("/v1/events"), protocol::to_json(batch));  // redelivered
  CHECK(r.body["accepted"] == 0);
  CHECK(r.body["duplicates"] == 2);

  const auto out = server.scratch() / "follow.out";
  auto follow = Process::spawn({control_binary(), "events", "--follow", "--poll", "100ms", "--json", "--node", a.id,
                                "--state", server.state().string(), "--server", server.url()},
                               {}, out, server.scratch() / "follow.err");
  REQUIRE(follow);
  auto ids_seen = [&] {
    std::vector<std::string> ids;
    std::istringstream in(slurp(out));
    std::string line;
    while (std::getline(in, line)) {
      auto j = parse_json(line, "follow line");
      if (j && j->contains("id")) ids.push_back((*j)["id"].get<std::string>());
    }
    return ids;
  };
  REQUIRE(wait_for([&] { return ids_seen().size() >= 2; }, 10s));
  for (int round = 0; round < 3; ++round) {
    protocol::EventBatch more;
    for (int i = 0; i < 4; ++i) {
      more.events.push_back({"ev-r" + std::to_string(round) + "-" + std::to_string(i), "info", "task.progress",
                             "round " + std::to_string(round), ""});
    }
    more.events.push_back({"ev-1", "info", "task.started", "a duplicate", ""});
    REQUIRE(post_json(as_node(server, a), server.url("/v1/events"), protocol::to_json(more)).status == 200);
  }
  REQUIRE(wait_for([&] { return ids_seen().size() >= 14; }, 10s));
  follow->kill(SIGTERM);
  follow->wait_exit(5s);
  const auto ids = ids_seen();
  CHECK(ids.size() == 14);
  CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == ids.size());  // none twice
  CHECK(ids.front() == "ev-1");
  CHECK(ids.back() == "ev-r2-3");
}

}  // namespace cairn::test
