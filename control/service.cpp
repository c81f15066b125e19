// ControlService on a Store and the cluster CA: enrollment, authorization of node
// certificates (from an in-memory cache, so revocation applies to the next request),
// rotation, group-committed heartbeats, derived liveness and the admin API.
#include "control/service.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/crypto.hpp"
#include "common/log.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "control/ca.hpp"
#include "control/store/sqlite.hpp"
#include "control/store/store.hpp"

namespace cairn::control {
namespace {

// Group commit: one transaction takes every heartbeat waiting, up to this many. While one
// batch commits the next one fills, so the batch size follows the load by itself.
constexpr std::size_t kMaxBatch = 1000;
// Beyond this many heartbeats waiting for the disk, new ones are refused (503) rather than
// queued without bound; the agent retries with backoff.
constexpr std::size_t kMaxPending = 50'000;

constexpr std::int64_t kDefaultTokenTtlS = 3600;
constexpr std::int64_t kMaxTokenTtlS = 365LL * 24 * 3600;
constexpr std::int64_t kMaxTokenUses = 1'000'000;

ApiError api_error(int status, std::string code, std::string message, std::string hint = {}) {
  return ApiError{status, {std::move(code), std::move(message), std::move(hint)}};
}
std::unexpected<ApiError> refuse(int status, std::string code, std::string message,
                                 std::string hint = {}) {
  return std::unexpected(api_error(status, std::move(code), std::move(message), std::move(hint)));
}
std::unexpected<ApiError> store_failure(const Error& e) {
  log::error("store.error", {{"message", e.message}});
  return refuse(500, "store_error", e.message, e.hint);
}

std::int64_t now_ms(const Clock& clock) { return to_unix_ms(clock.now()); }
std::string time_text(std::int64_t ms) { return format_rfc3339(from_unix_ms(ms)); }
Json opt_time(std::optional<std::int64_t> ms) {
  return ms ? Json(time_text(*ms)) : Json(nullptr);
}

enum class NodeState { enrolled, ready, unreachable, revoked };
std::string_view state_name(NodeState s) {
  switch (s) {
    case NodeState::enrolled: return "Enrolled";
    case NodeState::ready: return "Ready";
    case NodeState::unreachable: return "Unreachable";
    case NodeState::revoked: return "Revoked";
  }
  return "Unreachable";
}

// What authorize_node and liveness need, per node. Atomics so the hot paths (authorize,
// heartbeat commit, node_counts) run under the shared lock.
struct LiveNode {
  std::atomic<bool> revoked{false};
  std::atomic<std::int64_t> last_seen_ms{0};  // last heartbeat, or enrollment before the first
  std::atomic<bool> heard{false};             // a heartbeat arrived since the last enrollment
  std::atomic<bool> unreachable_logged{false};
  std::vector<std::string> serials;  // certificates in certs_; changed under the unique lock
};
struct LiveCert {
  std::string node_id;
  CertStatus status = CertStatus::active;
  std::int64_t not_after_ms = 0;
};

struct PendingHeartbeat {
  HeartbeatRecord record;
  ControlService::HeartbeatDone done;
};

Json token_json(const TokenRecord& t, std::int64_t now) {
  std::string state = "active";
  if (t.revoked) state = "revoked";
  else if (now >= t.expires_at_ms) state = "expired";
  else if (t.uses >= t.max_uses) state = "used";
  return {{"id", t.id},
          {"created_at", time_text(t.created_at_ms)},
          {"expires_at", time_text(t.expires_at_ms)},
          {"uses", t.uses},
          {"max_uses", t.max_uses},
          {"labels", t.labels},
          {"expect_id", t.expect_id ? Json(*t.expect_id) : Json(nullptr)},
          {"revoked", t.revoked},
          {"state", state}};
}

class ServiceImpl final : public ControlService {
 public:
  ServiceImpl(ServiceConfig config, const Clock& clock, CertificateAuthority ca,
              std::unique_ptr<Store> store)
      : config_(config), clock_(clock), ca_(std::move(ca)), store_(std::move(store)) {}

