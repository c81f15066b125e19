#include "control/service/admin_views.hpp"

#include <openssl/err.h>

#include "common/crypto.hpp"
#include "common/log.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"

namespace cairn::control {
namespace {

constexpr std::int64_t kDefaultTokenTtlS = 3600;
constexpr std::int64_t kMaxTokenTtlS = 365LL * 24 * 3600;
constexpr std::int64_t kMaxTokenUses = 1'000'000;
constexpr std::int64_t kMaxEventsListed = 10'000;

std::int64_t now_ms(const Clock& clock) { return to_unix_ms(clock.now()); }
std::string time_text(std::int64_t ms) { return format_rfc3339(from_unix_ms(ms)); }
Json opt_time(std::optional<std::int64_t> ms) { return ms ? Json(time_text(*ms)) : Json(nullptr); }

std::unexpected<ApiError> store_failure(const Error& e) {
  log::error("store.error", {{"message", e.message}});
  return refuse(500, "store_error", e.message, e.hint);
}
std::unexpected<ApiError> node_not_found(std::string_view id) {
  return refuse(404, "node_not_found", "no node with id '" + std::string(id.substr(0, 64)) + "'",
                "list nodes with 'cairn-control node list'");
}

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

Json event_json(const NodeEventRecord& e) {
  return {{"node", e.node_id},    {"id", e.event_id}, {"severity", e.severity},
          {"kind", e.kind},       {"message", e.message}, {"time", e.time},
          {"received_at", time_text(e.received_at_ms)}, {"seq", e.seq}};
}

std::string cert_state(const CertRecord& c, std::int64_t now) {
  if (c.status != CertStatus::active) return std::string(cert_status_name(c.status));
  if (c.retire_at_ms) return now >= *c.retire_at_ms ? "retired" : "rotated";
  if (now >= c.not_after_ms) return "expired";
  return "active";
}

}  // namespace

ApiResult<Json> AdminViews::create_token(const Json& body) {
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
    if (!v->is_number_integer() || v->get<std::int64_t>() <= 0 || v->get<std::int64_t>() > kMaxTokenTtlS) {
      return refuse(400, "invalid_request",
                    "ttl_s: must be a whole number of seconds from 1 to " + std::to_string(kMaxTokenTtlS));
    }
    ttl_s = v->get<std::int64_t>();
  }
  std::int64_t uses = 1;
  if (const Json* v = field("uses")) {
    if (!v->is_number_integer() || v->get<std::int64_t>() < 1 || v->get<std::int64_t>() > kMaxTokenUses) {
      return refuse(400, "invalid_request", "uses: must be a whole number from 1 to " + std::to_string(kMaxTokenUses));
    }
    uses = v->get<std::int64_t>();
  }
  Labels labels;
  if (const Json* v = field("labels")) {
    if (!v->is_object()) return refuse(400, "invalid_request", "labels: must be an object of strings");
    for (const auto& [k, val] : v->items()) {
      if (k.empty() || k.size() > 63 || !val.is_string() || val.get<std::string>().size() > 255) {
        return refuse(400, "invalid_request",
                      "labels: '" + k.substr(0, 63) + "' must be a key of 1-63 characters with a string value of up to 255");
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
  if (auto ok = store_.insert_token(t); !ok) return store_failure(ok.error());
  log::info("token.created", {{"token", t.id}, {"uses", uses}, {"ttl_s", ttl_s}});
  Json out = token_json(t, now);
  out["token"] = secret;  // the only time the secret is shown
  return out;
}

ApiResult<Json> AdminViews::list_tokens() {
  auto tokens = store_.list_tokens();
  if (!tokens) return store_failure(tokens.error());
  const std::int64_t now = now_ms(clock_);
  Json list = Json::array();
  for (const auto& t : *tokens) list.push_back(token_json(t, now));
  return Json{{"tokens", std::move(list)}};
}

ApiResult<Json> AdminViews::revoke_token(std::string_view id) {
  auto revoked = store_.revoke_token(id);
  if (!revoked) return store_failure(revoked.error());
  if (!*revoked) {
    return refuse(404, "token_not_found", "no token with id '" + std::string(id.substr(0, 64)) + "'",
                  "list tokens with 'cairn-control token list'");
  }
  log::info("token.revoked", {{"token", std::string(id)}});
  return Json{{"id", std::string(id)}, {"revoked", true}};
}

Json AdminViews::node_summary(const NodeRecord& n, std::int64_t now) {
  NodeState state = n.revoked_at_ms ? NodeState::revoked : NodeState::unreachable;
  if (auto live = auth_.state(n.id)) state = *live;
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
          {"revoked_at", opt_time(n.revoked_at_ms)},
          {"reenroll_allowed_until",
           n.reenroll_allowed_until_ms && *n.reenroll_allowed_until_ms > now ? opt_time(n.reenroll_allowed_until_ms)
                                                                             : Json(nullptr)}};
}

ApiResult<Json> AdminViews::list_nodes() {
  auto nodes = store_.list_nodes();
  if (!nodes) return store_failure(nodes.error());
  const std::int64_t now = now_ms(clock_);
  Json list = Json::array();
  for (const auto& n : *nodes) list.push_back(node_summary(n, now));
  return Json{{"nodes", std::move(list)}};
}

ApiResult<Json> AdminViews::show_node(std::string_view id) {
  auto node_id = parse_uuid(id);
  if (!node_id) return node_not_found(id);
  auto node = store_.find_node(node_id->str());
  if (!node) return store_failure(node.error());
  if (!*node) return node_not_found(id);
  const auto& n = **node;
  const std::int64_t now = now_ms(clock_);
  Json out = node_summary(n, now);
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
  auto certs = store_.list_certificates(n.id);
  if (!certs) return store_failure(certs.error());
  Json cert_list = Json::array();
  for (const auto& c : *certs) {
    cert_list.push_back({{"serial", c.serial_hex},
                         {"status", cert_state(c, now)},
                         {"reason", c.reason},
                         {"issued_at", time_text(c.issued_at_ms)},
                         {"not_before", time_text(c.not_before_ms)},
                         {"not_after", time_text(c.not_after_ms)},
                         {"retire_at", opt_time(c.retire_at_ms)},
                         {"replaced_by", c.replaced_by ? Json(*c.replaced_by) : Json(nullptr)},
                         {"fingerprint_sha256", c.fingerprint_sha256}});
  }
  out["certificates"] = std::move(cert_list);
  auto events = store_.recent_events(n.id);
  if (!events) return store_failure(events.error());
  Json event_list = Json::array();
  for (const auto& e : *events) event_list.push_back(event_json(e));
  out["events"] = std::move(event_list);
  return out;
}

ApiResult<Json> AdminViews::revoke_node(std::string_view id) {
  auto node_id = parse_uuid(id);
  if (!node_id) return node_not_found(id);
  const std::string nid = node_id->str();
  auto lock = locks_.lock(nid);  // not between an enrollment's store commit and its cache update
  auto revoked = store_.revoke_node(nid, now_ms(clock_));
  if (!revoked) return store_failure(revoked.error());
  if (!*revoked) return node_not_found(id);
  auth_.revoked(nid);
  log::info("node.revoked", {{"node", nid}});
  return Json{{"id", nid}, {"revoked", true}};
}

ApiResult<Json> AdminViews::allow_reenroll(std::string_view id) {
  auto node_id = parse_uuid(id);
  if (!node_id) return node_not_found(id);
  const std::string nid = node_id->str();
  if (auth_.is_revoked(nid)) {
    return refuse(409, "node_revoked", "node " + nid + " has been revoked; revocation is final",
                  "give the machine a new id");
  }
  const std::int64_t until = now_ms(clock_) + std::chrono::duration_cast<std::chrono::milliseconds>(kReenrollWindow).count();
  auto allowed = store_.allow_reenroll(nid, until);
  if (!allowed) return store_failure(allowed.error());
  if (!*allowed) return node_not_found(id);
  log::info("node.reenroll_allowed", {{"node", nid}, {"until", time_text(until)}});
  return Json{{"id", nid}, {"reenroll_allowed_until", time_text(until)}};
}

ApiResult<Json> AdminViews::list_events(const EventFilter& filter) {
  EventQuery q;
  if (filter.node_id) {
    auto id = parse_uuid(*filter.node_id);
    if (!id) return refuse(400, "invalid_request", "node: not a UUID ('" + filter.node_id->substr(0, 64) + "')");
    q.node_id = id->str();
  }
  q.since_ms = filter.since_ms;
  q.limit = std::clamp<std::int64_t>(filter.limit, 1, kMaxEventsListed);
  q.after_seq = filter.after_seq;
  auto events = store_.list_events(q);
  if (!events) return store_failure(events.error());
  Json list = Json::array();
  // The cursor to follow from: the highest seq returned (or the one given, when none is new).
  std::int64_t cursor = filter.after_seq.value_or(0);
  for (const auto& e : *events) {
    list.push_back(event_json(e));
    cursor = std::max(cursor, e.seq);
  }
  return Json{{"events", std::move(list)}, {"cursor", cursor}};
}

ApiResult<Json> AdminViews::create_admin(const Json& body) {
  const std::string hint = "send {\"name\", \"csr\"} ('cairn-control admin create NAME' does)";
  if (!body.is_object() || !body.contains("name") || !body["name"].is_string() || !body.contains("csr") ||
      !body["csr"].is_string()) {
    return refuse(400, "invalid_request", "the admin request needs a string name and a string csr", hint);
  }
  const std::string name = body["name"].get<std::string>();
  if (!valid_admin_name(name)) {
    return refuse(400, "invalid_request", "name: '" + name.substr(0, 64) + "' is not a valid admin name",
                  "use up to " + std::to_string(kMaxAdminNameBytes) + " letters, digits, '-', '.', '_' or '@'");
  }
  auto csr = parse_csr_pem(body["csr"].get<std::string>());
  if (!csr) {
    ERR_clear_error();
    return refuse(400, "csr_invalid", "csr: not a PEM certificate request", hint);
  }
  EVP_PKEY* key = X509_REQ_get0_pubkey(csr->get());
  if (key == nullptr || X509_REQ_verify(csr->get(), key) != 1) {
    ERR_clear_error();
    return refuse(400, "csr_signature", "csr: its signature does not verify", "sign the CSR with the key it carries");
  }
  const std::string type = key_type_name(key);
  if (type != "ED25519" && type != "P-256") {
    return refuse(400, "csr_key_type", "csr: the key is " + type + "; only Ed25519 and P-256 are accepted");
  }
  auto cert = ca_.issue_admin_cert(key, name, kAdminCertLifetime, clock_);
  if (!cert) return refuse(500, "internal", "issue admin certificate: " + cert.error().message);
  auto pem = cert_pem(cert->get());
  if (!pem) return refuse(500, "internal", pem.error().message);
  const auto info = cert_info(cert->get());
  AdminCertRecord record{info.serial_hex, name, info.fingerprint_sha256, now_ms(clock_),
                         to_unix_ms(info.not_after), std::nullopt};
  if (auto ok = store_.insert_admin_cert(record); !ok) return store_failure(ok.error());
  auth_.admin_added(record);
  log::info("admin.created", {{"admin", name}, {"serial", info.serial_hex}});
  return Json{{"name", name},
              {"serial", info.serial_hex},
              {"certificate", *pem},
              {"ca", ca_.cert_pem()},
              {"not_after", format_rfc3339(info.not_after)}};
}

ApiResult<Json> AdminViews::list_admins() {
  auto admins = store_.list_admin_certs();
  if (!admins) return store_failure(admins.error());
  Json list = Json::array();
  for (const auto& a : *admins) {
    list.push_back({{"name", a.name},
                    {"serial", a.serial_hex},
                    {"issued_at", time_text(a.issued_at_ms)},
                    {"not_after", time_text(a.not_after_ms)},
                    {"revoked_at", opt_time(a.revoked_at_ms)}});
  }
  return Json{{"admins", std::move(list)}};
}

ApiResult<Json> AdminViews::revoke_admin(const AuthorizedAdmin& by, std::string_view name) {
  const std::string who(name);
  if (who == by.name()) {
    return refuse(409, "admin_self_revoke", "admin '" + who + "' cannot revoke itself",
                  "revoke it with another admin credential, so one always remains");
  }
  auto count = store_.revoke_admin(who, now_ms(clock_));
  if (!count) return store_failure(count.error());
  if (*count == 0) {
    return refuse(404, "admin_not_found", "no active admin named '" + who.substr(0, 64) + "'",
                  "list admins with 'cairn-control admin list'");
  }
  auth_.admin_revoked(who);
  log::info("admin.revoked", {{"admin", who}, {"by", by.name()}, {"certificates", *count}});
  return Json{{"name", who}, {"revoked", *count}};
}

}  // namespace cairn::control
