// The task and event messages of /v1/ (DESIGN.md, "Protocol"; issue 13): what a node leases,
// extends and completes, and the event batches it sends. Shared by agent and control.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "common/result.hpp"

namespace cairn::protocol {

// Task states (control's view). queued -> leased -> running -> succeeded | failed | dead |
// cancelled; an expired lease or a transient failure goes back to queued (with backoff).
//   failed: a permanent failure (exit_nonzero, invalid_args), not retried.
//   dead:   transient failures until max_attempts; the last error is kept.
enum class TaskState { queued, leased, running, succeeded, failed, dead, cancelled };
std::string_view task_state_name(TaskState state);
std::optional<TaskState> task_state_from(std::string_view name);
bool task_state_final(TaskState state);

// Why an attempt failed: a fixed set, so retry policy and dashboards can branch on it.
enum class FailureReason { timeout, exit_nonzero, killed, lease_lost, invalid_args, node_unavailable, internal };
std::string_view failure_reason_name(FailureReason reason);
std::optional<FailureReason> failure_reason_from(std::string_view name);
// Transient reasons are retried (with backoff, up to max_attempts); the others end the task
// as failed at once: running the same arguments again would fail the same way.
bool failure_transient(FailureReason reason);

inline constexpr std::size_t kMaxTaskOutputBytes = 64 * 1024;  // output kept per attempt
inline constexpr std::size_t kMaxLeaseBatch = 64;             // tasks per lease request

// One task as a node received it with its lease.
struct LeasedTask {
  std::string id;    // UUID
  std::string kind;  // "exec", "service.install", "service.remove", "inventory", "reboot"
  Json args = Json::object();  // kind-specific (an exec: {"argv", "env", "cwd"})
  std::int64_t fence = 0;      // fencing token of this lease; sent back with extend/complete
  std::int64_t attempt = 1;    // 1-based
  std::int64_t timeout_s = 0;  // run time allowed to the process (0: the kind's default)
  std::int64_t lease_s = 0;    // the lease lasts this long unless extended
};

// POST /v1/tasks/lease (node cert)
struct LeaseRequest {
  std::int64_t max_tasks = 1;  // 0..kMaxLeaseBatch: free slots of the node
  std::int64_t lease_s = 60;   // asked duration; control caps it
  // Tasks the node is running now: the answer lists those that were cancelled (stop them).
  std::vector<std::string> running;
};
struct LeaseResponse {
  std::vector<LeasedTask> tasks;
  std::vector<std::string> cancel;  // ids of `running` tasks to stop (cancelled by an operator)
};

// POST /v1/tasks/{id}/extend (node cert; the current leaseholder with the current fence).
// The first extend after the process started also moves the task from leased to running.
struct ExtendRequest {
  std::int64_t fence = 0;
  std::int64_t lease_s = 60;
  bool running = true;
};
struct ExtendResponse {
  std::int64_t lease_s = 0;
  bool cancel = false;  // an operator cancelled the task: stop it and complete as cancelled
};

// POST /v1/tasks/{id}/complete (node cert; current leaseholder and fence). Idempotent: the
// same completion sent again answers as the first did.
struct CompleteRequest {
  std::int64_t fence = 0;
  std::string outcome;                  // "succeeded", "failed" or "cancelled"
  std::optional<FailureReason> reason;  // set when failed
  std::optional<int> exit_code;
  std::string error;                    // one line: what went wrong
  std::string output;                   // at most kMaxTaskOutputBytes, the tail when capped
  bool output_truncated = false;
  std::int64_t output_bytes = 0;        // total produced
  std::int64_t duration_ms = 0;
};
struct CompleteResponse {
  std::string state;  // the task's state after this completion
};

// POST /v1/tasks/complete (node cert): several completions in one request and one commit
// (tasks that finished together). Each item is a CompleteRequest with its task id, and gets
// its own answer, in the same order: the state after it, or the refusal a single complete
// would get (404 task_not_found, 409 stale_fence / task_finished, 400 invalid_request); one
// stale fence refuses that task only. The whole body stays under the server's body limit.
inline constexpr std::size_t kMaxCompleteBatch = 64;
struct CompleteItem {
  std::string id;
  CompleteRequest request;
};
struct CompleteBatchRequest {
  std::vector<CompleteItem> completions;
};
struct CompleteItemResult {
  std::string id;
  int status = 200;   // as the single complete would answer
  std::string state;  // when 200
  std::string code;   // when refused: the error code, message and hint
  std::string message;
  std::string hint;
  [[nodiscard]] bool ok() const { return status == 200; }
};
struct CompleteBatchResponse {
  std::vector<CompleteItemResult> results;
};

// POST /v1/events (node cert): a batch; each id is stored once per node.
struct EventBatch {
  std::vector<Event> events;
};
inline constexpr std::size_t kMaxEventsPerBatch = 500;
struct EventBatchResponse {
  std::int64_t accepted = 0;    // stored now
  std::int64_t duplicates = 0;  // ids already stored (delivered before)
};

Json to_json(const LeasedTask& v);
Json to_json(const LeaseRequest& v);
Json to_json(const LeaseResponse& v);
Json to_json(const ExtendRequest& v);
Json to_json(const ExtendResponse& v);
Json to_json(const CompleteRequest& v);
Json to_json(const CompleteResponse& v);
Json to_json(const CompleteBatchRequest& v);
Json to_json(const CompleteBatchResponse& v);
Json to_json(const Event& v);
Json to_json(const EventBatch& v);
Json to_json(const EventBatchResponse& v);

Result<LeaseRequest> decode_lease_request(std::string_view body);
Result<LeaseResponse> decode_lease_response(std::string_view body);
Result<ExtendRequest> decode_extend_request(std::string_view body);
Result<ExtendResponse> decode_extend_response(std::string_view body);
Result<CompleteRequest> decode_complete_request(std::string_view body);
Result<CompleteResponse> decode_complete_response(std::string_view body);
Result<CompleteBatchRequest> decode_complete_batch_request(std::string_view body);
Result<CompleteBatchResponse> decode_complete_batch_response(std::string_view body);
Result<EventBatch> decode_event_batch(std::string_view body);
Result<EventBatchResponse> decode_event_batch_response(std::string_view body);

}  // namespace cairn::protocol
