// ControlService: the logic of cairn-control, behind the HTTPS server. The server turns a
// request into one call here (after TLS, limits and routing) and the result into a reply.
// The contract between the HTTP layer (control/server/) and the logic (control/service/,
// store/, ca.cpp) — keep it the only thing they share. Includes point one way: ca, state
// and store never include it; the parts in control/service/ include it and the layers below;
// control/service/assembly.cpp alone includes every part and implements open_service.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "common/clock.hpp"
#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "common/protocol/tasks.hpp"
#include "common/result.hpp"
#include "control/api_error.hpp"
#include "control/peer.hpp"
#include "control/state_paths.hpp"

namespace cairn::control {

struct ServiceConfig {
  std::chrono::seconds cert_lifetime{std::chrono::hours(24 * 90)};
  std::chrono::seconds heartbeat_interval{30};
  int unreachable_after_intervals = 3;  // Ready -> Unreachable after this many missed intervals
  // After a rotation the previous certificate still authorizes requests this long (those in
  // flight while the agent switches over), then it is refused.
  std::chrono::seconds rotation_grace{std::chrono::minutes(10)};
  // Label keys a node may set on itself at enrollment; the token's labels always win and
  // every other key the node asks for is dropped, so a node cannot place itself.
  std::set<std::string, std::less<>> node_label_keys;
  // How often the liveness sweep runs (real time; it reads the injected Clock).
  std::chrono::milliseconds liveness_sweep_period{1000};
  // Beyond this many heartbeats waiting for the disk, new ones are refused (503 busy, with
  // Retry-After) rather than queued without bound; the agent retries with backoff.
  std::size_t max_pending_heartbeats = 50'000;
  // --database (issue 13): empty = SQLite in the state dir; a postgresql:// URL = a database
  // several replicas share (each then refreshes its authorisation cache from it).
  std::string database;
  std::chrono::milliseconds auth_refresh_period{250};

  // Tasks (issue 13). Admission keeps headroom: a node is offered a task only if, with the
  // task's reservation, it stays under these fractions of its CPUs, memory and disk.
  double headroom_cpu = 0.8;
  double headroom_mem = 0.8;
  double headroom_disk = 0.9;
  std::chrono::seconds max_lease{std::chrono::minutes(10)};  // a node's asked lease_s is capped
  std::chrono::seconds min_lease{5};
  // Retry backoff of transient failures: base * 2^(attempt-1), capped, jittered.
  std::chrono::milliseconds retry_base{1000};
  std::chrono::milliseconds retry_cap{std::chrono::minutes(5)};
  // Finished tasks (with their output) are kept this long, and at most this many per node.
  std::chrono::seconds task_history{std::chrono::hours(24 * 7)};
  std::int64_t task_history_per_node = 10'000;
  // How often the task sweep returns expired leases to the queue (real time; it reads the
  // injected Clock).
  std::chrono::milliseconds task_sweep_period{1000};
  // Uniform numbers in [0, 1) for the jitter of retry backoff; empty: a seeded PRNG (tests
  // set a fixed value to know the delay).
  std::function<double()> random;
};

// A node whose certificate authorize_node accepted for this request. Only the service makes
// one, so a call that takes it cannot be reached without the check (made once per request).
class AuthorizedNode {
 public:
  [[nodiscard]] const std::string& node_id() const { return node_id_; }
  [[nodiscard]] const std::string& serial_hex() const { return serial_hex_; }
  // The first use of a rotation's new certificate: the one it replaces starts retiring.
  [[nodiscard]] bool first_use_after_rotation() const { return first_use_after_rotation_; }

 private:
  friend class AuthCache;
  AuthorizedNode(std::string node_id, std::string serial_hex, bool first_use_after_rotation)
      : node_id_(std::move(node_id)),
        serial_hex_(std::move(serial_hex)),
        first_use_after_rotation_(first_use_after_rotation) {}
  std::string node_id_;
  std::string serial_hex_;
  bool first_use_after_rotation_ = false;
};

// An admin whose certificate authorize_admin accepted for this request.
class AuthorizedAdmin {
 public:
  [[nodiscard]] const std::string& name() const { return name_; }
  [[nodiscard]] const std::string& serial_hex() const { return serial_hex_; }

