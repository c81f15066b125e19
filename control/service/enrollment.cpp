#include "control/service/enrollment.hpp"

#include <algorithm>
#include <cctype>

#include "common/crypto.hpp"
#include "common/log.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "control/ca.hpp"

namespace cairn::control {
namespace {

constexpr std::string_view kTokenHint = "ask the operator for a fresh token ('cairn-control token create')";
constexpr std::size_t kMaxLabelKey = 63;
constexpr std::size_t kMaxLabelValue = 255;

std::string time_text(std::int64_t ms) { return format_rfc3339(from_unix_ms(ms)); }

std::unexpected<ApiError> store_failure(const Error& e) {
  log::error("store.error", {{"message", e.message}});
  return refuse(500, "store_error", e.message, e.hint);
}

std::unexpected<ApiError> node_revoked_error(const std::string& node_id) {
  return refuse(403, "node_revoked", "node " + node_id + " has been revoked",
                "revocation is final for this node id; ask the operator");
}

std::string upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

ApiResult<TokenRecord> Enrollment::usable_token(std::string_view bearer_token, std::int64_t now) {
  const std::string hint(kTokenHint);
  if (bearer_token.empty()) return refuse(401, "token_unknown", "no bootstrap token in the request", hint);
  const std::string hash = sha256_hex(bearer_token);
  auto found = store_.find_token_by_hash(hash);
  if (!found) return store_failure(found.error());
  if (!*found || !equal_constant_time((*found)->hash, hash)) {
    return refuse(401, "token_unknown", "the bootstrap token is not known to this control service", hint);
  }
  const TokenRecord& token = **found;
  if (token.revoked) return refuse(401, "token_revoked", "bootstrap token " + token.id + " was revoked", hint);
  if (now >= token.expires_at_ms) {
    return refuse(401, "token_expired",
                  "bootstrap token " + token.id + " expired at " + time_text(token.expires_at_ms), hint);
  }
  if (token.uses >= token.max_uses) {
    return refuse(401, "token_used",
                  "bootstrap token " + token.id + " has been used (" + std::to_string(token.uses) + " of " +
                      std::to_string(token.max_uses) + " uses)",
                  hint);
  }
  return token;
}

Status Enrollment::check_proof(const std::string& node_id, const protocol::EnrollRequest& request,
                               std::int64_t now) {
  const auto& proof = *request.proof;
  auto certs = store_.list_certificates(node_id);
  if (!certs) return fail(certs.error());
  const std::string serial = upper(proof.cert_serial);
  const auto it = std::find_if(certs->begin(), certs->end(),
                               [&](const CertRecord& c) { return c.serial_hex == serial; });
  if (it == certs->end()) return fail(Errc::refused, "certificate " + serial.substr(0, 64) + " is not one of this node's");
  if (it->status != CertStatus::active || it->retire_at_ms) {
    return fail(Errc::refused, "certificate " + serial + " is not the node's current one");
  }
  if (now >= it->not_after_ms) return fail(Errc::refused, "certificate " + serial + " has expired");
  if (it->public_key_pem.empty()) return fail(Errc::refused, "the key of certificate " + serial + " is not on record");
  auto key = parse_public_key_pem(it->public_key_pem);
  if (!key) return fail(key.error());
  return verify_signature_hex(key->get(), protocol::enroll_proof_message(node_id, request.csr_pem),
                              proof.signature_hex);
}

std::unexpected<ApiError> Enrollment::node_exists(const std::string& node_id, const TokenRecord& token,
                                                  const protocol::EnrollRequest& request,
                                                  const X509_REQ* csr, const std::string& why) {
  // One event per requesting key: a cloned disk retrying every few seconds is one event.
  std::string key_id = "unknown";
  if (auto pem = public_key_pem(X509_REQ_get0_pubkey(const_cast<X509_REQ*>(csr)))) {
    key_id = sha256_hex(*pem).substr(0, 16);
  }
  const auto& id = request.identity;
  const std::string message = "an enrollment of the existing node id " + node_id + " was refused (" + why +
                              "): token " + token.id + ", hostname '" + id.hostname.substr(0, 64) +
                              "', platform '" + id.platform.substr(0, 32) + "', instance '" +
                              id.instance_id.substr(0, 64) + "', key " + key_id +
                              "; a second machine with this id (a cloned disk?) or a node that lost its key";
  events_.record(node_id, "control.enroll.node_exists." + key_id, "warning", "enroll.node_exists", message);
  log::warn("enroll.node_exists", {{"node", node_id}, {"token", token.id}, {"key", key_id}, {"why", why}});
  return refuse(409, "node_exists", "node " + node_id + " is already enrolled; " + why,
                "if this machine is that node, re-enroll it with a token bound to its id "
                "('cairn-control token create --expect-id " +
                    node_id + "') or after 'cairn-control node allow-reenroll " + node_id +
                    "'; if it is another machine, give it its own id");
}

ApiResult<ExistingNode> Enrollment::reenroll_rule(const NodeRecord& existing, const TokenRecord& token,
                                                  const protocol::EnrollRequest& request,
                                                  const X509_REQ* csr, std::int64_t now, std::string& how) {
  if (token.expect_id && *token.expect_id == existing.id) {
    how = "bound_token";
    return ExistingNode::replace;
  }
  std::string why = "a fleet token enrolls new ids only";
  if (request.proof) {
    auto proof = check_proof(existing.id, request, now);
    if (proof) {
      how = "proof_of_key";
      return ExistingNode::replace;
    }
    if (proof.error().code != Errc::refused) return store_failure(proof.error());
    why = "the proof of the node's current key was refused: " + proof.error().message;
  }
  if (existing.reenroll_allowed_until_ms && *existing.reenroll_allowed_until_ms > now) {
    how = "operator";
    return ExistingNode::replace_if_allowed;
  }
  return node_exists(existing.id, token, request, csr, why);
}

Labels Enrollment::merged_labels(const TokenRecord& token, const protocol::EnrollRequest& request,
                                 const std::string& node_id) const {
  // Token labels win: the operator set them when making the token. A node may add only the
  // keys the operator allows (--node-label-keys), so it cannot place itself (e.g. role=db).
  Labels labels = token.labels;
  std::string dropped;
  for (const auto& [k, v] : request.labels) {
    if (labels.contains(k)) continue;
    if (config_.node_label_keys.contains(k) && k.size() <= kMaxLabelKey && v.size() <= kMaxLabelValue) {
      labels.emplace(k, v);
    } else {
      dropped += (dropped.empty() ? "" : ",") + k.substr(0, kMaxLabelKey);
    }
  }
  if (!dropped.empty()) {
    log::info("enroll.labels_dropped",
              {{"node", node_id}, {"keys", dropped}, {"hint", "allow keys with serve --node-label-keys"}});
  }
  return labels;
}

ApiResult<protocol::CertificateResponse> Enrollment::enroll(std::string_view bearer_token,
                                                            const protocol::EnrollRequest& request) {
  const std::int64_t now = to_unix_ms(clock_.now());
  auto token = usable_token(bearer_token, now);
  if (!token) return std::unexpected(token.error());

  auto node_uuid = parse_identity_uuid(request.identity.node_id);
  if (!node_uuid) {
    return refuse(400, "csr_mismatch", "identity.node_id: " + node_uuid.error().message,
                  "the node id must be the machine's UUID (not nil or max)");
  }
  const std::string node_id = node_uuid->str();
  if (token->expect_id && *token->expect_id != node_id) {
    return refuse(403, "identity_mismatch",
                  "bootstrap token " + token->id + " is reserved for node " + *token->expect_id + ", not " + node_id,
                  "use the token made for this node, or create one with --expect-id " + node_id);
  }
  auto csr = check_node_csr(request.csr_pem, node_id);
  if (!csr) return std::unexpected(csr.error());

  // From here to the cache update, one enrollment or rotation of this id at a time.
  auto lock = locks_.lock(node_id);
  if (auth_.is_revoked(node_id)) return node_revoked_error(node_id);
  auto existing = store_.find_node(node_id);
  if (!existing) return store_failure(existing.error());
  ExistingNode rule = ExistingNode::refuse;
  std::string how = "new";
  if (*existing) {
    if ((*existing)->revoked_at_ms) return node_revoked_error(node_id);
    auto r = reenroll_rule(**existing, *token, request, csr->get(), now, how);
    if (!r) return std::unexpected(r.error());
    rule = *r;
  }

  auto issued = issuer_.issue(csr->get(), node_id, "enroll");
  if (!issued) return std::unexpected(issued.error());

  EnrollmentCommit commit;
  commit.token_id = token->id;
  commit.now_ms = now;
  commit.node.id = node_id;
  commit.node.identity = request.identity;
  commit.node.identity.node_id = node_id;
  commit.node.labels = merged_labels(*token, request, node_id);
  commit.cert = issued->record;
  commit.existing = rule;

  auto outcome = store_.commit_enrollment(commit);
  if (!outcome) return store_failure(outcome.error());
  switch (*outcome) {
    case EnrollmentOutcome::committed: break;
    case EnrollmentOutcome::token_unavailable:
      return refuse(401, "token_used",
                    "bootstrap token " + token->id +
                        " stopped being usable during this enrollment (used up, expired or revoked)",
                    std::string(kTokenHint));
    case EnrollmentOutcome::node_revoked: return node_revoked_error(node_id);
    case EnrollmentOutcome::node_exists:
      return node_exists(node_id, *token, request, csr->get(), "the operator's allowance expired");
  }

  auth_.enrolled(node_id, commit.cert, now);
  total_.fetch_add(1);
  if (how != "new") {
    events_.record(node_id, "control.enroll.reenrolled." + commit.cert.serial_hex, "info", "node.reenrolled",
                   "node re-enrolled (" + how + ") with token " + token->id + "; certificate " +
                       commit.cert.serial_hex + " replaces the earlier ones");
  }
  log::info("enroll.ok", {{"node", node_id},
                          {"serial", commit.cert.serial_hex},
                          {"token", token->id},
                          {"how", how},
                          {"platform", request.identity.platform}});
  return issuer_.response_for(node_id, *issued);
}

}  // namespace cairn::control
