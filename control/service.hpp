// ControlService: the logic of cairn-control, behind the HTTPS server. The server turns a
// request into one call here (after TLS, limits and routing) and the result into a reply.
// The contract between the HTTP layer (control/server/) and the logic (control/service/,
// store/, ca.cpp) — keep it the only thing they share. Includes point one way: ca, state
// and store never include it; the parts in control/service/ include it and the layers below;
// control/service/assembly.cpp alone includes every part and implements open_service.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "common/clock.hpp"
#include "common/json.hpp"
#include "common/protocol/messages.hpp"
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
  //   GET  /v1/admin/events?node=ID&since_ms=N&limit=N -> {"events": [{"node", "id", "severity", "kind", "message", "time", "received_at"}]}
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

  // persist (issue 15): POST /v1/persist/escrow-key -> {"node_id", "key": "<hex>"}, the node's
  // escrowed /persist key, created on the first call (control/service/escrow.hpp). Not pure:
  // a service without it answers 404.
  virtual ApiResult<Json> persist_escrow_key(const AuthorizedNode& node) {
    return refuse(404, "not_found", "node " + node.node_id() + ": this control service keeps no escrow keys");
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
