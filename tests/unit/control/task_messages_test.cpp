// The task and event messages control decodes from nodes (common/protocol/tasks.hpp): what
// round-trips, and what is refused with a message naming the message and the field.
#include <doctest/doctest.h>

#include <string>

#include "common/protocol/tasks.hpp"

using namespace cairn;
using namespace cairn::protocol;

TEST_CASE("task messages round-trip through JSON") {
  CompleteRequest c;
  c.fence = 3;
  c.outcome = "failed";
  c.reason = FailureReason::timeout;
  c.exit_code = 137;
  c.error = "ran past 10 s";
  c.output = "tail";
  c.output_truncated = true;
  c.output_bytes = 1 << 20;
  auto back = decode_complete_request(dump_json(to_json(c)));
  REQUIRE(back);
  CHECK(back->fence == 3);
  CHECK(back->reason == FailureReason::timeout);
  CHECK(back->exit_code == 137);
  CHECK(back->output_truncated);
  CHECK(back->output_bytes == 1 << 20);

  LeaseResponse lr;
  LeasedTask t;
  t.id = "t1";
  t.kind = "exec";
  t.args = {{"argv", {"true"}}};
  t.fence = 2;
  t.attempt = 2;
  t.lease_s = 30;
  lr.tasks.push_back(t);
  lr.cancel = {"t0"};
  auto lr_back = decode_lease_response(dump_json(to_json(lr)));
  REQUIRE(lr_back);
  REQUIRE(lr_back->tasks.size() == 1);
  CHECK(lr_back->tasks[0].args["argv"][0] == "true");
  CHECK(lr_back->cancel == std::vector<std::string>{"t0"});

  for (auto state : {TaskState::queued, TaskState::dead, TaskState::cancelled}) {
    CHECK(task_state_from(task_state_name(state)) == state);
  }
  CHECK(!failure_transient(FailureReason::exit_nonzero));
  CHECK(!failure_transient(FailureReason::invalid_args));
  CHECK(failure_transient(FailureReason::lease_lost));
  CHECK(failure_transient(FailureReason::timeout));
}

TEST_CASE("malformed task messages are refused, naming what is wrong") {
  struct Case {
    const char* name;
    Result<bool> (*decode)(std::string_view);
    const char* body;
    const char* needle;
  };
  auto lease = [](std::string_view b) -> Result<bool> {
    auto r = decode_lease_request(b);
    if (!r) return fail(r.error());
    return true;
  };
  auto extend = [](std::string_view b) -> Result<bool> {
    auto r = decode_extend_request(b);
    if (!r) return fail(r.error());
    return true;
  };
  auto complete = [](std::string_view b) -> Result<bool> {
    auto r = decode_complete_request(b);
    if (!r) return fail(r.error());
    return true;
  };
  auto events = [](std::string_view b) -> Result<bool> {
    auto r = decode_event_batch(b);
    if (!r) return fail(r.error());
    return true;
  };
  const std::string big_output = R"({"fence": 1, "outcome": "succeeded", "output": ")" +
                                 std::string(kMaxTaskOutputBytes + 1, 'x') + "\"}";
  std::string many_events = R"({"events": [)";
  for (std::size_t i = 0; i <= kMaxEventsPerBatch; ++i) many_events += std::string(i ? "," : "") + R"({"id": "e"})";
  many_events += "]}";
  const Case cases[] = {
      {"array body", lease, "[1, 2]", "expected a JSON object"},
      {"not json", lease, "{", "lease request"},
      {"max_tasks a string", lease, R"({"max_tasks": "many"})", "lease request"},
      {"extend without fence", extend, R"({"lease_s": 30})", "fence"},
      {"unknown outcome", complete, R"({"fence": 1, "outcome": "exploded"})", "exploded"},
      {"failed without reason", complete, R"({"fence": 1, "outcome": "failed"})", "reason"},
      {"unknown reason", complete, R"({"fence": 1, "outcome": "failed", "reason": "gremlins"})", "gremlins"},
      {"output over the cap", complete, big_output.c_str(), "cap"},
      {"event without id", events, R"({"events": [{"kind": "x"}]})", "id"},
      {"too many events", events, many_events.c_str(), "cap"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto r = c.decode(c.body);
    REQUIRE(!r);
    CHECK(r.error().code == Errc::data);
    CHECK(r.error().message.find(c.needle) != std::string::npos);
  }
}
