// The service loop with tasks: the real loop on the system clock (1 s heartbeats), real exec
// processes, and a fake control service behind the HttpClient seam that hands out tasks and
// records extends, completions and event batches.
#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "agent/enroll/credentials.hpp"
#include "agent/runtime/service.hpp"
#include "common/crypto.hpp"
#include "common/log.hpp"
#include "common/protocol/messages.hpp"
#include "common/protocol/tasks.hpp"
#include "common/time.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

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

  template <class T>
  static HttpResponse ok(const T& body) { return HttpResponse{200, {}, dump_json(protocol::to_json(body))}; }

  // Runs on the loop's threads: an unreadable request is answered 400 (the test then fails
  // on what it waits for), never REQUIREd there.
  static HttpResponse bad(const std::string& why) {
    return HttpResponse{400, {}, dump_json(protocol::to_json(protocol::ErrorBody{"bad_request", why, ""}))};
  }

  Result<HttpResponse> answer(const HttpRequest& req) {
    std::lock_guard l(m);
    if (req.url.ends_with("/v1/heartbeat")) {
      auto hb = protocol::decode_heartbeat_request(req.body);
      if (!hb) return bad(hb.error().message);
      heartbeats.push_back(*hb);
      protocol::HeartbeatResponse r{{}, format_rfc3339(system_clock::now()), 1, false, {}};
      r.work_waiting = !to_lease.empty();
      if (cancel_in_heartbeat) r.cancel_tasks = hb->running_tasks;
      return ok(r);
    }
    if (req.url.ends_with("/v1/tasks/lease")) {
      auto lr = protocol::decode_lease_request(req.body);
      if (!lr) return bad(lr.error().message);
      leases.push_back(*lr);
      protocol::LeaseResponse r;
      r.tasks = std::move(to_lease);
      to_lease.clear();
      return ok(r);
    }
    if (req.url.ends_with("/extend")) {
      auto er = protocol::decode_extend_request(req.body);
      if (!er) return bad(er.error().message);
      extends.push_back(*er);
      return ok(protocol::ExtendResponse{60, false});
    }
    if (req.url.ends_with("/complete")) {
      auto cr = protocol::decode_complete_request(req.body);
      if (!cr) return bad(cr.error().message);
      completes.push_back(*cr);
      return ok(protocol::CompleteResponse{cr->outcome});
    }
    if (req.url.ends_with("/v1/events")) {
      auto batch = protocol::decode_event_batch(req.body);
      if (!batch) return bad(batch.error().message);
      events.insert(events.end(), batch->events.begin(), batch->events.end());
      return ok(protocol::EventBatchResponse{static_cast<std::int64_t>(batch->events.size()), 0});
    }
    return HttpResponse{404, {}, dump_json(protocol::to_json(protocol::ErrorBody{"not_found", req.url, ""}))};
  }
  bool has_event(const std::string& kind) {
    std::lock_guard l(m);
    return std::any_of(events.begin(), events.end(), [&](const auto& e) { return e.kind == kind; });
  }
  std::size_t completions() { std::lock_guard l(m); return completes.size(); }
  std::size_t extend_count() { std::lock_guard l(m); return extends.size(); }
};

class FakeHttp final : public HttpClient {
 public:
  explicit FakeHttp(FakeControl& c) : c_(c) {}
  Result<HttpResponse> send(const HttpRequest& request) override { return c_.answer(request); }

 private:
  FakeControl& c_;
};

// An enrolled node whose service runs on its own thread until stop().
class Node {
 public:
  Node() {
    log::set_min_level(log::Level::critical);
    config_.root = Root(dir_.path());
    config_.persist_dir = dir_.path() / "persist";
    config_.control_url = "https://control.test:8443";
    config_.task_stop_timeout = seconds(1);
    const auto now = system_clock::now();
    auto ca_key = *generate_key(KeyType::p256);
    auto ca = *issue_certificate({.common_name = "test CA", .not_before = now - hours(1), .not_after = now + hours(48),
                                  .is_ca = true},
                                 ca_key.get(), nullptr, ca_key.get());
    auto key = *generate_key(KeyType::ed25519);
    auto cert = *issue_certificate({.common_name = kNode, .not_before = now - hours(1), .not_after = now + hours(24),
                                    .client_auth = true},
                                   key.get(), ca.get(), ca_key.get());
    REQUIRE(CredentialStore(config_.state_dir()).install({*private_key_pem(key.get()), *cert_pem(cert.get()), *cert_pem(ca.get())}));
  }
  ~Node() { stop(); }
  void start() {
    std::promise<StopSignal*> ready;
    auto f = ready.get_future();
    thread_ = std::thread([this, ready = std::move(ready)]() mutable {
      StopSignal stop;
      ready.set_value(&stop);
      const std::function<double()> random01 = [] { return 0.5; };
      const HttpClientFactory http = [this](const TlsOptions&) { return std::make_unique<FakeHttp>(control); };
      result_ = run_service(config_, options_, SystemClock::instance(), random01, stop, http);
    });
    stop_ = f.get();
  }
  Status stop() {
    if (thread_.joinable()) {
      stop_->request();
      thread_.join();
    }
    return result_;
  }

  FakeControl control;
  AgentConfig config_;

 private:
  test::TempDir dir_;
  ServiceOptions options_;
  std::thread thread_;
  StopSignal* stop_ = nullptr;
  Status result_;
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
