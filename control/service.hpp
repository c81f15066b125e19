// ControlService: the logic of cairn-control, behind the HTTPS server. The server turns a
// request into one call here (after TLS, limits and routing) and the result into a reply.
// The contract between the HTTP layer (control/server/) and the logic (service.cpp,
// store/, ca.cpp) — keep it the only thing they share.
#pragma once

#include <chrono>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/clock.hpp"
#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "common/result.hpp"

namespace cairn::control {

// The state directory `cairn-control init --state DIR` creates and `serve` reads.
struct StatePaths {
  std::filesystem::path dir;
  [[nodiscard]] std::filesystem::path ca_cert() const { return dir / "ca.crt"; }
  [[nodiscard]] std::filesystem::path ca_key() const { return dir / "ca.key"; }          // 0600
  [[nodiscard]] std::filesystem::path server_cert() const { return dir / "server.crt"; } // + CA chain
  [[nodiscard]] std::filesystem::path server_key() const { return dir / "server.key"; }  // 0600
  [[nodiscard]] std::filesystem::path admin_cert() const { return dir / "admin.crt"; }
  [[nodiscard]] std::filesystem::path admin_key() const { return dir / "admin.key"; }    // 0600
  [[nodiscard]] std::filesystem::path database() const { return dir / "control.db"; }    // SQLite (WAL)
};

// Admin certificates carry this CN prefix ("admin:alice"); node certificates carry the node
// UUID as CN, so the CA can never issue one that passes for the other.
inline constexpr std::string_view kAdminCnPrefix = "admin:";

struct ServiceConfig {
  std::chrono::seconds cert_lifetime{std::chrono::hours(24 * 90)};
  std::chrono::seconds heartbeat_interval{30};
  int unreachable_after_intervals = 3;  // Ready -> Unreachable after this many missed intervals
};

// Who is on the other end of the TLS connection: the server fills it in from the client
// certificate it has already verified against the cluster CA.
struct Peer {
  bool has_cert = false;
  std::string subject_cn;  // node UUID, or "admin:<name>"
  std::string serial_hex;  // as CertInfo::serial_hex
  [[nodiscard]] bool is_admin() const { return has_cert && subject_cn.starts_with(kAdminCnPrefix); }
};

// An error for the wire: HTTP status + {"error": {code, message, hint}}.
struct ApiError {
  int http_status = 500;
  protocol::ErrorBody body;
};
template <class T>
using ApiResult = std::expected<T, ApiError>;

struct NodeCounts {
  std::int64_t enrolled = 0;  // enrolled, no heartbeat yet
  std::int64_t ready = 0;
  std::int64_t unreachable = 0;
  std::int64_t revoked = 0;
};

class ControlService {
 public:
  virtual ~ControlService() = default;

  // POST /v1/enroll. bearer_token is the raw token from "Authorization: Bearer ...".
  virtual ApiResult<protocol::CertificateResponse> enroll(std::string_view bearer_token,
                                                          const protocol::EnrollRequest& request) = 0;

  // Per request, before any node endpoint: the cert must belong to a known, unrevoked node
  // and be one of its issued, unrevoked certificates. Must be cheap (called at >5k/s).
  virtual ApiResult<void> authorize_node(const Peer& peer) = 0;

  // POST /v1/certificates/rotate
  virtual ApiResult<protocol::CertificateResponse> rotate(const Peer& peer,
                                                          const protocol::RotateRequest& request) = 0;

  // POST /v1/heartbeat. Answers through `done` once the heartbeat is durably stored (group
  // commit); `done` may run on another thread, exactly once.
  using HeartbeatDone = std::function<void(ApiResult<protocol::HeartbeatResponse>)>;
  virtual void heartbeat(const Peer& peer, protocol::HeartbeatRequest request, HeartbeatDone done) = 0;

  // /v1/admin/... (peer.is_admin() already checked by the server). Bodies and answers JSON:
  //   POST /v1/admin/tokens          {"ttl_s", "uses", "labels": {}, "expect_id"} -> {"id", "token", "expires_at", ...}
  //   GET  /v1/admin/tokens          -> {"tokens": [{"id", "created_at", "expires_at", "uses", "max_uses", "labels", "expect_id", "revoked"}]}
  //   POST /v1/admin/tokens/{id}/revoke -> {"id", "revoked": true}
  //   GET  /v1/admin/nodes           -> {"nodes": [{"id", "state", "last_heartbeat", "cert_not_after", "platform", ...}]}
  //   GET  /v1/admin/nodes/{id}      -> one node with its last heartbeat and certificates
  //   POST /v1/admin/nodes/{id}/revoke -> {"id", "revoked": true}
  virtual ApiResult<Json> admin_create_token(const Json& body) = 0;
  virtual ApiResult<Json> admin_list_tokens() = 0;
  virtual ApiResult<Json> admin_revoke_token(std::string_view id) = 0;
  virtual ApiResult<Json> admin_list_nodes() = 0;
  virtual ApiResult<Json> admin_show_node(std::string_view id) = 0;
  virtual ApiResult<Json> admin_revoke_node(std::string_view id) = 0;

  virtual NodeCounts node_counts() = 0;
  virtual std::int64_t enrollments_total() = 0;
};

// Opens the state dir (CA, database), runs schema migrations, starts the heartbeat writer.
Result<std::unique_ptr<ControlService>> open_service(const StatePaths& state, ServiceConfig config,
                                                     const Clock& clock);

}  // namespace cairn::control
