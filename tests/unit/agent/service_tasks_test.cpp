// The service loop with tasks: the real loop on the system clock (1 s heartbeats), real exec
// processes, and a fake control service behind the HttpClient seam that hands out tasks and
// records extends, completions and event batches.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <set>

#include "common/protocol/messages.hpp"
#include "common/protocol/tasks.hpp"
#include "common/time.hpp"
#include "tests/support/process.hpp"
#include "tests/unit/agent/service_harness.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace std::chrono;

namespace {

const char* kNode = "4b7e1c2d-9a3f-4e5b-8c6d-1f2a3b4c5d6e";
const char* kTask = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";

class FakeControl {
 public:
  std::mutex m;
  std::vector<protocol::HeartbeatRequest> heartbeats;
  std::vector<protocol::LeaseRequest> leases;
  std::vector<protocol::ExtendRequest> extends;
  std::vector<protocol::CompleteRequest> completes;
  std::vector<protocol::Event> events;
  std::vector<protocol::LeasedTask> to_lease;  // handed out by the next lease
  bool cancel_in_heartbeat = false;

  // Runs on the loop's threads: an unreadable request is answered 400 (the test then fails
  // on what it waits for), never REQUIREd there.
  static HttpResponse bad(const std::string& why) { return test::error_answer(400, "bad_request", why); }

  Result<HttpResponse> answer(const HttpRequest& req) {
    std::lock_guard l(m);
    if (req.url.ends_with("/v1/heartbeat")) {
      auto hb = protocol::decode_heartbeat_request(req.body);
      if (!hb) return bad(hb.error().message);
      heartbeats.push_back(*hb);
      protocol::HeartbeatResponse r{{}, format_rfc3339(system_clock::now()), 1, false, {}};
      r.work_waiting = !to_lease.empty();
      if (cancel_in_heartbeat) r.cancel_tasks = hb->running_tasks;
      return test::json_answer(r);
    }
    if (req.url.ends_with("/v1/tasks/lease")) {
      auto lr = protocol::decode_lease_request(req.body);
      if (!lr) return bad(lr.error().message);
      leases.push_back(*lr);
      protocol::LeaseResponse r;
      r.tasks = std::move(to_lease);
      to_lease.clear();
      return test::json_answer(r);
    }
    if (req.url.ends_with("/extend")) {
      auto er = protocol::decode_extend_request(req.body);
      if (!er) return bad(er.error().message);
      extends.push_back(*er);
      return test::json_answer(protocol::ExtendResponse{60, false});
    }
    if (req.url.ends_with("/complete")) {
      auto cr = protocol::decode_complete_request(req.body);
      if (!cr) return bad(cr.error().message);
      completes.push_back(*cr);
      return test::json_answer(protocol::CompleteResponse{cr->outcome});
    }
    if (req.url.ends_with("/v1/events")) return test::record_events(req, events);
    return test::error_answer(404, "not_found", req.url);
  }
  bool has_event(const std::string& kind) {
    std::lock_guard l(m);
    return std::any_of(events.begin(), events.end(), [&](const auto& e) { return e.kind == kind; });
  }
  std::size_t completions() { std::lock_guard l(m); return completes.size(); }
  std::size_t extend_count() { std::lock_guard l(m); return extends.size(); }
};

// An enrolled node running two tasks at once (the default), with a 1 s stop timeout for them.
struct Node : test::ServiceNode<FakeControl> {
  Node() : ServiceNode(kNode) { config.task_stop_timeout = seconds(1); }
};

protocol::LeasedTask task(std::vector<std::string> argv) {
  return {.id = kTask, .kind = "exec", .args = {{"argv", argv}}, .fence = 11, .attempt = 1, .timeout_s = 60, .lease_s = 60};
}

}  // namespace

TEST_CASE("the service leases when work waits, runs the task, completes it and delivers its events") {
  Node node;
  node.control.to_lease.push_back(task({"sh", "-c", "echo from-the-node"}));
  node.start();
  REQUIRE(test::wait_for([&] { return node.control.completions() == 1; }, seconds(20)));
  REQUIRE(test::wait_for([&] { return node.control.has_event("task.succeeded"); }, seconds(20)));
  CHECK(node.stop());
  std::lock_guard l(node.control.m);
  const auto& c = node.control.completes[0];
  CHECK(c.fence == 11);
  CHECK(c.outcome == "succeeded");
  CHECK(c.output == "from-the-node\n");
  REQUIRE_FALSE(node.control.leases.empty());
  CHECK(node.control.leases[0].max_tasks == 2);  // the configured slots
  const auto& caps = node.control.heartbeats[0].capabilities;
  CHECK(std::find(caps.begin(), caps.end(), "task.exec") != caps.end());
  for (const char* kind : {"node.enrolled", "service.started", "task.started", "task.succeeded"}) {
    CAPTURE(kind);
    CHECK(std::any_of(node.control.events.begin(), node.control.events.end(),
                      [&](const auto& e) { return e.kind == kind; }));
  }
  // Delivered once each: the buffer was acknowledged, not sent again on later turns.
  std::set<std::string> ids;
  for (const auto& e : node.control.events) CHECK(ids.insert(e.id).second);
}

TEST_CASE("a task named in a heartbeat's cancel list is stopped and completed cancelled") {
  Node node;
  node.control.to_lease.push_back(task({"sleep", "300"}));
  node.start();
  REQUIRE(test::wait_for([&] { return node.control.extend_count() >= 1; }, seconds(20)));
  {
    std::lock_guard l(node.control.m);
    node.control.cancel_in_heartbeat = true;
  }
  REQUIRE(test::wait_for([&] { return node.control.completions() == 1; }, seconds(20)));
  CHECK(node.stop());
  std::lock_guard l(node.control.m);
  CHECK(node.control.completes[0].outcome == "cancelled");
  // The heartbeat that carried the cancel had listed the task as running.
  CHECK(std::any_of(node.control.heartbeats.begin(), node.control.heartbeats.end(), [](const auto& hb) {
    return std::find(hb.running_tasks.begin(), hb.running_tasks.end(), kTask) != hb.running_tasks.end();
  }));
}

TEST_CASE("SIGTERM stops leasing, completes a task still running as failed/killed and exits cleanly") {
  Node node;
  node.control.to_lease.push_back(task({"sleep", "300"}));
  node.start();
  REQUIRE(test::wait_for([&] { return node.control.extend_count() >= 1; }, seconds(20)));
  const auto started = steady_clock::now();
  auto stopped = node.stop();
  CHECK(stopped);
  CHECK(steady_clock::now() - started < seconds(15));  // stop timeout 1 s + kill grace
  std::lock_guard l(node.control.m);
  REQUIRE(node.control.completes.size() == 1);
  CHECK(node.control.completes[0].outcome == "failed");
  CHECK(node.control.completes[0].reason == protocol::FailureReason::killed);
  // Flushed on the way out.
  CHECK(std::any_of(node.control.events.begin(), node.control.events.end(),
                    [](const auto& e) { return e.kind == "service.stopped"; }));
}
