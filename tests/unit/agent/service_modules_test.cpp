// The service loop applying the desired module set by itself (h-apply): the real loop on the
// system clock (1 s heartbeats), a fake control service behind the HttpClient seam whose
// heartbeat replies carry a desired set, and the module update behind ServiceOptions'
// module_apply seam (the update itself is tested in module_reconciler_test and for real in
// integration-modules-apply). Proves: the update runs on its own thread while heartbeats go
// on, module.applied reaches control, a SIGTERM during an update ends the service within its
// stop timeout, and modules.auto_apply false applies nothing.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>

#include "common/fs.hpp"
#include "common/protocol/messages.hpp"
#include "common/protocol/tasks.hpp"
#include "common/time.hpp"
#include "tests/support/process.hpp"
#include "tests/unit/agent/service_harness.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace std::chrono;

namespace {

const char* kNode = "9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f";
const std::string kDigest = "sha256:" + std::string(64, 'a');

class FakeControl {
 public:
  std::mutex m;
  std::size_t heartbeats = 0;
  std::vector<protocol::Event> events;
  std::vector<protocol::ModuleRef> desired{{"web", kDigest, false, false}};

  Result<HttpResponse> answer(const HttpRequest& req) {
    std::lock_guard l(m);
    if (req.url.ends_with("/v1/heartbeat")) {
      auto hb = protocol::decode_heartbeat_request(req.body);
      if (!hb) return test::error_answer(400, "bad_request", hb.error().message);
      ++heartbeats;
      return test::json_answer(protocol::HeartbeatResponse{desired, format_rfc3339(system_clock::now()), 1, false, {}});
    }
    if (req.url.ends_with("/v1/tasks/lease")) return test::json_answer(protocol::LeaseResponse{});
    if (req.url.ends_with("/v1/events")) return test::record_events(req, events);
    return test::error_answer(404, "not_found", req.url);
  }
  std::size_t heartbeat_count() { std::lock_guard l(m); return heartbeats; }
  std::vector<protocol::Event> events_of(const std::string& kind) {
    std::lock_guard l(m);
    std::vector<protocol::Event> out;
    for (const auto& e : events) {
      if (e.kind == kind) out.push_back(e);
    }
    return out;
  }
};

// What the fake update sees and is told; shared with the reconciler's worker thread.
struct Updates {
  std::atomic<int> calls{0};
  std::atomic<bool> release{false};    // the update may end
  std::atomic<bool> saw_stop{false};   // it ended because the service was stopping
};

// The update: waits until released (then reports web mounted) or told to stop.
ModuleApplyFn blocking_update(std::shared_ptr<Updates> u) {
  return [u](const std::vector<protocol::ModuleRef>& desired, const std::string& now,
             const std::function<bool()>& stop) -> Result<modules::UpdateOutcome> {
    ++u->calls;
    const auto deadline = steady_clock::now() + seconds(30);
    while (!u->release && steady_clock::now() < deadline) {
      if (stop()) {
        u->saw_stop = true;
        return fail(Errc::temporary, "module update abandoned: the agent is stopping");
      }
      std::this_thread::sleep_for(milliseconds(5));
    }
    modules::UpdateOutcome out;
    for (const auto& d : desired) {
      modules::AttachedModule a;
      a.name = d.name;
      a.version = "1.0";
      a.image_digest = "sha256:" + std::string(64, 'b');
      a.source = "127.0.0.1:5000/cairn/" + d.name + "@" + d.digest;
      a.attached_at = now;
      out.change.attached.push_back(a);
      out.change.union_outcome.state.layers.push_back({a.name, a.version, 10, a.image_digest, "/run/cairn/modules/layers/x"});
    }
    out.change.union_outcome.state.generation = 1;
    return out;
  };
}

// An enrolled node whose module updates go to the fake update, with a 2 s stop timeout.
struct Node : test::ServiceNode<FakeControl> {
  explicit Node(std::shared_ptr<Updates> updates) : ServiceNode(kNode) {
    config.module_registry = "127.0.0.1:5000/cairn";
    config.task_stop_timeout = seconds(2);
    options.module_apply = blocking_update(std::move(updates));
  }
  [[nodiscard]] std::string file(const std::filesystem::path& rel) const {
    return read_file_if_exists(config.state_dir() / rel, 1 << 20).value().value_or("");
  }
};

}  // namespace

TEST_CASE("the service applies a new desired set on its own thread while heartbeats go on; module.applied reaches control") {
  auto updates = std::make_shared<Updates>();
  Node node(updates);
  node.start();
  REQUIRE(test::wait_for([&] { return updates->calls == 1; }, seconds(20)));
  // The update hangs (a slow registry): the heartbeats do not wait for it.
  const auto before = node.control.heartbeat_count();
  CHECK(test::wait_for([&] { return node.control.heartbeat_count() >= before + 3; }, seconds(20)));
  CHECK(updates->calls == 1);  // one at a time: the same set is not started again meanwhile
  updates->release = true;
  REQUIRE(test::wait_for([&] { return !node.control.events_of("module.applied").empty(); }, seconds(20)));
  const auto applied = node.control.events_of("module.applied");
  REQUIRE(applied.size() == 1);
  CHECK(applied[0].severity == "info");
  CHECK(applied[0].message.find("web@sha256:" + std::string(64, 'b')) != std::string::npos);
  CHECK(node.file("modules/reconciled.json").find(kDigest) != std::string::npos);
  // Later heartbeats bring the same set: nothing runs again.
  const auto after = node.control.heartbeat_count();
  REQUIRE(test::wait_for([&] { return node.control.heartbeat_count() >= after + 2; }, seconds(20)));
  CHECK(updates->calls == 1);
  CHECK(node.stop());
}

TEST_CASE("SIGTERM during an update tells it to stop; the service exits within its stop timeout") {
  auto updates = std::make_shared<Updates>();
  Node node(updates);
  node.start();
  REQUIRE(test::wait_for([&] { return updates->calls == 1; }, seconds(20)));
  const auto started = steady_clock::now();
  CHECK(node.stop());
  CHECK(steady_clock::now() - started < seconds(5));  // stop timeout 2 s
  CHECK(updates->saw_stop);
  CHECK(node.control.events_of("module.applied").empty());
  CHECK(!node.control.events_of("service.stopped").empty());
  CHECK(node.file("modules/reconciled.json").empty());  // nothing was applied
}

TEST_CASE("with modules.auto_apply false the service stores the desired set and applies nothing") {
  auto updates = std::make_shared<Updates>();
  Node node(updates);
  node.config.module_auto_apply = false;
  node.start();
  REQUIRE(test::wait_for([&] { return node.control.heartbeat_count() >= 3; }, seconds(20)));
  CHECK(node.file("modules/desired.json").find(kDigest) != std::string::npos);
  CHECK(updates->calls == 0);
  CHECK(node.stop());
}