 private:
  friend class AuthCache;
  AuthorizedAdmin(std::string name, std::string serial_hex)
      : name_(std::move(name)), serial_hex_(std::move(serial_hex)) {}
  std::string name_;
  std::string serial_hex_;
};

struct NodeCounts {
  std::int64_t enrolled = 0;  // enrolled, no heartbeat yet
  std::int64_t ready = 0;
  std::int64_t unreachable = 0;
  std::int64_t revoked = 0;
};

struct EventFilter {
  std::optional<std::string> node_id;
  std::int64_t since_ms = 0;  // Unix ms, received at or after
  std::int64_t limit = 1000;
  // A follower's cursor: only events stored after the one with this seq, oldest first.
  std::optional<std::int64_t> after_seq;
};

struct TaskFilter {
  std::optional<std::string> state;    // a task state name
  std::optional<std::string> node_id;  // addressed to or leased by
  std::int64_t limit = 1000;
};

// Tasks in /metrics (h-taskbatch). Counters count what THIS replica did since it started;
// by_state is the store's (all replicas), read at most every TaskQueue::kCountsMaxAge.
inline constexpr std::array<double, 10> kTaskLeaseBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                                             0.05,  0.1,    0.25,  0.5,  1.0};
struct TaskMetrics {
  std::map<std::string, std::int64_t> by_state;  // empty when the store could not be read
  std::int64_t lease_requests = 0;               // lease calls that reached the store
  std::int64_t leased = 0;                       // tasks handed out by those calls
  std::map<std::string, std::int64_t> completions;  // by outcome: "succeeded", "cancelled", or the failure reason
  std::int64_t expirations = 0;                     // leases that ran out (sweep)
  std::int64_t dead = 0;                            // tasks that ended dead
  std::array<std::int64_t, kTaskLeaseBuckets.size() + 1> lease_latency_buckets{};  // last: +Inf (not cumulative)
  double lease_latency_sum_s = 0;
  std::int64_t lease_latency_count = 0;
};

class ControlService {
 public:
  virtual ~ControlService() = default;

  // Per request, before any node endpoint: the cert must belong to a known, unrevoked node
  // and be one of its current certificates (not superseded, not retired by a rotation past
  // its grace, not expired). Cheap (called at >5k/s): an in-memory cache kept in step with
  // the store, so a revocation applies to the very next request. The first request with a
  // rotation's new certificate starts the grace of the certificate it replaces.
  virtual ApiResult<AuthorizedNode> authorize_node(const Peer& peer) = 0;
  // Per admin request: a known admin certificate whose name was not revoked.
  virtual ApiResult<AuthorizedAdmin> authorize_admin(const Peer& peer) = 0;

  // POST /v1/enroll. bearer_token is the raw token from "Authorization: Bearer ...".
  virtual ApiResult<protocol::CertificateResponse> enroll(std::string_view bearer_token,
                                                          const protocol::EnrollRequest& request) = 0;

  // POST /v1/certificates/rotate: only with the node's newest certificate in use (one whose
  // replacement the node has not used yet may rotate again; that supersedes the unused one).
  virtual ApiResult<protocol::CertificateResponse> rotate(const AuthorizedNode& node,
                                                          const protocol::RotateRequest& request) = 0;

  // POST /v1/heartbeat. Answers through `done` once the heartbeat is durably stored (group
  // commit); `done` may run on another thread, exactly once.
  using HeartbeatDone = std::function<void(ApiResult<protocol::HeartbeatResponse>)>;
  virtual void heartbeat(const AuthorizedNode& node, protocol::HeartbeatRequest request,
                         HeartbeatDone done) = 0;

