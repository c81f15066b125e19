// SQLite: tokens, enrollment, certificates, nodes, revocation, admin credentials, heartbeats,
// the auth snapshot and escrowed keys.
#include "control/store/sqlite_internal.hpp"

namespace cairn::control::sqlite_internal {

Status SqliteStore::insert_token(const TokenRecord& t) {
  std::lock_guard lock(mutex_);
  auto q = query(
      "INSERT INTO tokens (id, hash, created_at_ms, expires_at_ms, uses, max_uses, labels, "
      "expect_id, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
  if (!q) return fail(q.error());
  q->bind(1, std::string_view(t.id)).bind(2, std::string_view(t.hash)).bind(3, t.created_at_ms);
  q->bind(4, t.expires_at_ms).bind(5, t.uses).bind(6, t.max_uses);
  q->bind(7, std::string_view(labels_text(t.labels))).bind(8, t.expect_id);
  q->bind(9, std::int64_t{t.revoked ? 1 : 0});
  return q->run();
}

Result<std::optional<TokenRecord>> SqliteStore::find_token_by_hash(std::string_view hash) {
  std::lock_guard lock(mutex_);
  auto q = query(std::string("SELECT ") + kTokenColumns + " FROM tokens WHERE hash = ?1");
  if (!q) return fail(q.error());
  q->bind(1, hash);
  auto row = q->step();
  if (!row) return fail(row.error());
  if (!*row) return std::optional<TokenRecord>{};
  return std::optional<TokenRecord>(token_from(*q));
}

Result<std::vector<TokenRecord>> SqliteStore::list_tokens() {
  std::lock_guard lock(mutex_);
  auto q = query(std::string("SELECT ") + kTokenColumns + " FROM tokens ORDER BY created_at_ms, id");
  if (!q) return fail(q.error());
  std::vector<TokenRecord> out;
  for (;;) {
    auto row = q->step();
    if (!row) return fail(row.error());
    if (!*row) break;
    out.push_back(token_from(*q));
  }
  return out;
}

Result<bool> SqliteStore::revoke_token(std::string_view id) {
  std::lock_guard lock(mutex_);
  auto q = query("UPDATE tokens SET revoked = 1 WHERE id = ?1");
  if (!q) return fail(q.error());
  q->bind(1, id);
  if (auto ok = q->run(); !ok) return fail(ok.error());
  return sqlite3_changes(db_.get()) > 0;
}

Result<EnrollmentOutcome> SqliteStore::commit_enrollment(const EnrollmentCommit& c) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  {
    // The conditional UPDATE is the real check: two enrollments racing for the last use
    // of a token cannot both get it.
    auto q = query(
        "UPDATE tokens SET uses = uses + 1 WHERE id = ?1 AND revoked = 0 AND uses < max_uses "
        "AND expires_at_ms > ?2");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(c.token_id)).bind(2, c.now_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    if (sqlite3_changes(db_.get()) == 0) return EnrollmentOutcome::token_unavailable;
  }
  {
    // Read inside the write transaction: the rules see what this commit replaces.
    auto q = query("SELECT revoked_at_ms, reenroll_allowed_until_ms FROM nodes WHERE id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(c.node.id));
    auto row = q->step();
    if (!row) return fail(row.error());
    if (*row) {
      if (!q->is_null(0)) return EnrollmentOutcome::node_revoked;
      const auto allowed_until = q->opt_int64(1);
      switch (c.existing) {
        case ExistingNode::replace: break;
        case ExistingNode::refuse: return EnrollmentOutcome::node_exists;
        case ExistingNode::replace_if_allowed:
          if (!allowed_until || *allowed_until <= c.now_ms) return EnrollmentOutcome::node_exists;
          break;
      }
    }
  }
  {
    auto q = query(
        "INSERT INTO nodes (id, identity, labels, first_enrolled_at_ms, enrolled_at_ms, "
        "enroll_count, token_id) VALUES (?1, ?2, ?3, ?4, ?4, 1, ?5) "
        "ON CONFLICT (id) DO UPDATE SET identity = excluded.identity, labels = excluded.labels, "
        "enrolled_at_ms = excluded.enrolled_at_ms, enroll_count = enroll_count + 1, "
        "token_id = excluded.token_id, reenroll_allowed_until_ms = NULL");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(c.node.id))
        .bind(2, std::string_view(dump_json(protocol::to_json(c.node.identity))))
        .bind(3, std::string_view(labels_text(c.node.labels)))
        .bind(4, c.now_ms)
        .bind(5, std::string_view(c.token_id));
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  {
    auto q = query(
        "UPDATE certificates SET status = 'superseded' WHERE node_id = ?1 AND status = 'active'");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(c.node.id));
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  if (auto ok = insert_certificate_locked(c.cert); !ok) return fail(ok.error());
  {
    auto q = query("UPDATE counters SET value = value + 1 WHERE name = 'enrollments'");
    if (!q) return fail(q.error());
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  if (auto ok = bump_auth_locked(); !ok) return fail(ok.error());
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return EnrollmentOutcome::committed;
}

Result<std::int64_t> SqliteStore::enrollments_total() {
  std::lock_guard lock(mutex_);
  auto q = query("SELECT value FROM counters WHERE name = 'enrollments'");
  if (!q) return fail(q.error());
  auto row = q->step();
  if (!row) return fail(row.error());
  return *row ? q->int64(0) : 0;
}

Result<RotationOutcome> SqliteStore::commit_rotation(std::string_view old_serial, const CertRecord& fresh) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  std::optional<std::string> unused;  // a replacement the node never used
  {
    auto q = query(
        "SELECT c.replaced_by FROM certificates c JOIN nodes n ON n.id = c.node_id WHERE "
        "c.serial = ?1 AND c.node_id = ?2 AND c.status = 'active' AND c.retire_at_ms IS NULL "
        "AND n.revoked_at_ms IS NULL");
    if (!q) return fail(q.error());
    q->bind(1, old_serial).bind(2, std::string_view(fresh.node_id));
    auto row = q->step();
    if (!row) return fail(row.error());
    if (!*row) return RotationOutcome::not_current;
    if (!q->is_null(0)) unused = q->text(0);
  }
  if (unused) {
    auto q = query("UPDATE certificates SET status = 'superseded' WHERE serial = ?1 AND status = 'active'");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(*unused));
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  {
    auto q = query("UPDATE certificates SET replaced_by = ?2 WHERE serial = ?1");
    if (!q) return fail(q.error());
    q->bind(1, old_serial).bind(2, std::string_view(fresh.serial_hex));
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  if (auto ok = insert_certificate_locked(fresh); !ok) return fail(ok.error());
  if (auto ok = bump_auth_locked(); !ok) return fail(ok.error());
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return RotationOutcome::committed;
}

Status SqliteStore::confirm_rotation(std::string_view new_serial, std::int64_t retire_at_ms) {
  std::lock_guard lock(mutex_);
  auto q = query("UPDATE certificates SET retire_at_ms = ?2 WHERE replaced_by = ?1 AND retire_at_ms IS NULL");
  if (!q) return fail(q.error());
  q->bind(1, new_serial).bind(2, retire_at_ms);
  if (auto ok = q->run(); !ok) return ok;
  if (sqlite3_changes(db_.get()) == 0) return {};
  return bump_auth_locked();
}

Result<std::vector<CertRecord>> SqliteStore::list_certificates(std::string_view node_id) {
  std::lock_guard lock(mutex_);
  auto q = query(std::string("SELECT ") + kCertColumns +
                 " FROM certificates WHERE node_id = ?1 ORDER BY issued_at_ms DESC, serial");
  if (!q) return fail(q.error());
  q->bind(1, node_id);
  std::vector<CertRecord> out;
  for (;;) {
    auto row = q->step();
    if (!row) return fail(row.error());
    if (!*row) break;
    out.push_back(cert_from(*q));
  }
  return out;
}

Result<std::optional<NodeRecord>> SqliteStore::find_node(std::string_view id) {
  std::lock_guard lock(mutex_);
  auto q = query(std::string("SELECT ") + kNodeColumns + " WHERE n.id = ?1");
  if (!q) return fail(q.error());
  q->bind(1, id);
  auto row = q->step();
  if (!row) return fail(row.error());
  if (!*row) return std::optional<NodeRecord>{};
  return std::optional<NodeRecord>(node_from(*q));
}

Result<std::vector<NodeRecord>> SqliteStore::list_nodes() {
  std::lock_guard lock(mutex_);
  auto q = query(std::string("SELECT ") + kNodeColumns + " ORDER BY n.id");
  if (!q) return fail(q.error());
  std::vector<NodeRecord> out;
  for (;;) {
    auto row = q->step();
    if (!row) return fail(row.error());
    if (!*row) break;
    out.push_back(node_from(*q));
  }
  return out;
}

Result<bool> SqliteStore::revoke_node(std::string_view id, std::int64_t now_ms) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  {
    auto q = query("SELECT 1 FROM nodes WHERE id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, id);
    auto row = q->step();
    if (!row) return fail(row.error());
    if (!*row) return false;
  }
  {
    auto q = query("UPDATE nodes SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL");
    if (!q) return fail(q.error());
    q->bind(1, id).bind(2, now_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  {
    auto q = query("UPDATE certificates SET status = 'revoked' WHERE node_id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, id);
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  if (auto ok = bump_auth_locked(); !ok) return fail(ok.error());
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return true;
}

Result<bool> SqliteStore::allow_reenroll(std::string_view id, std::int64_t until_ms) {
  std::lock_guard lock(mutex_);
  auto q = query(
      "UPDATE nodes SET reenroll_allowed_until_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL");
  if (!q) return fail(q.error());
  q->bind(1, id).bind(2, until_ms);
  if (auto ok = q->run(); !ok) return fail(ok.error());
  return sqlite3_changes(db_.get()) > 0;
}

Status SqliteStore::insert_admin_cert(const AdminCertRecord& a) {
  std::lock_guard lock(mutex_);
  auto q = query(
      "INSERT OR IGNORE INTO admin_certificates (serial, name, fingerprint, issued_at_ms, "
      "not_after_ms, revoked_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
  if (!q) return fail(q.error());
  q->bind(1, std::string_view(a.serial_hex)).bind(2, std::string_view(a.name));
  q->bind(3, std::string_view(a.fingerprint_sha256)).bind(4, a.issued_at_ms);
  q->bind(5, a.not_after_ms).bind(6, a.revoked_at_ms);
  if (auto ok = q->run(); !ok) return ok;
  if (sqlite3_changes(db_.get()) == 0) return {};
  return bump_auth_locked();
}

Result<std::vector<AdminCertRecord>> SqliteStore::list_admin_certs() {
  std::lock_guard lock(mutex_);
  auto q = query(std::string("SELECT ") + kAdminColumns +
                 " FROM admin_certificates ORDER BY name, issued_at_ms, serial");
  if (!q) return fail(q.error());
  return collect(*q, admin_from);
}

Result<std::int64_t> SqliteStore::revoke_admin(std::string_view name, std::int64_t now_ms) {
  std::lock_guard lock(mutex_);
  auto q = query(
      "UPDATE admin_certificates SET revoked_at_ms = ?2 WHERE name = ?1 AND revoked_at_ms IS NULL");
  if (!q) return fail(q.error());
  q->bind(1, name).bind(2, now_ms);
  if (auto ok = q->run(); !ok) return fail(ok.error());
  const auto revoked = static_cast<std::int64_t>(sqlite3_changes(db_.get()));
  if (revoked > 0) {
    if (auto ok = bump_auth_locked(); !ok) return fail(ok.error());
  }
  return revoked;
}

Result<std::int64_t> SqliteStore::auth_generation() {
  std::lock_guard lock(mutex_);
  auto q = query("SELECT value FROM counters WHERE name = 'auth_generation'");
  if (!q) return fail(q.error());
  auto row = q->step();
  if (!row) return fail(row.error());
  return *row ? q->int64(0) : 0;
}

Result<std::vector<Status>> SqliteStore::write_heartbeats(std::span<const HeartbeatRecord> batch) {
  std::lock_guard lock(mutex_);
  std::vector<Status> results;
  results.reserve(batch.size());
  auto tx = begin();
  if (!tx) return fail(tx.error());
  for (const auto& hb : batch) results.push_back(write_one_heartbeat(hb));
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return results;
}

Result<AuthSnapshot> SqliteStore::load_auth_snapshot(std::int64_t now_ms) {
  std::lock_guard lock(mutex_);
  AuthSnapshot snap;
  {
    auto q = query(
        "SELECT n.id, n.revoked_at_ms, n.enrolled_at_ms, s.last_seen_ms FROM nodes n "
        "LEFT JOIN node_status s ON s.node_id = n.id");
    if (!q) return fail(q.error());
    for (;;) {
      auto row = q->step();
      if (!row) return fail(row.error());
      if (!*row) break;
      snap.nodes.push_back({q->text(0), !q->is_null(1), q->int64(2), q->opt_int64(3).value_or(0)});
    }
  }
  {
    auto q = query(std::string("SELECT ") + kCertColumns +
                   " FROM certificates WHERE status != 'superseded' AND not_after_ms > ?1 "
                   "AND (retire_at_ms IS NULL OR retire_at_ms > ?1)");
    if (!q) return fail(q.error());
    q->bind(1, now_ms);
    auto certs = collect(*q, cert_from);
    if (!certs) return fail(certs.error());
    snap.certs = std::move(*certs);
  }
  {
    auto q = query(std::string("SELECT ") + kAdminColumns + " FROM admin_certificates");
    if (!q) return fail(q.error());
    auto admins = collect(*q, admin_from);
    if (!admins) return fail(admins.error());
    snap.admins = std::move(*admins);
  }
  return snap;
}

Result<std::string> SqliteStore::put_escrow_key_if_absent(std::string_view node_id, std::string_view key) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  {
    auto q = query(
        "INSERT OR IGNORE INTO escrow_keys (node_id, key, stored_at_ms) "
        "VALUES (?1, ?2, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))");
    if (!q) return fail(q.error());
    q->bind(1, node_id).bind(2, key);
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  auto stored = find_escrow_key_locked(node_id);
  if (!stored) return fail(stored.error());
  if (!*stored) return fail(Errc::internal, "escrow key of node " + std::string(node_id) + ": not found after insert");
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return std::move(**stored);
}

Result<std::optional<std::string>> SqliteStore::find_escrow_key(std::string_view node_id) {
  std::lock_guard lock(mutex_);
  return find_escrow_key_locked(node_id);
}

Status SqliteStore::bump_auth_locked() {
  auto q = query("UPDATE counters SET value = value + 1 WHERE name = 'auth_generation'");
  if (!q) return fail(q.error());
  return q->run();
}

Result<std::optional<std::string>> SqliteStore::find_escrow_key_locked(std::string_view node_id) {
  auto q = query("SELECT key FROM escrow_keys WHERE node_id = ?1");
  if (!q) return fail(q.error());
  q->bind(1, node_id);
  auto row = q->step();
  if (!row) return fail(row.error());
  if (!*row) return std::optional<std::string>{};
  return std::optional<std::string>(q->text(0));
}

Status SqliteStore::insert_certificate_locked(const CertRecord& c) {
  auto q = query(
      "INSERT INTO certificates (serial, node_id, fingerprint, not_before_ms, not_after_ms, "
      "issued_at_ms, reason, status, retire_at_ms, public_key, replaced_by) "
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
  if (!q) return fail(q.error());
  q->bind(1, std::string_view(c.serial_hex)).bind(2, std::string_view(c.node_id));
  q->bind(3, std::string_view(c.fingerprint_sha256)).bind(4, c.not_before_ms);
  q->bind(5, c.not_after_ms).bind(6, c.issued_at_ms).bind(7, std::string_view(c.reason));
  q->bind(8, cert_status_name(c.status)).bind(9, c.retire_at_ms);
  q->bind(10, std::string_view(c.public_key_pem)).bind(11, c.replaced_by);
  return q->run();
}

Status SqliteStore::write_one_heartbeat(const HeartbeatRecord& r) {
  const auto& hb = r.request;
  std::int64_t new_critical = 0;
  bool stored_any = false;
  int index = 0;
  for (const auto& e : hb.events) {
    ++index;
    // An event without an idempotency id cannot be deduplicated; give it a unique one.
    const std::string id = e.id.empty() ? "anon-" + std::to_string(r.received_at_ms) + "-" +
                                              std::to_string(index)
                                        : e.id;
    auto inserted = insert_event_locked(
        {r.node_id, id, e.severity, e.kind, e.message, e.time, r.received_at_ms});
    if (!inserted) return fail(inserted.error());
    if (!*inserted) continue;  // a duplicate of an id already stored: dropped
    stored_any = true;
    if (e.severity == "critical") ++new_critical;
  }
  if (stored_any) {
    if (auto ok = prune_events_locked(r.node_id); !ok) return ok;
  }
  auto q = query(R"sql(
INSERT INTO node_status (node_id, last_seen_ms, boot_id, agent_version, mount_state, load1, load5,
  load15, cpu_count, mem_total_bytes, mem_available_bytes, disk_total_bytes, disk_free_bytes,
  uptime_s, cert_not_after, modules, labels, heartbeats, critical_events_total, capabilities)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, 1, ?18, ?19)
ON CONFLICT (node_id) DO UPDATE SET
  last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms), boot_id = excluded.boot_id,
  agent_version = excluded.agent_version, mount_state = excluded.mount_state,
  load1 = excluded.load1, load5 = excluded.load5, load15 = excluded.load15,
  cpu_count = excluded.cpu_count, mem_total_bytes = excluded.mem_total_bytes,
  mem_available_bytes = excluded.mem_available_bytes, disk_total_bytes = excluded.disk_total_bytes,
  disk_free_bytes = excluded.disk_free_bytes, uptime_s = excluded.uptime_s,
  cert_not_after = excluded.cert_not_after, modules = excluded.modules, labels = excluded.labels,
  capabilities = excluded.capabilities,
  heartbeats = heartbeats + 1,
  critical_events_total = critical_events_total + excluded.critical_events_total)sql");
  if (!q) return fail(q.error());
  auto u64 = [](std::uint64_t v) { return static_cast<std::int64_t>(v); };
  q->bind(1, std::string_view(r.node_id)).bind(2, r.received_at_ms);
  q->bind(3, std::string_view(hb.boot_id)).bind(4, std::string_view(hb.agent_version));
  q->bind(5, std::string_view(hb.mount_state)).bind(6, hb.load1).bind(7, hb.load5);
  q->bind(8, hb.load15).bind(9, std::int64_t{hb.cpu_count}).bind(10, u64(hb.mem_total_bytes));
  q->bind(11, u64(hb.mem_available_bytes)).bind(12, u64(hb.disk_total_bytes));
  q->bind(13, u64(hb.disk_free_bytes)).bind(14, u64(hb.uptime_s));
  q->bind(15, std::string_view(hb.cert_not_after));
  q->bind(16, std::string_view(modules_text(hb.modules)));
  q->bind(17, std::string_view(labels_text(hb.labels))).bind(18, new_critical);
  q->bind(19, std::string_view(strings_text(hb.capabilities)));
  return q->run();
}

}  // namespace cairn::control::sqlite_internal
