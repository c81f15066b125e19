// The stored forms shared by the SQLite and PostgreSQL backends (see records.hpp).
#include "control/store/records.hpp"

#include <utility>

#include "common/json.hpp"
#include "common/protocol/tasks.hpp"

namespace cairn::control::stored_form {

std::string labels_text(const Labels& labels) { return dump_json(Json(labels)); }

Labels labels_from(const std::string& text) {
  auto j = parse_json(text, "stored labels");
  Labels out;
  if (!j || !j->is_object()) return out;
  for (const auto& [k, v] : j->items()) {
    if (v.is_string()) out[k] = v.get<std::string>();
  }
  return out;
}

std::vector<std::string> strings_from(const std::string& text) {
  std::vector<std::string> out;
  auto j = parse_json(text, "stored list");
  if (!j || !j->is_array()) return out;
  for (const auto& v : *j) {
    if (v.is_string()) out.push_back(v.get<std::string>());
  }
  return out;
}

std::string strings_text(const std::vector<std::string>& values) { return dump_json(Json(values)); }

std::string modules_text(const std::vector<protocol::ModuleRef>& modules) {
  Json out = Json::array();
  for (const auto& m : modules) out.push_back({{"name", m.name}, {"digest", m.digest}, {"mounted", m.mounted}});
  return dump_json(out);
}

std::vector<protocol::ModuleRef> modules_from(const std::string& text) {
  std::vector<protocol::ModuleRef> out;
  auto j = parse_json(text, "stored modules");
  if (!j || !j->is_array()) return out;
  for (const auto& m : *j) {
    if (!m.is_object()) continue;
    protocol::ModuleRef r;
    r.name = m.value("name", "");
    r.digest = m.value("digest", "");
    r.mounted = m.value("mounted", false);
    out.push_back(std::move(r));
  }
  return out;
}

CertStatus cert_status_from(const std::string& text) {
  if (text == "superseded") return CertStatus::superseded;
  if (text == "revoked") return CertStatus::revoked;
  return CertStatus::active;
}

std::optional<std::int64_t> StoredRow::opt_int64(int col) const {
  if (is_null(col)) return std::nullopt;
  return int64(col);
}

std::optional<std::string> StoredRow::opt_text(int col) const {
  if (is_null(col)) return std::nullopt;
  return text(col);
}

NodeRecord node_from(const StoredRow& q) {
  NodeRecord n;
  n.id = q.text(0);
  if (auto j = parse_json(q.text(1), "stored identity")) {
    if (auto id = protocol::node_identity_from_json(*j)) n.identity = std::move(*id);
  }
  n.labels = labels_from(q.text(2));
  n.first_enrolled_at_ms = q.int64(3);
  n.enrolled_at_ms = q.int64(4);
  n.enroll_count = q.int64(5);
  n.revoked_at_ms = q.opt_int64(6);
  n.cert_not_after_ms = q.opt_int64(7);
  n.reenroll_allowed_until_ms = q.opt_int64(26);
  if (!q.is_null(8)) {
    NodeStatusRecord s;
    s.last_seen_ms = q.int64(8);
    auto& hb = s.last;
    hb.boot_id = q.text(9);
    hb.agent_version = q.text(10);
    hb.mount_state = q.text(11);
    hb.load1 = q.real(12);
    hb.load5 = q.real(13);
    hb.load15 = q.real(14);
    hb.cpu_count = static_cast<std::uint32_t>(q.int64(15));
    hb.mem_total_bytes = static_cast<std::uint64_t>(q.int64(16));
    hb.mem_available_bytes = static_cast<std::uint64_t>(q.int64(17));
    hb.disk_total_bytes = static_cast<std::uint64_t>(q.int64(18));
    hb.disk_free_bytes = static_cast<std::uint64_t>(q.int64(19));
    hb.uptime_s = static_cast<std::uint64_t>(q.int64(20));
    hb.cert_not_after = q.text(21);
    hb.modules = modules_from(q.text(22));
    hb.labels = labels_from(q.text(23));
    s.heartbeats = q.int64(24);
    s.critical_events_total = q.int64(25);
    hb.capabilities = strings_from(q.text(27));
    n.status = std::move(s);
  }
  return n;
}

TokenRecord token_from(const StoredRow& q) {
  TokenRecord t;
  t.id = q.text(0);
  t.hash = q.text(1);
  t.created_at_ms = q.int64(2);
  t.expires_at_ms = q.int64(3);
  t.uses = q.int64(4);
  t.max_uses = q.int64(5);
  t.labels = labels_from(q.text(6));
  t.expect_id = q.opt_text(7);
  t.revoked = q.boolean(8);
  return t;
}

CertRecord cert_from(const StoredRow& q) {
  CertRecord c;
  c.serial_hex = q.text(0);
  c.node_id = q.text(1);
  c.fingerprint_sha256 = q.text(2);
  c.not_before_ms = q.int64(3);
  c.not_after_ms = q.int64(4);
  c.issued_at_ms = q.int64(5);
  c.reason = q.text(6);
  c.status = cert_status_from(q.text(7));
  c.retire_at_ms = q.opt_int64(8);
  c.public_key_pem = q.text(9);
  c.replaced_by = q.opt_text(10);
  return c;
}

AdminCertRecord admin_from(const StoredRow& q) {
  return {q.text(0), q.text(1), q.text(2), q.int64(3), q.int64(4), q.opt_int64(5)};
}

NodeEventRecord event_from(const StoredRow& q) {
  NodeEventRecord e;
  e.node_id = q.text(0);
  e.event_id = q.text(1);
  e.severity = q.text(2);
  e.kind = q.text(3);
  e.message = q.text(4);
  e.time = q.text(5);
  e.received_at_ms = q.int64(6);
  e.seq = q.int64(7);
  return e;
}

TaskAttemptRecord attempt_from(const StoredRow& q) {
  TaskAttemptRecord a;
  a.task_id = q.text(0);
  a.attempt = q.int64(1);
  a.fence = q.int64(2);
  a.node_id = q.text(3);
  a.leased_at_ms = q.int64(4);
  a.started_at_ms = q.opt_int64(5);
  a.finished_at_ms = q.opt_int64(6);
  a.outcome = q.text(7);
  if (!q.is_null(8)) a.reason = protocol::failure_reason_from(q.text(8));
  if (!q.is_null(9)) a.exit_code = static_cast<int>(q.int64(9));
  a.error = q.text(10);
  return a;
}

}  // namespace cairn::control::stored_form
