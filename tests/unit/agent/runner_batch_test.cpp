// The runner's batch complete (h-taskbatch): tasks that finish while a completion is in flight
// are completed together in one request; a refusal of one item (stale fence) is that task's
// alone; a control service without batches gets the completions one by one.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "agent/events/buffer.hpp"
#include "agent/tasks/runner.hpp"
#include "common/log.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace cairn::agent::tasks;
using namespace std::chrono;

namespace {

struct BatchControl {
  std::mutex m;
  std::condition_variable cv;
  bool hold_first = true;   // the first single completion waits for release()
  bool released = false;
  bool batches = true;      // false: a control service without POST /v1/tasks/complete
  std::string stale_id;     // this task's completion is refused (409 stale_fence)
  std::vector<std::string> singles;
  std::vector<std::vector<std::string>> batch_calls;
  std::map<std::string, int> completed;  // accepted completions per task

  void release() {
    std::lock_guard l(m);
    released = true;
    cv.notify_all();
  }
  int total_completed() {
    std::lock_guard l(m);
    int n = 0;
    for (const auto& [id, count] : completed) n += count;
    return n;
  }
};

class BatchChannel final : public TaskChannel {
 public:
  explicit BatchChannel(BatchControl& c) : c_(c) {}
  Result<protocol::ExtendResponse> extend(const std::string&, const protocol::ExtendRequest&) override {
    return protocol::ExtendResponse{60, false};
  }
  Result<protocol::CompleteResponse> complete(const std::string& id, const protocol::CompleteRequest& r) override {
    std::unique_lock l(c_.m);
    const bool first = c_.singles.empty();
    c_.singles.push_back(id);
    if (first && c_.hold_first) c_.cv.wait(l, [&] { return c_.released; });
    if (id == c_.stale_id) return fail(Errc::refused, "complete task " + id + ": stale_fence");
    ++c_.completed[id];
    return protocol::CompleteResponse{r.outcome};
  }
  Result<protocol::CompleteBatchResponse> complete_batch(const protocol::CompleteBatchRequest& batch) override {
    std::lock_guard l(c_.m);
    if (!c_.batches) return fail(Errc::internal, "POST /v1/tasks/complete: 404 not_found");
    std::vector<std::string> ids;
    protocol::CompleteBatchResponse out;
    for (const auto& item : batch.completions) {
      ids.push_back(item.id);
      protocol::CompleteItemResult r;
      r.id = item.id;
      if (item.id == c_.stale_id) {
        r.status = 409;
        r.code = "stale_fence";
        r.message = "this node no longer holds that lease";
      } else {
        r.state = item.request.outcome;
        ++c_.completed[item.id];
      }
      out.results.push_back(std::move(r));
    }
    c_.batch_calls.push_back(std::move(ids));
    return out;
  }

 private:
  BatchControl& c_;
};

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

protocol::LeasedTask quick_task(const std::string& id) {
  return {.id = id, .kind = "exec", .args = {{"argv", {"true"}}}, .fence = 3, .attempt = 1, .timeout_s = 0,
          .lease_s = 60};
}

struct BatchFixture {
  test::TempDir dir;
  Root root{"/"};
  BatchControl control;
  std::unique_ptr<events::EventBuffer> events;
  BatchFixture() {
    log::set_min_level(log::Level::critical);
    events = std::move(*events::EventBuffer::open(dir.path() / "events", SystemClock::instance()));
  }
  Runner runner() {
    return Runner({}, {.max_concurrent = 8, .kill_grace = milliseconds(300), .complete_retry = milliseconds(50)}, root,
                  SystemClock::instance(), [this] { return std::make_unique<BatchChannel>(control); }, events.get());
  }
  int events_of(const std::string& kind) {
    int n = 0;
    for (const auto& e : events->pending(1000)) n += e.kind == kind ? 1 : 0;
    return n;
  }
};

}  // namespace

TEST_CASE("tasks finishing while a completion is in flight are completed together in one request") {
  BatchFixture f;
  auto runner = f.runner();
  runner.start(quick_task("a"));
  // a's completion is sent alone and held in flight...
  REQUIRE(test::wait_for([&] { std::lock_guard l(f.control.m); return f.control.singles.size() == 1; }, seconds(20)));
  for (const char* id : {"b", "c", "d"}) runner.start(quick_task(id));
  // ...while b, c and d finish and queue theirs behind it.
  REQUIRE(test::wait_for([&] { return runner.completions_waiting() == 3; }, seconds(20)));
  f.control.release();
  REQUIRE(test::wait_for([&] { return f.control.total_completed() == 4; }, seconds(20)));
  REQUIRE(test::wait_for([&] { return runner.running_count() == 0; }, seconds(5)));
  std::lock_guard l(f.control.m);
  CHECK(f.control.singles == std::vector<std::string>{"a"});
  REQUIRE(f.control.batch_calls.size() == 1);
  CHECK(sorted(f.control.batch_calls[0]) == std::vector<std::string>{"b", "c", "d"});  // in the order they finished
  for (const char* id : {"a", "b", "c", "d"}) CHECK(f.control.completed[id] == 1);
}

TEST_CASE("in a batch, a stale fence refuses that task only; it is not retried") {
  BatchFixture f;
  f.control.stale_id = "c";
  auto runner = f.runner();
  runner.start(quick_task("a"));
  REQUIRE(test::wait_for([&] { std::lock_guard l(f.control.m); return f.control.singles.size() == 1; }, seconds(20)));
  for (const char* id : {"b", "c"}) runner.start(quick_task(id));
  REQUIRE(test::wait_for([&] { return runner.completions_waiting() == 2; }, seconds(20)));
  f.control.release();
  REQUIRE(test::wait_for([&] { return runner.running_count() == 0; }, seconds(20)));
  std::lock_guard l(f.control.m);
  REQUIRE(f.control.batch_calls.size() == 1);
  CHECK(sorted(f.control.batch_calls[0]) == std::vector<std::string>{"b", "c"});
  CHECK(f.control.completed["b"] == 1);
  CHECK(f.control.completed.count("c") == 0);
  CHECK(f.control.singles.size() == 1);  // c's refusal is final: no single retry
  CHECK(f.events_of("task.complete_failed") == 1);
}

TEST_CASE("a control service without batch complete gets the completions one by one") {
  BatchFixture f;
  f.control.batches = false;
  auto runner = f.runner();
  runner.start(quick_task("a"));
  REQUIRE(test::wait_for([&] { std::lock_guard l(f.control.m); return f.control.singles.size() == 1; }, seconds(20)));
  for (const char* id : {"b", "c"}) runner.start(quick_task(id));
  REQUIRE(test::wait_for([&] { return runner.completions_waiting() == 2; }, seconds(20)));
  f.control.release();
  REQUIRE(test::wait_for([&] { return f.control.total_completed() == 3; }, seconds(20)));
  std::lock_guard l(f.control.m);
  CHECK(f.control.batch_calls.empty());
  CHECK(f.control.singles.size() == 3);
}
