// PostgreSQL: tokens, enrollment, certificates, nodes, revocation, admin credentials,
// heartbeats, the auth snapshot and escrowed keys.
#include "control/store/postgres_internal.hpp"

namespace cairn::control::postgres_internal {

namespace {

// The auth generation (Store::auth_generation) moves with each change of authorisation: in
// the change's transaction, or, after a CTE `u` of the change, only when it changed a row.
constexpr const char* kBumpAuth = "UPDATE counters SET value = value + 1 WHERE name = 'auth_generation'";
constexpr const char* kBumpAuthIf =
    "g AS (UPDATE counters SET value = value + 1 WHERE name = 'auth_generation' AND EXISTS (SELECT 1 FROM u))";

}  // namespace

Status PostgresStore::insert_token(const TokenRecord& t) {
  Params p;
  p.add(t.id).add(t.hash).add(t.created_at_ms).add(t.expires_at_ms).add(t.uses).add(t.max_uses);
  p.add(labels_text(t.labels)).add(t.expect_id).add(t.revoked);
  return run_status(
      "INSERT INTO tokens (id, hash, created_at_ms, expires_at_ms, uses, max_uses, labels, expect_id, revoked) "
      "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
      p);
}

Result<std::optional<TokenRecord>> PostgresStore::find_token_by_hash(std::string_view hash) {
  auto rows = run(std::string("SELECT ") + kTokenColumns + " FROM tokens WHERE hash = $1::text", Params().add(hash));
  if (!rows) return fail(rows.error());
  if (rows->empty()) return std::optional<TokenRecord>{};
  return std::optional<TokenRecord>(token_from(*rows, 0));
}

Result<std::vector<TokenRecord>> PostgresStore::list_tokens() {
  auto rows = run(std::string("SELECT ") + kTokenColumns + " FROM tokens ORDER BY created_at_ms, id", Params());
  if (!rows) return fail(rows.error());
  return collect(*rows, token_from);
}

Result<bool> PostgresStore::revoke_token(std::string_view id) {
  auto rows = run("UPDATE tokens SET revoked = true WHERE id = $1::text", Params().add(id));
  if (!rows) return fail(rows.error());
  return rows->affected() > 0;
}

Result<EnrollmentOutcome> PostgresStore::commit_enrollment(const EnrollmentCommit& c) {
  return in_tx([&](Conn& conn) -> Result<EnrollmentOutcome> {
    // Enrollments of one id are serialised across replicas (the node row may not exist yet,
    // so a row lock cannot do it): the second waits here and then sees the first's commit.
    if (auto ok = exec(conn, "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
                       Params().add(c.node.id));
        !ok) {
      return fail(ok.error());
    }
    // The conditional UPDATE is the real check: two enrollments racing for the last use
    // of a token cannot both get it (the row lock serialises them).
    auto token = exec(conn,
                      "UPDATE tokens SET uses = uses + 1 WHERE id = $1::text AND NOT revoked "
                      "AND uses < max_uses AND expires_at_ms > $2::bigint",
                      Params().add(c.token_id).add(c.now_ms));
    if (!token) return fail(token.error());
    if (token->affected() == 0) return rollback(conn, EnrollmentOutcome::token_unavailable);
    auto node = exec(conn, "SELECT revoked_at_ms, reenroll_allowed_until_ms FROM nodes WHERE id = $1::text FOR UPDATE",
                     Params().add(c.node.id));
    if (!node) return fail(node.error());
    if (!node->empty()) {
      if (!node->is_null(0, 0)) return rollback(conn, EnrollmentOutcome::node_revoked);
      const auto allowed_until = node->opt_int64(0, 1);
      switch (c.existing) {
        case ExistingNode::replace: break;
        case ExistingNode::refuse: return rollback(conn, EnrollmentOutcome::node_exists);
        case ExistingNode::replace_if_allowed:
          if (!allowed_until || *allowed_until <= c.now_ms) return rollback(conn, EnrollmentOutcome::node_exists);
          break;
      }
    }
    Params p;
    p.add(c.node.id).add(dump_json(protocol::to_json(c.node.identity))).add(labels_text(c.node.labels));
    p.add(c.now_ms).add(c.token_id);
    if (auto ok = exec(conn,
                       "INSERT INTO nodes (id, identity, labels, first_enrolled_at_ms, enrolled_at_ms, "
                       "enroll_count, token_id) VALUES ($1, $2, $3, $4, $4, 1, $5) "
                       "ON CONFLICT (id) DO UPDATE SET identity = excluded.identity, labels = excluded.labels, "
                       "enrolled_at_ms = excluded.enrolled_at_ms, enroll_count = nodes.enroll_count + 1, "
                       "token_id = excluded.token_id, reenroll_allowed_until_ms = NULL",
                       p);
        !ok) {
      return fail(ok.error());
    }
    if (auto ok = exec(conn, "UPDATE certificates SET status = 'superseded' WHERE node_id = $1::text AND status = 'active'",
                       Params().add(c.node.id));
        !ok) {
      return fail(ok.error());
    }
    if (auto ok = insert_certificate(conn, c.cert); !ok) return fail(ok.error());
    if (auto ok = exec(conn, "UPDATE counters SET value = value + 1 WHERE name = 'enrollments'", Params()); !ok) {
      return fail(ok.error());
    }
    if (auto ok = exec(conn, kBumpAuth, Params()); !ok) return fail(ok.error());
    return EnrollmentOutcome::committed;
  });
}

Result<std::int64_t> PostgresStore::enrollments_total() {
  auto rows = run("SELECT value FROM counters WHERE name = 'enrollments'", Params());
  if (!rows) return fail(rows.error());
  return rows->empty() ? 0 : rows->int64(0, 0);
}

Result<RotationOutcome> PostgresStore::commit_rotation(std::string_view old_serial, const CertRecord& fresh) {
  return in_tx([&](Conn& conn) -> Result<RotationOutcome> {
    auto old = exec(conn,
                    "SELECT c.replaced_by FROM certificates c JOIN nodes n ON n.id = c.node_id WHERE "
                    "c.serial = $1::text AND c.node_id = $2::text AND c.status = 'active' AND c.retire_at_ms IS NULL "
                    "AND n.revoked_at_ms IS NULL FOR UPDATE OF c",
                    Params().add(old_serial).add(fresh.node_id));
    if (!old) return fail(old.error());
    if (old->empty()) return rollback(conn, RotationOutcome::not_current);
    if (auto unused = old->opt_text(0, 0)) {
      if (auto ok = exec(conn, "UPDATE certificates SET status = 'superseded' WHERE serial = $1::text AND status = 'active'",
                         Params().add(*unused));
          !ok) {
        return fail(ok.error());
      }
    }
    if (auto ok = exec(conn, "UPDATE certificates SET replaced_by = $2::text WHERE serial = $1::text",
                       Params().add(old_serial).add(fresh.serial_hex));
        !ok) {
      return fail(ok.error());
    }
    if (auto ok = insert_certificate(conn, fresh); !ok) return fail(ok.error());
    if (auto ok = exec(conn, kBumpAuth, Params()); !ok) return fail(ok.error());
    return RotationOutcome::committed;
  });
}

Status PostgresStore::confirm_rotation(std::string_view new_serial, std::int64_t retire_at_ms) {
  return run_status(std::string("WITH u AS (UPDATE certificates SET retire_at_ms = $2::bigint WHERE replaced_by = $1::text "
                                "AND retire_at_ms IS NULL RETURNING 1), ") +
                        kBumpAuthIf + " SELECT 1",
                    Params().add(new_serial).add(retire_at_ms));
}

Result<std::vector<CertRecord>> PostgresStore::list_certificates(std::string_view node_id) {
  auto rows = run(std::string("SELECT ") + kCertColumns +
                      " FROM certificates WHERE node_id = $1::text ORDER BY issued_at_ms DESC, serial",
                  Params().add(node_id));
  if (!rows) return fail(rows.error());
  return collect(*rows, cert_from);
}

Result<std::optional<NodeRecord>> PostgresStore::find_node(std::string_view id) {
  auto rows = run(std::string("SELECT ") + kNodeColumns + " WHERE n.id = $1::text", Params().add(id));
  if (!rows) return fail(rows.error());
  if (rows->empty()) return std::optional<NodeRecord>{};
  return std::optional<NodeRecord>(node_from(*rows, 0));
}

Result<std::vector<NodeRecord>> PostgresStore::list_nodes() {
  auto rows = run(std::string("SELECT ") + kNodeColumns + " ORDER BY n.id", Params());
  if (!rows) return fail(rows.error());
  return collect(*rows, node_from);
}

Result<bool> PostgresStore::revoke_node(std::string_view id, std::int64_t now_ms) {
  return in_tx([&](Conn& conn) -> Result<bool> {
    auto node = exec(conn,
                     "UPDATE nodes SET revoked_at_ms = COALESCE(revoked_at_ms, $2::bigint) WHERE id = $1::text",
                     Params().add(id).add(now_ms));
    if (!node) return fail(node.error());
    if (node->affected() == 0) return rollback(conn, false);
    if (auto ok = exec(conn, "UPDATE certificates SET status = 'revoked' WHERE node_id = $1::text", Params().add(id));
        !ok) {
      return fail(ok.error());
    }
    if (auto ok = exec(conn, kBumpAuth, Params()); !ok) return fail(ok.error());
    return true;
  });
}

Result<bool> PostgresStore::allow_reenroll(std::string_view id, std::int64_t until_ms) {
  auto rows = run(
      "UPDATE nodes SET reenroll_allowed_until_ms = $2::bigint WHERE id = $1::text AND revoked_at_ms IS NULL",
      Params().add(id).add(until_ms));
  if (!rows) return fail(rows.error());
  return rows->affected() > 0;
}

Status PostgresStore::insert_admin_cert(const AdminCertRecord& a) {
  Params p;
  p.add(a.serial_hex).add(a.name).add(a.fingerprint_sha256).add(a.issued_at_ms).add(a.not_after_ms);
  p.add(a.revoked_at_ms);
  return run_status(std::string("WITH u AS (INSERT INTO admin_certificates (serial, name, fingerprint, issued_at_ms, "
                                "not_after_ms, revoked_at_ms) VALUES ($1, $2, $3, $4, $5, $6) "
                                "ON CONFLICT (serial) DO NOTHING RETURNING 1), ") +
                        kBumpAuthIf + " SELECT 1",
                    p);
}

Result<std::vector<AdminCertRecord>> PostgresStore::list_admin_certs() {
  auto rows = run(std::string("SELECT ") + kAdminColumns + " FROM admin_certificates ORDER BY name, issued_at_ms, serial",
                  Params());
  if (!rows) return fail(rows.error());
  return collect(*rows, admin_from);
}

Result<std::int64_t> PostgresStore::revoke_admin(std::string_view name, std::int64_t now_ms) {
  auto rows = run(std::string("WITH u AS (UPDATE admin_certificates SET revoked_at_ms = $2::bigint WHERE name = $1::text "
                              "AND revoked_at_ms IS NULL RETURNING 1), ") +
                      kBumpAuthIf + " SELECT count(*) FROM u",
                  Params().add(name).add(now_ms));
  if (!rows) return fail(rows.error());
  return rows->int64(0, 0);
}

Result<std::int64_t> PostgresStore::auth_generation() {
  auto rows = run("SELECT value FROM counters WHERE name = 'auth_generation'", Params());
  if (!rows) return fail(rows.error());
  return rows->empty() ? 0 : rows->int64(0, 0);
}

Result<std::vector<Status>> PostgresStore::write_heartbeats(std::span<const HeartbeatRecord> batch) {
  return in_tx([&](Conn& conn) -> Result<std::vector<Status>> {
    // The events the heartbeats carry, deduplicated per node; critical ones counted.
    std::vector<NodeEventRecord> events;
    for (const auto& hb : batch) {
      int index = 0;
      for (const auto& e : hb.request.events) {
        ++index;
        const std::string id = e.id.empty() ? "anon-" + std::to_string(hb.received_at_ms) + "-" + std::to_string(index)
                                            : e.id;
        events.push_back({hb.node_id, id, e.severity, e.kind, e.message, e.time, hb.received_at_ms});
      }
    }
    std::unordered_map<std::string, EventCounts> critical;
    if (!events.empty()) {
      auto stored = insert_event_batch(conn, events);
      if (!stored) return fail(stored.error());
      critical = std::move(*stored);
    }
    // One row per node: the newest heartbeat's fields, the count of heartbeats.
    struct Latest {
      const HeartbeatRecord* record;
      std::int64_t count;
    };
    std::map<std::string, Latest> per_node;  // ordered: rows are locked in one order
    for (const auto& hb : batch) {
      auto [it, inserted] = per_node.try_emplace(hb.node_id, Latest{&hb, 0});
      ++it->second.count;
      if (hb.received_at_ms >= it->second.record->received_at_ms) it->second.record = &hb;
    }
    Json rows = Json::array();
    auto i64 = [](std::uint64_t v) { return static_cast<std::int64_t>(v); };
    for (const auto& [node_id, latest] : per_node) {
      const auto& hb = latest.record->request;
      auto crit = critical.find(node_id);
      rows.push_back({{"node_id", node_id},
                      {"last_seen_ms", latest.record->received_at_ms},
                      {"boot_id", hb.boot_id},
                      {"agent_version", hb.agent_version},
                      {"mount_state", hb.mount_state},
                      {"load1", hb.load1},
                      {"load5", hb.load5},
                      {"load15", hb.load15},
                      {"cpu_count", std::int64_t{hb.cpu_count}},
                      {"mem_total_bytes", i64(hb.mem_total_bytes)},
                      {"mem_available_bytes", i64(hb.mem_available_bytes)},
                      {"disk_total_bytes", i64(hb.disk_total_bytes)},
                      {"disk_free_bytes", i64(hb.disk_free_bytes)},
                      {"uptime_s", i64(hb.uptime_s)},
                      {"cert_not_after", hb.cert_not_after},
                      {"modules", modules_text(hb.modules)},
                      {"labels", labels_text(hb.labels)},
                      {"count", latest.count},
                      {"capabilities", strings_text(hb.capabilities)},
                      {"critical", crit == critical.end() ? 0 : crit->second.critical}});
    }
    auto written = exec(conn, R"sql(
INSERT INTO node_status (node_id, last_seen_ms, boot_id, agent_version, mount_state, load1, load5,
  load15, cpu_count, mem_total_bytes, mem_available_bytes, disk_total_bytes, disk_free_bytes,
  uptime_s, cert_not_after, modules, labels, heartbeats, critical_events_total, capabilities)
SELECT h.node_id, h.last_seen_ms, h.boot_id, h.agent_version, h.mount_state, h.load1, h.load5,
  h.load15, h.cpu_count, h.mem_total_bytes, h.mem_available_bytes, h.disk_total_bytes,
  h.disk_free_bytes, h.uptime_s, h.cert_not_after, h.modules, h.labels, h.count, h.critical,
  h.capabilities
FROM jsonb_to_recordset($1::jsonb) AS h(node_id text, last_seen_ms bigint, boot_id text,
  agent_version text, mount_state text, load1 float8, load5 float8, load15 float8, cpu_count bigint,
  mem_total_bytes bigint, mem_available_bytes bigint, disk_total_bytes bigint,
  disk_free_bytes bigint, uptime_s bigint, cert_not_after text, modules text, labels text,
  count bigint, critical bigint, capabilities text)
WHERE EXISTS (SELECT 1 FROM nodes n WHERE n.id = h.node_id)
ORDER BY h.node_id
ON CONFLICT (node_id) DO UPDATE SET
  last_seen_ms = GREATEST(node_status.last_seen_ms, excluded.last_seen_ms), boot_id = excluded.boot_id,
  agent_version = excluded.agent_version, mount_state = excluded.mount_state,
  load1 = excluded.load1, load5 = excluded.load5, load15 = excluded.load15,
  cpu_count = excluded.cpu_count, mem_total_bytes = excluded.mem_total_bytes,
  mem_available_bytes = excluded.mem_available_bytes, disk_total_bytes = excluded.disk_total_bytes,
  disk_free_bytes = excluded.disk_free_bytes, uptime_s = excluded.uptime_s,
  cert_not_after = excluded.cert_not_after, modules = excluded.modules, labels = excluded.labels,
  capabilities = excluded.capabilities,
  heartbeats = node_status.heartbeats + excluded.heartbeats,
  critical_events_total = node_status.critical_events_total + excluded.critical_events_total
RETURNING node_id)sql",
                        Params().add(dump_json(rows)));
    if (!written) return fail(written.error());
    std::unordered_map<std::string, bool> known;
    for (int r = 0; r < written->size(); ++r) known[written->text(r, 0)] = true;
    std::vector<Status> results;
    results.reserve(batch.size());
    for (const auto& hb : batch) {
      if (known.contains(hb.node_id)) {
        results.emplace_back();
      } else {
        results.emplace_back(fail(Errc::data, "heartbeat of unknown node " + hb.node_id,
                                  "enroll the node before it sends heartbeats"));
      }
    }
    return results;
  });
}