  ServiceImpl(const ServiceImpl&) = delete;
  ServiceImpl& operator=(const ServiceImpl&) = delete;

  ~ServiceImpl() override {
    {
      std::lock_guard lock(queue_mutex_);
      stopping_ = true;
    }
    queue_cv_.notify_all();
    if (writer_.joinable()) writer_.join();  // the writer drains what is pending first
  }

  Status start() {
    auto snap = store_->load_auth_snapshot(now_ms(clock_));
    if (!snap) return fail(snap.error());
    for (const auto& n : snap->nodes) {
      auto live = std::make_unique<LiveNode>();
      live->revoked = n.revoked;
      live->last_seen_ms = std::max(n.last_seen_ms, n.enrolled_at_ms);
      live->heard = n.last_seen_ms >= n.enrolled_at_ms && n.last_seen_ms > 0;
      nodes_.emplace(n.id, std::move(live));
    }
    for (const auto& c : snap->certs) {
      auto it = nodes_.find(c.node_id);
      if (it == nodes_.end()) continue;
      it->second->serials.push_back(c.serial_hex);
      certs_[c.serial_hex] = LiveCert{c.node_id, c.status, c.not_after_ms};
    }
    auto total = store_->enrollments_total();
    if (!total) return fail(total.error());
    enrollments_ = *total;
    writer_ = std::thread([this] { writer_loop(); });
    log::info("control.store_open", {{"nodes", nodes_.size()}, {"certificates", certs_.size()},
                                     {"schema_version", store_->schema_version()}});
    return {};
  }

  // --- enrollment ---------------------------------------------------------------------

  ApiResult<protocol::CertificateResponse> enroll(std::string_view bearer_token,
                                                  const protocol::EnrollRequest& request) override {
    const std::int64_t now = now_ms(clock_);
    const std::string token_hint = "ask the operator for a fresh token ('cairn-control token create')";
    if (bearer_token.empty()) {
      return refuse(401, "token_unknown", "no bootstrap token in the request", token_hint);
    }
    const std::string hash = sha256_hex(bearer_token);
    auto found = store_->find_token_by_hash(hash);
    if (!found) return store_failure(found.error());
    if (!*found || !equal_constant_time((*found)->hash, hash)) {
      return refuse(401, "token_unknown", "the bootstrap token is not known to this control service",
                    token_hint);
    }
    const TokenRecord& token = **found;
    if (token.revoked) {
      return refuse(401, "token_revoked", "bootstrap token " + token.id + " was revoked", token_hint);
    }
    if (now >= token.expires_at_ms) {
      return refuse(401, "token_expired",
                    "bootstrap token " + token.id + " expired at " + time_text(token.expires_at_ms),
                    token_hint);
    }
    if (token.uses >= token.max_uses) {
      return refuse(401, "token_used",
                    "bootstrap token " + token.id + " has been used (" + std::to_string(token.uses) +
                        " of " + std::to_string(token.max_uses) + " uses)",
                    token_hint);
    }

    auto node_uuid = parse_identity_uuid(request.identity.node_id);
    if (!node_uuid) {
      return refuse(400, "csr_mismatch", "identity.node_id: " + node_uuid.error().message,
                    "the node id must be the machine's UUID (not nil or max)");
    }
    const std::string node_id = node_uuid->str();
    if (token.expect_id && *token.expect_id != node_id) {
      return refuse(403, "identity_mismatch",
                    "bootstrap token " + token.id + " is reserved for node " + *token.expect_id +
                        ", not " + node_id,
                    "use the token made for this node, or create one with --expect-id " + node_id);
    }
    auto csr = check_node_csr(request.csr_pem, node_id);
    if (!csr) return std::unexpected(csr.error());
    if (is_revoked(node_id)) return node_revoked_error(node_id);

    auto issued = issue(csr->get(), node_id, "enroll");
    if (!issued) return std::unexpected(issued.error());

    EnrollmentCommit commit;
    commit.token_id = token.id;
    commit.now_ms = now;
    commit.node.id = node_id;
    commit.node.identity = request.identity;
    commit.node.identity.node_id = node_id;
    // Token labels win over the labels the node asks for: the operator set them when making
    // the token, and a node must not be able to place itself (e.g. role=db) on its own.
    commit.node.labels = token.labels;
    for (const auto& [k, v] : request.labels) commit.node.labels.emplace(k, v);
    commit.cert = issued->record;

    auto outcome = store_->commit_enrollment(commit);
    if (!outcome) return store_failure(outcome.error());
    if (*outcome == EnrollmentOutcome::token_unavailable) {
      return refuse(401, "token_used",
                    "bootstrap token " + token.id +
                        " stopped being usable during this enrollment (used up, expired or revoked)",
                    token_hint);
    }
    if (*outcome == EnrollmentOutcome::node_revoked) return node_revoked_error(node_id);

    bool reenrolled = false;
    {
      std::unique_lock lock(live_mutex_);
      auto& live = nodes_[node_id];
      if (!live) live = std::make_unique<LiveNode>();
      // The node's earlier certificates were superseded in the store: forget them, so they
      // authorize nothing from the next request on.
      reenrolled = !live->serials.empty();
      for (const auto& serial : live->serials) certs_.erase(serial);
      live->serials.assign(1, commit.cert.serial_hex);
      certs_[commit.cert.serial_hex] = LiveCert{node_id, CertStatus::active, commit.cert.not_after_ms};
      live->last_seen_ms = std::max(live->last_seen_ms.load(), now);
      live->heard = false;
      live->unreachable_logged = false;
    }
    enrollments_.fetch_add(1);
    log::info("enroll.ok", {{"node", node_id},
                            {"serial", commit.cert.serial_hex},
                            {"token", token.id},
                            {"reenroll", reenrolled ? "true" : "false"},
                            {"platform", request.identity.platform}});
    return response_for(node_id, *issued);
  }

