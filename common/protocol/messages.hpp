// The wire protocol of /v1/ (DESIGN.md, "Protocol"): all that agent and control share.
// Every body is JSON; encode() never fails, decode_*() returns Errc::data naming the field.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.hpp"
#include "common/result.hpp"
#include "common/ssl.hpp"

namespace cairn::protocol {

inline constexpr std::size_t kMaxBodyBytes = 1 << 20;  // default request cap of the server

// Who the node says it is (the winning identity source's answer).
struct NodeIdentity {
  std::string node_id;  // UUID, lower case
  std::string source;   // "cmdline", "fw_cfg", "aws", ..., "local"
  std::string platform;
  std::string instance_id;
  std::string region;
  std::string zone;
  std::string instance_type;
  std::string hostname;
};

// Proof that the enrolling machine holds the key of the node's current certificate: lets a
// node that is already enrolled enroll again with a plain fleet token (e.g. with a new key)
// where a second machine presenting the same id (a cloned disk) is refused. No nonce is
// needed: the signature covers the new CSR, so a replay can only obtain a certificate for a
// key the replayer does not hold.
struct EnrollProof {
  std::string cert_serial;    // serial (CertInfo::serial_hex) of the certificate whose key signs
  std::string signature_hex;  // sign_hex(current key, enroll_proof_message(node_id, csr_pem))
};
// "cairn-enroll-proof-v1\n<node id, lower case>\n<sha256 hex of the CSR PEM>"
std::string enroll_proof_message(std::string_view node_id, std::string_view csr_pem);
// The proof the agent attaches, signed with the key of its current certificate.
Result<EnrollProof> make_enroll_proof(const EVP_PKEY* current_key, std::string_view cert_serial,
                                      std::string_view node_id, std::string_view csr_pem);

// POST /v1/enroll (bootstrap token in "Authorization: Bearer <token>")
struct EnrollRequest {
  NodeIdentity identity;
  std::string csr_pem;  // subject CN must equal identity.node_id
  std::map<std::string, std::string> labels;
  // "proof": {"cert_serial", "signature"}; optional (the initializer keeps {identity, csr,
  // labels} aggregates warning-free).
  std::optional<EnrollProof> proof = std::nullopt;
};

// Answer of /v1/enroll and /v1/certificates/rotate.
struct CertificateResponse {
  std::string node_id;
  std::string certificate_pem;
  std::string ca_chain_pem;
  std::string not_after;  // RFC 3339
  std::int64_t heartbeat_interval_s = 30;
};

// POST /v1/certificates/rotate (node cert)
struct RotateRequest {
  std::string csr_pem;
};

struct ModuleRef {
  std::string name;
  std::string digest;  // sha256:<hex>
  bool mounted = false;
  // In the desired set: a change that would leave this module out (it fails to fetch or
  // verify) is refused whole. Optional on the wire ("required", default false).
  bool required = false;
};

struct Event {
  std::string id;        // idempotency id, unique per node
  std::string severity;  // "info", "warning", "critical"
  std::string kind;      // "cert.rotation_failing", ...
  std::string message;
  std::string time;      // RFC 3339
};

// POST /v1/heartbeat (node cert)
struct HeartbeatRequest {
  std::string boot_id;
  std::string agent_version;
  std::vector<ModuleRef> modules;
  std::string mount_state;  // "none", "mounted", "degraded"
  double load1 = 0, load5 = 0, load15 = 0;
  std::uint32_t cpu_count = 0;
  std::uint64_t mem_total_bytes = 0, mem_available_bytes = 0;
  std::uint64_t disk_total_bytes = 0, disk_free_bytes = 0;
  std::uint64_t uptime_s = 0;
  std::string cert_not_after;  // RFC 3339, so the operator sees expiring nodes
  std::map<std::string, std::string> labels;
  std::vector<Event> events;
  // What the node can do beyond its labels ("systemd", "kvm", ...): matched by task selectors.
  std::vector<std::string> capabilities;
  // Ids of the tasks the node is running: the reply lists those an operator cancelled.
  std::vector<std::string> running_tasks;
};

struct HeartbeatResponse {
  std::vector<ModuleRef> desired_modules;
  std::string server_time;  // RFC 3339
  std::int64_t next_interval_s = 30;
  bool work_waiting = false;               // tasks this node may lease are queued: lease now
  std::vector<std::string> cancel_tasks;   // of running_tasks: cancelled, stop them
  // The module trust policy signed by a policy key (common/module/policy.hpp), as control
  // stores it; null when control has none. Optional on the wire ("module_policy"). The agent
  // accepts it only when it verifies against a policy key pinned in its own configuration.
  Json module_policy = nullptr;
};

// Every non-2xx answer: {"error": {"code", "message", "hint"}}.
struct ErrorBody {
  std::string code;  // stable machine word: "token_expired", "csr_mismatch", ...
  std::string message;
  std::string hint;
};

Json to_json(const NodeIdentity& v);
Json to_json(const EnrollRequest& v);
Json to_json(const CertificateResponse& v);
Json to_json(const RotateRequest& v);
Json to_json(const HeartbeatRequest& v);
Json to_json(const HeartbeatResponse& v);
Json to_json(const ErrorBody& v);

Result<NodeIdentity> node_identity_from_json(const Json& j);
Result<EnrollRequest> decode_enroll_request(std::string_view body);
Result<CertificateResponse> decode_certificate_response(std::string_view body);
Result<RotateRequest> decode_rotate_request(std::string_view body);
Result<HeartbeatRequest> decode_heartbeat_request(std::string_view body);
Result<HeartbeatResponse> decode_heartbeat_response(std::string_view body);
Result<ErrorBody> decode_error_body(std::string_view body);

}  // namespace cairn::protocol
