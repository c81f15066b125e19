#include "common/protocol/tasks.hpp"

#include <array>
#include <utility>

#include "common/protocol/json_fields.hpp"

namespace cairn::protocol {
namespace {

using detail::event_from;
using detail::get_opt;

constexpr std::array kStates = {
    std::pair{TaskState::queued, std::string_view("queued")},
    std::pair{TaskState::leased, std::string_view("leased")},
    std::pair{TaskState::running, std::string_view("running")},
    std::pair{TaskState::succeeded, std::string_view("succeeded")},
    std::pair{TaskState::failed, std::string_view("failed")},
    std::pair{TaskState::dead, std::string_view("dead")},
    std::pair{TaskState::cancelled, std::string_view("cancelled")},
};

constexpr std::array kReasons = {
    std::pair{FailureReason::timeout, std::string_view("timeout")},
    std::pair{FailureReason::exit_nonzero, std::string_view("exit_nonzero")},
    std::pair{FailureReason::killed, std::string_view("killed")},
    std::pair{FailureReason::lease_lost, std::string_view("lease_lost")},
    std::pair{FailureReason::invalid_args, std::string_view("invalid_args")},
    std::pair{FailureReason::node_unavailable, std::string_view("node_unavailable")},
    std::pair{FailureReason::internal, std::string_view("internal")},
};

template <class E, std::size_t N>
std::string_view name_of(const std::array<std::pair<E, std::string_view>, N>& table, E value) {
  for (const auto& [v, name] : table) {
    if (v == value) return name;
  }
  return "unknown";
}

template <class E, std::size_t N>
std::optional<E> value_of(const std::array<std::pair<E, std::string_view>, N>& table, std::string_view name) {
  for (const auto& [v, n] : table) {
    if (n == name) return v;
  }
  return std::nullopt;
}

// decode_json for messages that must be JSON objects: `[1, 2]` is refused, not read as empty.
template <class T, class Fn>
Result<T> decode_object(std::string_view text, std::string_view what, Fn&& fn) {
  auto j = parse_json(text, what);
  if (!j) return fail(j.error());
  if (!j->is_object()) return fail(Errc::data, std::string(what) + ": expected a JSON object");
  try {
    return fn(*j);
  } catch (const nlohmann::json::exception& e) {
    return fail(Errc::data, std::string(what) + ": " + e.what());
  }
}

}  // namespace

std::string_view task_state_name(TaskState state) { return name_of(kStates, state); }
std::optional<TaskState> task_state_from(std::string_view name) { return value_of(kStates, name); }
bool task_state_final(TaskState state) {
  return state == TaskState::succeeded || state == TaskState::failed || state == TaskState::dead ||
         state == TaskState::cancelled;
}

std::string_view failure_reason_name(FailureReason reason) { return name_of(kReasons, reason); }
std::optional<FailureReason> failure_reason_from(std::string_view name) { return value_of(kReasons, name); }
bool failure_transient(FailureReason reason) {
  return reason != FailureReason::exit_nonzero && reason != FailureReason::invalid_args;
}

Json to_json(const LeasedTask& v) {
  return {{"id", v.id}, {"kind", v.kind}, {"args", v.args}, {"fence", v.fence},
          {"attempt", v.attempt}, {"timeout_s", v.timeout_s}, {"lease_s", v.lease_s}};
}

Json to_json(const LeaseRequest& v) {
  return {{"max_tasks", v.max_tasks}, {"lease_s", v.lease_s}, {"running", v.running}};
}

Json to_json(const LeaseResponse& v) {
  Json tasks = Json::array();
  for (const auto& t : v.tasks) tasks.push_back(to_json(t));
  return {{"tasks", tasks}, {"cancel", v.cancel}};
}

Json to_json(const ExtendRequest& v) {
  return {{"fence", v.fence}, {"lease_s", v.lease_s}, {"running", v.running}};
}

Json to_json(const ExtendResponse& v) { return {{"lease_s", v.lease_s}, {"cancel", v.cancel}}; }

Json to_json(const CompleteRequest& v) {
  Json j = {{"fence", v.fence},
            {"outcome", v.outcome},
            {"error", v.error},
            {"output", v.output},
            {"output_truncated", v.output_truncated},
            {"output_bytes", v.output_bytes},
            {"duration_ms", v.duration_ms}};
  j["reason"] = v.reason ? Json(std::string(failure_reason_name(*v.reason))) : Json();
  j["exit_code"] = v.exit_code ? Json(*v.exit_code) : Json();
  return j;
}

Json to_json(const CompleteResponse& v) { return {{"state", v.state}}; }

Json to_json(const Event& v) { return detail::event_json(v); }

Json to_json(const EventBatch& v) {
  Json events = Json::array();
  for (const auto& e : v.events) events.push_back(to_json(e));
  return {{"events", events}};
}

Json to_json(const EventBatchResponse& v) { return {{"accepted", v.accepted}, {"duplicates", v.duplicates}}; }

Result<LeaseRequest> decode_lease_request(std::string_view body) {
  return decode_object<LeaseRequest>(body, "lease request", [](const Json& j) {
    LeaseRequest v;
    get_opt(j, "max_tasks", v.max_tasks);
    get_opt(j, "lease_s", v.lease_s);
    get_opt(j, "running", v.running);
    return v;
  });
}

Result<LeaseResponse> decode_lease_response(std::string_view body) {
  return decode_object<LeaseResponse>(body, "lease response", [](const Json& j) {
    LeaseResponse v;
    for (const auto& t : j.at("tasks")) {
      LeasedTask task;
      task.id = t.at("id").get<std::string>();
      task.kind = t.at("kind").get<std::string>();
      get_opt(t, "args", task.args);
      task.fence = t.at("fence").get<std::int64_t>();
      get_opt(t, "attempt", task.attempt);
      get_opt(t, "timeout_s", task.timeout_s);
      get_opt(t, "lease_s", task.lease_s);
      v.tasks.push_back(std::move(task));
    }
    get_opt(j, "cancel", v.cancel);
    return v;
  });
}

Result<ExtendRequest> decode_extend_request(std::string_view body) {
  return decode_object<ExtendRequest>(body, "extend request", [](const Json& j) {
    ExtendRequest v;
    v.fence = j.at("fence").get<std::int64_t>();
    get_opt(j, "lease_s", v.lease_s);
    get_opt(j, "running", v.running);
    return v;
  });
}

Result<ExtendResponse> decode_extend_response(std::string_view body) {
  return decode_object<ExtendResponse>(body, "extend response", [](const Json& j) {
    ExtendResponse v;
    get_opt(j, "lease_s", v.lease_s);
    get_opt(j, "cancel", v.cancel);
    return v;
  });
}

namespace {

// A CompleteRequest from its JSON object (throws nlohmann's exceptions on a wrong type: the
// callers run it inside decode_object), checked; `what` names it in errors.
Result<CompleteRequest> complete_from(const Json& j, const std::string& what) {
  auto decoded = [&] {
    CompleteRequest v;
    std::string reason;
    v.fence = j.at("fence").get<std::int64_t>();
    v.outcome = j.at("outcome").get<std::string>();
    get_opt(j, "reason", reason);
    if (auto it = j.find("exit_code"); it != j.end() && !it->is_null()) v.exit_code = it->get<int>();
    get_opt(j, "error", v.error);
    get_opt(j, "output", v.output);
    get_opt(j, "output_truncated", v.output_truncated);
    get_opt(j, "output_bytes", v.output_bytes);
    get_opt(j, "duration_ms", v.duration_ms);
    return std::pair{std::move(v), std::move(reason)};
  }();
  auto& [v, reason] = decoded;
  if (v.outcome != "succeeded" && v.outcome != "failed" && v.outcome != "cancelled") {
    return fail(Errc::data, what + ": outcome '" + v.outcome.substr(0, 40) + "' is not succeeded, failed or cancelled");
  }
  if (!reason.empty()) {
    v.reason = failure_reason_from(reason);
    if (!v.reason) return fail(Errc::data, what + ": unknown failure reason '" + reason.substr(0, 40) + "'");
  }
  if (v.outcome == "failed" && !v.reason) {
    return fail(Errc::data, what + ": a failed outcome needs a reason");
  }
  if (v.output.size() > kMaxTaskOutputBytes) {
    return fail(Errc::data, what + ": output of " + std::to_string(v.output.size()) +
                                " bytes is over the cap of " + std::to_string(kMaxTaskOutputBytes));
  }
  return std::move(v);
}

}  // namespace

Result<CompleteRequest> decode_complete_request(std::string_view body) {
  auto decoded = decode_object<Result<CompleteRequest>>(body, "complete request",
                                                        [](const Json& j) { return complete_from(j, "complete request"); });
  if (!decoded) return fail(decoded.error());
  return std::move(*decoded);
}

Json to_json(const CompleteBatchRequest& v) {
  Json items = Json::array();
  for (const auto& c : v.completions) {
    Json j = to_json(c.request);
    j["id"] = c.id;
    items.push_back(std::move(j));
  }
  return {{"completions", std::move(items)}};
}

Json to_json(const CompleteBatchResponse& v) {
  Json items = Json::array();
  for (const auto& r : v.results) {
    if (r.ok()) {
      items.push_back({{"id", r.id}, {"status", r.status}, {"state", r.state}});
    } else {
      items.push_back({{"id", r.id},
                       {"status", r.status},
                       {"error", {{"code", r.code}, {"message", r.message}, {"hint", r.hint}}}});
    }
  }
  return {{"results", std::move(items)}};
}

Result<CompleteBatchRequest> decode_complete_batch_request(std::string_view body) {
  auto decoded = decode_object<Result<CompleteBatchRequest>>(body, "complete batch", [](const Json& j) -> Result<CompleteBatchRequest> {
    const Json& items = j.at("completions");
    if (!items.is_array()) return fail(Errc::data, "complete batch: completions must be an array");
    if (items.size() > kMaxCompleteBatch) {
      return fail(Errc::data, "complete batch: " + std::to_string(items.size()) + " completions, over the cap of " +
                                  std::to_string(kMaxCompleteBatch), "send smaller batches");
    }
    CompleteBatchRequest v;
    std::size_t index = 0;
    for (const auto& item : items) {
      const std::string what = "complete batch item " + std::to_string(index++);
      if (!item.is_object()) return fail(Errc::data, what + ": expected a JSON object");
      CompleteItem c;
      c.id = item.at("id").get<std::string>();
      auto request = complete_from(item, what);
      if (!request) return fail(request.error());
      c.request = std::move(*request);
      v.completions.push_back(std::move(c));
    }
    return v;
  });
  if (!decoded) return fail(decoded.error());
  return std::move(*decoded);
}

Result<CompleteBatchResponse> decode_complete_batch_response(std::string_view body) {
  return decode_object<CompleteBatchResponse>(body, "complete batch response", [](const Json& j) {
    CompleteBatchResponse v;
    for (const auto& item : j.at("results")) {
      CompleteItemResult r;
      r.id = item.at("id").get<std::string>();
      r.status = item.at("status").get<int>();
      get_opt(item, "state", r.state);
      if (auto e = item.find("error"); e != item.end() && e->is_object()) {
        get_opt(*e, "code", r.code);
        get_opt(*e, "message", r.message);
        get_opt(*e, "hint", r.hint);
      }
      v.results.push_back(std::move(r));
    }
    return v;
  });
}

Result<CompleteResponse> decode_complete_response(std::string_view body) {
  return decode_object<CompleteResponse>(body, "complete response", [](const Json& j) {
    return CompleteResponse{j.at("state").get<std::string>()};
  });
}

Result<EventBatch> decode_event_batch(std::string_view body) {
  auto batch = decode_object<EventBatch>(body, "event batch", [](const Json& j) {
    EventBatch v;
    for (const auto& e : j.at("events")) v.events.push_back(event_from(e));
    return v;
  });
  if (batch && batch->events.size() > kMaxEventsPerBatch) {
    return fail(Errc::data, "event batch: " + std::to_string(batch->events.size()) + " events, over the cap of " +
                                std::to_string(kMaxEventsPerBatch), "send smaller batches");
  }
  return batch;
}

Result<EventBatchResponse> decode_event_batch_response(std::string_view body) {
  return decode_object<EventBatchResponse>(body, "event batch response", [](const Json& j) {
    EventBatchResponse v;
    get_opt(j, "accepted", v.accepted);
    get_opt(j, "duplicates", v.duplicates);
    return v;
  });
}

}  // namespace cairn::protocol