  ApiResult<void> authorize_node(const Peer& peer) override {
    if (!peer.has_cert) {
      return refuse(401, "cert_required", "this endpoint needs the node's client certificate",
                    "enroll the node first ('cairn-agent enroll')");
    }
    const std::int64_t now = now_ms(clock_);
    std::shared_lock lock(live_mutex_);
    auto cert = certs_.find(peer.serial_hex);
    if (cert == certs_.end() || cert->second.node_id != peer.subject_cn) {
      return refuse(401, "cert_unknown",
                    "certificate " + peer.serial_hex + " (CN " + peer.subject_cn +
                        ") is not a current node certificate",
                    "it was replaced by a re-enrollment or never issued here; enroll the node again");
    }
    auto node = nodes_.find(cert->second.node_id);
    if (node == nodes_.end() || node->second->revoked || cert->second.status == CertStatus::revoked) {
      return node_revoked_error(peer.subject_cn);
    }
    if (now >= cert->second.not_after_ms) {
      return refuse(401, "cert_expired",
                    "certificate " + peer.serial_hex + " expired at " +
                        time_text(cert->second.not_after_ms),
                    "enroll the node again with a fresh token");
    }
    return {};
  }

  ApiResult<protocol::CertificateResponse> rotate(const Peer& peer,
                                                  const protocol::RotateRequest& request) override {
    if (auto ok = authorize_node(peer); !ok) return std::unexpected(ok.error());
    const std::string node_id = peer.subject_cn;
    auto csr = check_node_csr(request.csr_pem, node_id);
    if (!csr) return std::unexpected(csr.error());
    auto issued = issue(csr->get(), node_id, "rotate");
    if (!issued) return std::unexpected(issued.error());
    if (auto ok = store_->insert_certificate(issued->record); !ok) return store_failure(ok.error());
    {
      // The old certificate stays valid until it expires: requests already in flight with it
      // keep working while the agent switches over.
      std::unique_lock lock(live_mutex_);
      auto node = nodes_.find(node_id);
      if (node != nodes_.end()) node->second->serials.push_back(issued->record.serial_hex);
      certs_[issued->record.serial_hex] =
          LiveCert{node_id, CertStatus::active, issued->record.not_after_ms};
    }
    log::info("cert.rotated", {{"node", node_id},
                               {"old_serial", peer.serial_hex},
                               {"serial", issued->record.serial_hex}});
    return response_for(node_id, *issued);
  }