Result<AuthSnapshot> PostgresStore::load_auth_snapshot(std::int64_t now_ms) {
  auto conn = pool_.acquire();
  if (!conn) return fail(conn.error());
  // One consistent view of the three tables.
  if (auto ok = simple(**conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); !ok) return fail(ok.error());
  AuthSnapshot snap;
  auto done = [&]() -> Status {
    auto nodes = exec(**conn,
                      "SELECT n.id, n.revoked_at_ms IS NOT NULL, n.enrolled_at_ms, COALESCE(s.last_seen_ms, 0) "
                      "FROM nodes n LEFT JOIN node_status s ON s.node_id = n.id",
                      Params());
    if (!nodes) return fail(nodes.error());
    snap.nodes.reserve(static_cast<std::size_t>(nodes->size()));
    for (int r = 0; r < nodes->size(); ++r) {
      snap.nodes.push_back({nodes->text(r, 0), nodes->boolean(r, 1), nodes->int64(r, 2), nodes->int64(r, 3)});
    }
    auto certs = exec(**conn,
                      std::string("SELECT ") + kCertColumns +
                          " FROM certificates WHERE status != 'superseded' AND not_after_ms > $1::bigint "
                          "AND (retire_at_ms IS NULL OR retire_at_ms > $1::bigint)",
                      Params().add(now_ms));
    if (!certs) return fail(certs.error());
    snap.certs = collect(*certs, cert_from);
    auto admins = exec(**conn, std::string("SELECT ") + kAdminColumns + " FROM admin_certificates", Params());
    if (!admins) return fail(admins.error());
    snap.admins = collect(*admins, admin_from);
    return {};
  }();
  if (auto ok = simple(**conn, done ? "COMMIT" : "ROLLBACK"); !ok && done) return fail(ok.error());
  if (!done) return fail(done.error());
  return snap;
}