  // /v1/admin/... (authorize_admin already passed). Bodies and answers JSON:
  //   POST /v1/admin/tokens          {"ttl_s", "uses", "labels": {}, "expect_id"} -> {"id", "token", "expires_at", ...}
  //   GET  /v1/admin/tokens          -> {"tokens": [{"id", "created_at", "expires_at", "uses", "max_uses", "labels", "expect_id", "revoked"}]}
  //   POST /v1/admin/tokens/{id}/revoke -> {"id", "revoked": true}
  //   GET  /v1/admin/nodes           -> {"nodes": [{"id", "state", "last_heartbeat", "cert_not_after", "platform", ...}]}
  //   GET  /v1/admin/nodes/{id}      -> one node with its last heartbeat, certificates, events
  //   POST /v1/admin/nodes/{id}/revoke -> {"id", "revoked": true}
  //   POST /v1/admin/nodes/{id}/allow-reenroll -> {"id", "reenroll_allowed_until"}
  //   GET  /v1/admin/events?node=ID&since_ms=N&limit=N&after=SEQ -> {"events": [{"node", "id", "severity", "kind", "message", "time", "received_at", "seq"}], "cursor": SEQ}
  //   POST /v1/admin/admins          {"name", "csr"} -> {"name", "certificate", "serial", "not_after"}
  //   GET  /v1/admin/admins          -> {"admins": [{"name", "serial", "issued_at", "not_after", "revoked_at"}]}
  //   POST /v1/admin/admins/{name}/revoke -> {"name", "revoked": N}
  virtual ApiResult<Json> admin_create_token(const Json& body) = 0;
  virtual ApiResult<Json> admin_list_tokens() = 0;
  virtual ApiResult<Json> admin_revoke_token(std::string_view id) = 0;
  virtual ApiResult<Json> admin_list_nodes() = 0;
  virtual ApiResult<Json> admin_show_node(std::string_view id) = 0;
  virtual ApiResult<Json> admin_revoke_node(std::string_view id) = 0;
  virtual ApiResult<Json> admin_allow_reenroll(std::string_view id) = 0;
  virtual ApiResult<Json> admin_list_events(const EventFilter& filter) = 0;
  virtual ApiResult<Json> admin_create_admin(const Json& body) = 0;
  virtual ApiResult<Json> admin_list_admins() = 0;
  virtual ApiResult<Json> admin_revoke_admin(const AuthorizedAdmin& by, std::string_view name) = 0;