  // --- heartbeats ---------------------------------------------------------------------

  void heartbeat(const Peer& peer, protocol::HeartbeatRequest request, HeartbeatDone done) override {
    if (auto ok = authorize_node(peer); !ok) {
      done(std::unexpected(ok.error()));
      return;
    }
    std::optional<ApiError> refused;
    {
      std::lock_guard lock(queue_mutex_);
      if (stopping_) {
        refused = api_error(503, "shutting_down", "the control service is stopping",
                            "retry against the restarted service");
      } else if (pending_.size() >= kMaxPending) {
        refused = api_error(503, "busy", "too many heartbeats waiting to be stored",
                            "retry after a backoff");
      } else {
        pending_.push_back(
            {HeartbeatRecord{peer.subject_cn, now_ms(clock_), std::move(request)}, std::move(done)});
      }
    }
    if (refused) {
      done(std::unexpected(std::move(*refused)));
      return;
    }
    queue_cv_.notify_one();
  }

  // --- admin --------------------------------------------------------------------------

  ApiResult<Json> admin_create_token(const Json& body) override {
    if (!body.is_null() && !body.is_object()) {
      return refuse(400, "invalid_request", "the token request must be a JSON object");
    }
    auto field = [&](const char* key) -> const Json* {
      if (body.is_null()) return nullptr;
      auto it = body.find(key);
      return it == body.end() || it->is_null() ? nullptr : &*it;
    };
    std::int64_t ttl_s = kDefaultTokenTtlS;
    if (const Json* v = field("ttl_s")) {
      if (!v->is_number_integer() || v->get<std::int64_t>() <= 0 ||
          v->get<std::int64_t>() > kMaxTokenTtlS) {
        return refuse(400, "invalid_request",
                      "ttl_s: must be a whole number of seconds from 1 to " +
                          std::to_string(kMaxTokenTtlS));
      }
      ttl_s = v->get<std::int64_t>();
    }
    std::int64_t uses = 1;
    if (const Json* v = field("uses")) {
      if (!v->is_number_integer() || v->get<std::int64_t>() < 1 ||
          v->get<std::int64_t>() > kMaxTokenUses) {
        return refuse(400, "invalid_request",
                      "uses: must be a whole number from 1 to " + std::to_string(kMaxTokenUses));
      }
      uses = v->get<std::int64_t>();
    }
    Labels labels;
    if (const Json* v = field("labels")) {
      if (!v->is_object()) return refuse(400, "invalid_request", "labels: must be an object of strings");
      for (const auto& [k, val] : v->items()) {
        if (k.empty() || k.size() > 63 || !val.is_string() || val.get<std::string>().size() > 255) {
          return refuse(400, "invalid_request",
                        "labels: '" + k.substr(0, 63) +
                            "' must be a key of 1-63 characters with a string value of up to 255");
        }
        labels[k] = val.get<std::string>();
      }
    }
    std::optional<std::string> expect_id;
    if (const Json* v = field("expect_id")) {
      Result<Uuid> id = v->is_string() ? parse_identity_uuid(v->get<std::string>())
                                       : Result<Uuid>(fail(Errc::data, "not a string"));
      if (!id) return refuse(400, "invalid_request", "expect_id: " + id.error().message);
      expect_id = id->str();
    }

    const std::int64_t now = now_ms(clock_);
    TokenRecord t;
    t.id = random_uuid().str();
    const std::string secret = "cairn_" + random_hex(32);
    t.hash = sha256_hex(secret);
    t.created_at_ms = now;
    t.expires_at_ms = now + ttl_s * 1000;
    t.max_uses = uses;
    t.labels = labels;
    t.expect_id = expect_id;
    if (auto ok = store_->insert_token(t); !ok) return store_failure(ok.error());
    log::info("token.created", {{"token", t.id}, {"uses", uses}, {"ttl_s", ttl_s}});
    Json out = token_json(t, now);
    out["token"] = secret;  // the only time the secret is shown
    return out;
  }