Result<std::string> PostgresStore::put_escrow_key_if_absent(std::string_view node_id, std::string_view key) {
  Params p;
  p.add(node_id).raw(bytea_param(key));
  // DO UPDATE with no change returns the stored row whether this call inserted it or not.
  auto rows = run(
      "INSERT INTO escrow_keys (node_id, key) VALUES ($1::text, $2::bytea) "
      "ON CONFLICT (node_id) DO UPDATE SET key = escrow_keys.key RETURNING key",
      p);
  if (!rows) return fail(rows.error());
  if (rows->empty()) return fail(Errc::internal, "escrow key of node " + std::string(node_id) + ": no row returned");
  return bytea_value(rows->text(0, 0));
}

Result<std::optional<std::string>> PostgresStore::find_escrow_key(std::string_view node_id) {
  auto rows = run("SELECT key FROM escrow_keys WHERE node_id = $1::text", Params().add(node_id));
  if (!rows) return fail(rows.error());
  if (rows->empty()) return std::optional<std::string>{};
  return std::optional<std::string>(bytea_value(rows->text(0, 0)));
}

Status PostgresStore::insert_certificate(Conn& conn, const CertRecord& c) {
  Params p;
  p.add(c.serial_hex).add(c.node_id).add(c.fingerprint_sha256).add(c.not_before_ms).add(c.not_after_ms);
  p.add(c.issued_at_ms).add(c.reason).add(cert_status_name(c.status)).add(c.retire_at_ms).add(c.public_key_pem);
  p.add(c.replaced_by);
  auto ok = exec(conn,
                 "INSERT INTO certificates (serial, node_id, fingerprint, not_before_ms, not_after_ms, "
                 "issued_at_ms, reason, status, retire_at_ms, public_key, replaced_by) "
                 "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                 p);
  if (!ok) return fail(ok.error());
  return {};
}

}  // namespace cairn::control::postgres_internal
