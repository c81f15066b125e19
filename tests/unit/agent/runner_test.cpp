// The task runner with real exec processes and a fake control behind the TaskChannel seam:
// completion with output, lease extension at a third of the lease, operator cancel, a lost
// lease, the SIGTERM drain, the concurrency limit, and the events of each transition.
#include <doctest/doctest.h>

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "agent/events/buffer.hpp"
#include "agent/tasks/runner.hpp"
#include "common/log.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace cairn::agent::tasks;
using namespace std::chrono;

namespace {

// What control saw of the tasks, and what it answers.
struct FakeControl {
  std::mutex m;
  std::vector<std::pair<std::string, protocol::ExtendRequest>> extends;
  std::vector<std::pair<std::string, protocol::CompleteRequest>> completes;
  bool cancel_on_extend = false;
  bool refuse_extend = false;
  std::int64_t lease_s = 60;

  std::size_t extend_count() { std::lock_guard l(m); return extends.size(); }
  std::optional<protocol::CompleteRequest> completion_of(const std::string& id) {
    std::lock_guard l(m);
    for (const auto& [task, c] : completes) {
      if (task == id) return c;
    }
    return std::nullopt;
  }
  std::size_t complete_count() { std::lock_guard l(m); return completes.size(); }
};

class FakeChannel final : public TaskChannel {
 public:
  explicit FakeChannel(FakeControl& c) : c_(c) {}
  Result<protocol::ExtendResponse> extend(const std::string& id, const protocol::ExtendRequest& r) override {
    std::lock_guard l(c_.m);
    c_.extends.emplace_back(id, r);
    if (c_.refuse_extend) return fail(Errc::refused, "POST /v1/tasks/" + id + "/extend: stale_fence: lease lost");
    return protocol::ExtendResponse{c_.lease_s, c_.cancel_on_extend};
  }
  Result<protocol::CompleteResponse> complete(const std::string& id, const protocol::CompleteRequest& r) override {
    std::lock_guard l(c_.m);
    c_.completes.emplace_back(id, r);
    return protocol::CompleteResponse{r.outcome};
  }

 private:
  FakeControl& c_;
};

protocol::LeasedTask exec_task(const std::string& id, std::vector<std::string> argv, std::int64_t lease_s = 60) {
  return {.id = id, .kind = "exec", .args = {{"argv", argv}}, .fence = 7, .attempt = 1, .timeout_s = 0,
          .lease_s = lease_s};
}

struct Fixture {
  test::TempDir dir;
  Root root{"/"};
  FakeControl control;
  std::unique_ptr<events::EventBuffer> events;
  Fixture() {
    log::set_min_level(log::Level::critical);
    events = std::move(*events::EventBuffer::open(dir.path() / "events", SystemClock::instance()));
  }
  Runner runner(const Clock& clock, std::size_t max = 2) {
    return Runner({}, {.max_concurrent = max, .kill_grace = milliseconds(300), .complete_retry = milliseconds(50)},
                  root, clock, [this] { return std::make_unique<FakeChannel>(control); }, events.get());
  }
  std::vector<std::string> event_kinds() {
    std::vector<std::string> kinds;
    for (const auto& e : events->pending(1000)) kinds.push_back(e.kind);
    return kinds;
  }
};

}  // namespace

TEST_CASE("a leased exec task runs and is completed with its fence, exit code and output") {
  Fixture f;
  auto runner = f.runner(SystemClock::instance());
  runner.start(exec_task("t1", {"sh", "-c", "echo hello; exit 0"}));
  REQUIRE(test::wait_for([&] { return f.control.completion_of("t1").has_value(); }, seconds(20)));
  const auto c = *f.control.completion_of("t1");
  CHECK(c.fence == 7);
  CHECK(c.outcome == "succeeded");
  CHECK(c.exit_code == 0);
  CHECK(c.output == "hello\n");
  REQUIRE(f.control.extend_count() >= 1);
  CHECK(f.control.extends[0].second.running);  // the first extend says it runs
  CHECK(f.control.extends[0].second.fence == 7);
  REQUIRE(test::wait_for([&] { return runner.reap() == 1; }, seconds(5)));
  CHECK(runner.running_count() == 0);
  CHECK(f.event_kinds() == std::vector<std::string>{"task.started", "task.succeeded"});
}

TEST_CASE("a failing command is completed failed with exit_nonzero") {
  Fixture f;
  auto runner = f.runner(SystemClock::instance());
  runner.start(exec_task("t2", {"sh", "-c", "echo no >&2; exit 4"}));
  REQUIRE(test::wait_for([&] { return f.control.completion_of("t2").has_value(); }, seconds(20)));
  const auto c = *f.control.completion_of("t2");
  CHECK(c.outcome == "failed");
  CHECK(c.reason == protocol::FailureReason::exit_nonzero);
  CHECK(c.exit_code == 4);
  CHECK(c.output == "no\n");
}