  ApiResult<Json> admin_list_tokens() override {
    auto tokens = store_->list_tokens();
    if (!tokens) return store_failure(tokens.error());
    const std::int64_t now = now_ms(clock_);
    Json list = Json::array();
    for (const auto& t : *tokens) list.push_back(token_json(t, now));
    return Json{{"tokens", std::move(list)}};
  }

  ApiResult<Json> admin_revoke_token(std::string_view id) override {
    auto revoked = store_->revoke_token(id);
    if (!revoked) return store_failure(revoked.error());
    if (!*revoked) {
      return refuse(404, "token_not_found", "no token with id '" + std::string(id.substr(0, 64)) + "'",
                    "list tokens with 'cairn-control token list'");
    }
    log::info("token.revoked", {{"token", std::string(id)}});
    return Json{{"id", std::string(id)}, {"revoked", true}};
  }

  ApiResult<Json> admin_list_nodes() override {
    auto nodes = store_->list_nodes();
    if (!nodes) return store_failure(nodes.error());
    const std::int64_t now = now_ms(clock_);
    Json list = Json::array();
    for (const auto& n : *nodes) list.push_back(node_summary(n, now));
    return Json{{"nodes", std::move(list)}};
  }

  ApiResult<Json> admin_show_node(std::string_view id) override {
    auto node_id = parse_uuid(id);
    if (!node_id) return node_not_found(id);
    auto node = store_->find_node(node_id->str());
    if (!node) return store_failure(node.error());
    if (!*node) return node_not_found(id);
    const auto& n = **node;
    Json out = node_summary(n, now_ms(clock_));
    out["identity"] = protocol::to_json(n.identity);
    out["first_enrolled_at"] = time_text(n.first_enrolled_at_ms);
    out["enroll_count"] = n.enroll_count;
    if (n.status) {
      Json hb = protocol::to_json(n.status->last);
      hb.erase("events");
      hb["received_at"] = time_text(n.status->last_seen_ms);
      hb["heartbeats"] = n.status->heartbeats;
      out["heartbeat"] = std::move(hb);
    } else {
      out["heartbeat"] = nullptr;
    }
    out["critical_events_total"] = n.status ? n.status->critical_events_total : 0;
    auto certs = store_->list_certificates(n.id);
    if (!certs) return store_failure(certs.error());
    Json cert_list = Json::array();
    for (const auto& c : *certs) {
      cert_list.push_back({{"serial", c.serial_hex},
                           {"status", cert_status_name(c.status)},
                           {"reason", c.reason},
                           {"issued_at", time_text(c.issued_at_ms)},
                           {"not_before", time_text(c.not_before_ms)},
                           {"not_after", time_text(c.not_after_ms)},
                           {"fingerprint_sha256", c.fingerprint_sha256}});
    }
    out["certificates"] = std::move(cert_list);
    auto events = store_->recent_events(n.id);
    if (!events) return store_failure(events.error());
    Json event_list = Json::array();
    for (const auto& e : *events) {
      event_list.push_back({{"id", e.event_id},
                            {"severity", e.severity},
                            {"kind", e.kind},
                            {"message", e.message},
                            {"time", e.time},
                            {"received_at", time_text(e.received_at_ms)}});
    }
    out["events"] = std::move(event_list);
    return out;
  }

  ApiResult<Json> admin_revoke_node(std::string_view id) override {
    auto node_id = parse_uuid(id);
    if (!node_id) return node_not_found(id);
    const std::string nid = node_id->str();
    auto revoked = store_->revoke_node(nid, now_ms(clock_));
    if (!revoked) return store_failure(revoked.error());
    if (!*revoked) return node_not_found(id);
    {
      std::unique_lock lock(live_mutex_);
      auto& live = nodes_[nid];
      if (!live) live = std::make_unique<LiveNode>();
      live->revoked = true;
      for (const auto& serial : live->serials) {
        if (auto c = certs_.find(serial); c != certs_.end()) c->second.status = CertStatus::revoked;
      }
    }
    log::info("node.revoked", {{"node", nid}});
    return Json{{"id", nid}, {"revoked", true}};
  }