  // Tasks (issue 13), node endpoints (authorize_node already passed):
  //   POST /v1/tasks/lease            LeaseRequest -> LeaseResponse
  //   POST /v1/tasks/{id}/extend      ExtendRequest -> ExtendResponse (409 stale_fence)
  //   POST /v1/tasks/{id}/complete    CompleteRequest -> CompleteResponse (409 stale_fence)
  //   POST /v1/events                 EventBatch -> EventBatchResponse
  virtual ApiResult<protocol::LeaseResponse> lease_tasks(const AuthorizedNode& node,
                                                         const protocol::LeaseRequest& request) = 0;
  virtual ApiResult<protocol::ExtendResponse> extend_task(const AuthorizedNode& node, std::string_view task_id,
                                                          const protocol::ExtendRequest& request) = 0;
  virtual ApiResult<protocol::CompleteResponse> complete_task(const AuthorizedNode& node, std::string_view task_id,
                                                              const protocol::CompleteRequest& request) = 0;
  virtual ApiResult<protocol::EventBatchResponse> post_events(const AuthorizedNode& node,
                                                              const protocol::EventBatch& batch) = 0;
  // Tasks, admin:
  //   POST /v1/admin/tasks            {"kind", "args", "node" | "selector", "capabilities", "min":
  //                                    {"cpu_millis", "mem_bytes", "disk_bytes"}, "timeout_s",
  //                                    "max_attempts", "serial_key", "idempotency_key"} -> task + "created"
  //   GET  /v1/admin/tasks?state=S&node=ID&limit=N -> {"tasks": [...]}
  //   GET  /v1/admin/tasks/{id}       -> task with "output" and "attempts"
  //   POST /v1/admin/tasks/{id}/cancel -> {"id", "state", "outcome"}
  virtual ApiResult<Json> admin_submit_task(const Json& body) = 0;
  virtual ApiResult<Json> admin_list_tasks(const TaskFilter& filter) = 0;
  virtual ApiResult<Json> admin_show_task(std::string_view id) = 0;
  virtual ApiResult<Json> admin_cancel_task(std::string_view id) = 0;
  // One pass of the task sweep now (its thread runs the same every task sweep period).
  virtual void sweep_tasks() = 0;
  // Task batches (h-taskbatch): one store transaction per request.
  //   POST /v1/tasks/complete         CompleteBatchRequest -> CompleteBatchResponse (an answer per item)
  //   POST /v1/admin/tasks/batch      {"tasks": [submission, ...]} -> {"tasks": [task + "created"], "created": N}
  virtual ApiResult<protocol::CompleteBatchResponse> complete_tasks(const AuthorizedNode& node,
                                                                    const protocol::CompleteBatchRequest& request) {
    (void)request;
    return refuse(404, "not_found", "node " + node.node_id() + ": this control service completes tasks one at a time",
                  "POST /v1/tasks/{id}/complete");
  }
  // For /metrics; none from a service without a task queue.
  virtual std::optional<TaskMetrics> task_metrics() { return std::nullopt; }
  virtual ApiResult<Json> admin_submit_tasks(const Json& body) {
    (void)body;
    return refuse(404, "not_found", "this control service takes tasks one at a time", "POST /v1/admin/tasks");
  }
  // persist (issue 15): POST /v1/persist/escrow-key -> {"node_id", "key": "<hex>"}, the node's
  // escrowed /persist key, created on the first call (control/service/escrow.hpp). Not pure:
  // a service without it answers 404.
  virtual ApiResult<Json> persist_escrow_key(const AuthorizedNode& node) {
    return refuse(404, "not_found", "node " + node.node_id() + ": this control service keeps no escrow keys");
  }

  // modules (h-modctl): the module catalog and its assignments (control/service/module_catalog.hpp
  // lists the bodies). Not pure: a service without a catalog answers 404.
  virtual ApiResult<Json> admin_list_modules() { return refuse(404, "not_found", "this control service has no module catalog"); }
  virtual ApiResult<Json> admin_add_module(const Json& /*body*/) {
    return refuse(404, "not_found", "this control service has no module catalog");
  }
  virtual ApiResult<Json> admin_assign_module(const Json& /*body*/) {
    return refuse(404, "not_found", "this control service has no module catalog");
  }
  virtual ApiResult<Json> admin_unassign_module(std::string_view /*id*/) {
    return refuse(404, "not_found", "this control service has no module catalog");
  }
  // modules (h-modpolicy): the signed module trust policy (control/service/module_policy.hpp).
  virtual ApiResult<Json> admin_show_module_policy() { return refuse(404, "not_found", "this control service has no module policy"); }
  virtual ApiResult<Json> admin_set_module_policy(const Json& /*body*/) {
    return refuse(404, "not_found", "this control service has no module policy");
  }

  // Read only: the states the liveness sweep last set.
  virtual NodeCounts node_counts() = 0;
  virtual std::int64_t enrollments_total() = 0;
  // One pass of the liveness sweep now (its thread runs the same every sweep period).
  virtual void sweep_liveness() = 0;
};

// Opens the state dir (CA, database), runs schema migrations, registers the state dir's
// admin.crt as a known admin credential, starts the heartbeat writer and liveness sweep.
Result<std::unique_ptr<ControlService>> open_service(const StatePaths& state, ServiceConfig config,
                                                     const Clock& clock);

}  // namespace cairn::control