TEST_CASE("the lease of a long task is extended at a third of its length") {
  Fixture f;
  test::ManualClock clock;
  f.control.lease_s = 30;
  auto runner = f.runner(clock);
  runner.start(exec_task("t3", {"sleep", "300"}, 30));
  REQUIRE(test::wait_for([&] { return f.control.extend_count() == 1; }, seconds(10)));
  REQUIRE(clock.wait_for_sleeper());
  CHECK(clock.until_next_wake() == seconds(10));
  clock.advance(seconds(9));
  CHECK(f.control.extend_count() == 1);
  clock.advance(seconds(1));
  REQUIRE(test::wait_for([&] { return f.control.extend_count() == 2; }, seconds(10)));
  // An operator cancels: the next extend's answer says so; the process group is stopped.
  {
    std::lock_guard l(f.control.m);
    f.control.cancel_on_extend = true;
  }
  REQUIRE(test::wait_for([&] { return clock.until_next_wake() == seconds(10); }, seconds(10)));
  clock.advance(seconds(10));
  REQUIRE(test::wait_for([&] { return f.control.completion_of("t3").has_value(); }, seconds(20)));
  CHECK(f.control.completion_of("t3")->outcome == "cancelled");
  CHECK(runner.running_count() == 0);
}

TEST_CASE("an operator cancel stops a running task and completes it cancelled") {
  Fixture f;
  auto runner = f.runner(SystemClock::instance());
  runner.start(exec_task("t4", {"sleep", "300"}));
  REQUIRE(test::wait_for([&] { return f.control.extend_count() >= 1; }, seconds(10)));
  CHECK(runner.running_ids() == std::vector<std::string>{"t4"});
  runner.cancel("t4");
  REQUIRE(test::wait_for([&] { return f.control.completion_of("t4").has_value(); }, seconds(20)));
  CHECK(f.control.completion_of("t4")->outcome == "cancelled");
}

TEST_CASE("a lost lease stops the task and reports nothing for it") {
  Fixture f;
  f.control.refuse_extend = true;
  auto runner = f.runner(SystemClock::instance());
  runner.start(exec_task("t5", {"sleep", "300"}));
  REQUIRE(test::wait_for([&] { return runner.running_count() == 0; }, seconds(20)));
  CHECK(f.control.complete_count() == 0);
  const auto kinds = f.event_kinds();
  CHECK(std::find(kinds.begin(), kinds.end(), "task.lease_lost") != kinds.end());
}

TEST_CASE("draining completes a task still running at the stop timeout as failed/killed") {
  Fixture f;
  auto runner = f.runner(SystemClock::instance());
  runner.start(exec_task("t6", {"sleep", "300"}));
  runner.start(exec_task("t7", {"sh", "-c", "sleep 0.2"}));
  REQUIRE(test::wait_for([&] { return f.control.extend_count() >= 2; }, seconds(10)));
  const auto started = steady_clock::now();
  runner.drain(SystemClock::instance().monotonic() + seconds(2));
  CHECK(steady_clock::now() - started < seconds(10));
  REQUIRE(f.control.completion_of("t6"));
  CHECK(f.control.completion_of("t6")->outcome == "failed");
  CHECK(f.control.completion_of("t6")->reason == protocol::FailureReason::killed);
  REQUIRE(f.control.completion_of("t7"));
  CHECK(f.control.completion_of("t7")->outcome == "succeeded");  // finished within the timeout
  CHECK(runner.running_count() == 0);
}

TEST_CASE("the runner runs at most its limit at a time") {
  Fixture f;
  auto runner = f.runner(SystemClock::instance(), 2);
  CHECK(runner.free_slots() == 2);
  runner.start(exec_task("a", {"sleep", "300"}));
  CHECK(runner.free_slots() == 1);
  runner.start(exec_task("b", {"sleep", "300"}));
  CHECK(runner.free_slots() == 0);
  runner.cancel("a");
  REQUIRE(test::wait_for([&] { return runner.free_slots() == 1; }, seconds(20)));
}

TEST_CASE("an unknown kind leased from control is completed failed/invalid_args") {
  Fixture f;
  auto runner = f.runner(SystemClock::instance());
  runner.start({.id = "t8", .kind = "mine-bitcoin", .args = Json::object(), .fence = 3, .attempt = 1, .timeout_s = 0,
                .lease_s = 60});
  REQUIRE(test::wait_for([&] { return f.control.completion_of("t8").has_value(); }, seconds(20)));
  CHECK(f.control.completion_of("t8")->outcome == "failed");
  CHECK(f.control.completion_of("t8")->reason == protocol::FailureReason::invalid_args);
  CHECK(f.control.completion_of("t8")->fence == 3);
}