  NodeCounts node_counts() override {
    NodeCounts counts;
    const std::int64_t now = now_ms(clock_);
    std::shared_lock lock(live_mutex_);
    for (const auto& [id, live] : nodes_) {
      switch (state_of(*live, now)) {
        case NodeState::enrolled: ++counts.enrolled; break;
        case NodeState::ready: ++counts.ready; break;
        case NodeState::revoked: ++counts.revoked; break;
        case NodeState::unreachable:
          ++counts.unreachable;
          if (!live->unreachable_logged.exchange(true)) {
            log::info("node.unreachable",
                      {{"node", id}, {"last_seen", time_text(live->last_seen_ms.load())}});
          }
          break;
      }
    }
    return counts;
  }

  std::int64_t enrollments_total() override { return enrollments_.load(); }

 private:
  struct Issued {
    std::string pem;
    CertRecord record;
  };

  ApiResult<Issued> issue(const X509_REQ* csr, const std::string& node_id, const char* reason) {
    auto cert = ca_.issue_node_cert(csr, node_id, config_.cert_lifetime, clock_);
    if (!cert) return refuse(500, "internal", "issue certificate: " + cert.error().message);
    auto pem = cert_pem(cert->get());
    if (!pem) return refuse(500, "internal", pem.error().message);
    const auto info = cert_info(cert->get());
    Issued out;
    out.pem = std::move(*pem);
    out.record.serial_hex = info.serial_hex;
    out.record.node_id = node_id;
    out.record.fingerprint_sha256 = info.fingerprint_sha256;
    out.record.not_before_ms = to_unix_ms(info.not_before);
    out.record.not_after_ms = to_unix_ms(info.not_after);
    out.record.issued_at_ms = now_ms(clock_);
    out.record.reason = reason;
    return out;
  }

  protocol::CertificateResponse response_for(const std::string& node_id, const Issued& issued) const {
    protocol::CertificateResponse r;
    r.node_id = node_id;
    r.certificate_pem = issued.pem;
    r.ca_chain_pem = ca_.cert_pem();
    r.not_after = time_text(issued.record.not_after_ms);
    r.heartbeat_interval_s = config_.heartbeat_interval.count();
    return r;
  }

  bool is_revoked(const std::string& node_id) {
    std::shared_lock lock(live_mutex_);
    auto it = nodes_.find(node_id);
    return it != nodes_.end() && it->second->revoked;
  }

  static std::unexpected<ApiError> node_revoked_error(const std::string& node_id) {
    return refuse(403, "node_revoked", "node " + node_id + " has been revoked",
                  "revocation is final for this node id; ask the operator");
  }
  static std::unexpected<ApiError> node_not_found(std::string_view id) {
    return refuse(404, "node_not_found", "no node with id '" + std::string(id.substr(0, 64)) + "'",
                  "list nodes with 'cairn-control node list'");
  }

  [[nodiscard]] std::int64_t grace_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(config_.heartbeat_interval).count() *
           config_.unreachable_after_intervals;
  }

  // Liveness is derived, never stored: Enrolled from enrollment until the first heartbeat,
  // Ready while the last heartbeat is within the grace period, Unreachable after it (or when
  // the first never came), Revoked for good.
  NodeState state_of(const LiveNode& live, std::int64_t now) const {
    if (live.revoked) return NodeState::revoked;
    if (now - live.last_seen_ms.load() > grace_ms()) return NodeState::unreachable;
    return live.heard ? NodeState::ready : NodeState::enrolled;
  }

  Json node_summary(const NodeRecord& n, std::int64_t now) {
    NodeState state = NodeState::unreachable;
    {
      std::shared_lock lock(live_mutex_);
      if (auto it = nodes_.find(n.id); it != nodes_.end()) state = state_of(*it->second, now);
      else if (n.revoked_at_ms) state = NodeState::revoked;
    }
    return {{"id", n.id},
            {"state", state_name(state)},
            {"last_heartbeat", n.status ? Json(time_text(n.status->last_seen_ms)) : Json(nullptr)},
            {"cert_not_after", opt_time(n.cert_not_after_ms)},
            {"platform", n.identity.platform},
            {"hostname", n.identity.hostname},
            {"instance_id", n.identity.instance_id},
            {"agent_version", n.status ? n.status->last.agent_version : ""},
            {"labels", n.labels},
            {"enrolled_at", time_text(n.enrolled_at_ms)},
            {"revoked_at", opt_time(n.revoked_at_ms)}};
  }

  void writer_loop() {
    std::vector<PendingHeartbeat> batch;
    batch.reserve(kMaxBatch);
    for (;;) {
      {
        std::unique_lock lock(queue_mutex_);
        queue_cv_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
        if (pending_.empty()) return;  // stopping, and everything is written
        const std::size_t n = std::min(pending_.size(), kMaxBatch);
        std::move(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n),
                  std::back_inserter(batch));
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
      }
      commit_batch(batch);
      batch.clear();
    }
  }

  void commit_batch(std::vector<PendingHeartbeat>& batch) {
    std::vector<HeartbeatRecord> records;
    records.reserve(batch.size());
    for (auto& p : batch) records.push_back(std::move(p.record));
    auto results = store_->write_heartbeats(records);

    if (results) {
      std::shared_lock lock(live_mutex_);
      for (std::size_t i = 0; i < records.size(); ++i) {
        if (!(*results)[i]) continue;
        auto it = nodes_.find(records[i].node_id);
        if (it == nodes_.end()) continue;
        it->second->heard = true;
        auto& seen = it->second->last_seen_ms;
        std::int64_t prev = seen.load();
        while (prev < records[i].received_at_ms &&
               !seen.compare_exchange_weak(prev, records[i].received_at_ms)) {
        }
        if (it->second->unreachable_logged.exchange(false)) {
          log::info("node.ready", {{"node", records[i].node_id}});
        }
      }
    } else {
      log::error("heartbeat.commit_failed",
                 {{"count", records.size()}, {"message", results.error().message}});
    }

    protocol::HeartbeatResponse reply;
    reply.server_time = format_rfc3339(clock_.now());
    reply.next_interval_s = config_.heartbeat_interval.count();
    for (std::size_t i = 0; i < batch.size(); ++i) {
      ApiResult<protocol::HeartbeatResponse> answer = reply;
      if (!results) {
        answer = std::unexpected(api_error(503, "store_error", results.error().message,
                                           "retry after a backoff"));
      } else if (!(*results)[i]) {
        answer = std::unexpected(api_error(500, "store_error", (*results)[i].error().message));
      }
      try {
        batch[i].done(std::move(answer));
      } catch (const std::exception& e) {
        log::error("heartbeat.done_threw", {{"message", e.what()}});
      }
    }
  }

  ServiceConfig config_;
  const Clock& clock_;
  CertificateAuthority ca_;
  std::unique_ptr<Store> store_;
  std::atomic<std::int64_t> enrollments_{0};

  // serial -> certificate, node id -> node: read per request, written on enroll, rotate and
  // revoke, so revocation applies to the very next request.
  std::shared_mutex live_mutex_;
  std::unordered_map<std::string, LiveCert> certs_;
  std::unordered_map<std::string, std::unique_ptr<LiveNode>> nodes_;

  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::deque<PendingHeartbeat> pending_;
  bool stopping_ = false;
  std::thread writer_;
};

}  // namespace

Result<std::unique_ptr<ControlService>> open_service(const StatePaths& state, ServiceConfig config,
                                                     const Clock& clock) {
  if (config.cert_lifetime.count() <= 0 || config.heartbeat_interval.count() <= 0 ||
      config.unreachable_after_intervals <= 0) {
    return fail(Errc::config,
                "the certificate lifetime, heartbeat interval and unreachable-after count must be "
                "positive");
  }
  auto ca = CertificateAuthority::load(state);
  if (!ca) return fail(ca.error());
  auto store = open_sqlite_store(state.database());
  if (!store) return fail(store.error());
  auto service = std::make_unique<ServiceImpl>(config, clock, std::move(*ca), std::move(*store));
  if (auto ok = service->start(); !ok) return fail(ok.error().with_context("open control service"));
  return std::unique_ptr<ControlService>(std::move(service));
}

}  // namespace cairn::control
