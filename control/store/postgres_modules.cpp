// PostgreSQL: the module catalog, its assignments and the signed module trust policy.
#include "control/store/postgres_internal.hpp"

namespace cairn::control::postgres_internal {

Status PostgresStore::upsert_module(const ModuleRecord& m) {
  Params p;
  p.add(m.name).add(m.version).add(m.reference).add(m.manifest_digest).add(m.priority).add(m.trust_json);
  p.add(m.added_at_ms).add(m.manifest_json).add(m.required);
  return run_status(
      "INSERT INTO modules (name, version, reference, manifest_digest, priority, trust, added_at_ms, manifest, "
      "required) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name, version) DO UPDATE SET "
      "reference = excluded.reference, manifest_digest = excluded.manifest_digest, "
      "priority = excluded.priority, trust = excluded.trust, manifest = excluded.manifest, "
      "required = excluded.required",
      p);
}

Result<std::vector<ModuleRecord>> PostgresStore::list_modules() {
  auto rows = run(
      "SELECT name, version, reference, manifest_digest, priority, trust, added_at_ms, manifest, required "
      "FROM modules ORDER BY name, added_at_ms, version",
      Params());
  if (!rows) return fail(rows.error());
  return collect(*rows, [](const Rows& q, int r) {
    return ModuleRecord{q.text(r, 0), q.text(r, 1), q.text(r, 2), q.text(r, 3), q.int64(r, 4), q.text(r, 5),
                        q.int64(r, 6), q.text(r, 7), q.boolean(r, 8)};
  });
}

Status PostgresStore::insert_assignment(const AssignmentRecord& a) {
  Params p;
  p.add(a.id).add(a.module_name).add(a.module_version).add(a.node_id).add(labels_text(a.selector));
  p.add(a.created_at_ms);
  return run_status(
      "INSERT INTO assignments (id, module_name, module_version, node_id, selector, created_at_ms) "
      "VALUES ($1, $2, $3, $4, $5, $6)",
      p);
}

Result<std::vector<AssignmentRecord>> PostgresStore::list_assignments() {
  auto rows = run(
      "SELECT id, module_name, module_version, node_id, selector, created_at_ms FROM assignments "
      "ORDER BY created_at_ms, id",
      Params());
  if (!rows) return fail(rows.error());
  return collect(*rows, [](const Rows& q, int r) {
    return AssignmentRecord{q.text(r, 0), q.text(r, 1), q.text(r, 2), q.opt_text(r, 3), labels_from(q.text(r, 4)),
                            q.int64(r, 5)};
  });
}

Result<bool> PostgresStore::delete_assignment(std::string_view id) {
  auto rows = run("DELETE FROM assignments WHERE id = $1::text", Params().add(id));
  if (!rows) return fail(rows.error());
  return rows->affected() > 0;
}

// One conditional statement: the row is written when there is none, or the stored version is
// lower, or equal with the same signed text. INSERT ... ON CONFLICT DO UPDATE locks the row
// and evaluates the WHERE on its newest committed version, even one committed after this
// statement's snapshot, and two first inserts meet on the primary key: replicas putting at
// once are serialised on the row, and a lower version never wins
// (https://www.postgresql.org/docs/15/sql-insert.html#SQL-ON-CONFLICT).
Result<ModulePolicyPut> PostgresStore::put_module_policy(const ModulePolicyRecord& p) {
  auto rows = run_retrying(
      "INSERT INTO module_policy (id, version, policy_text, document, set_at_ms) "
      "VALUES (1, $1::bigint, $2::text, $3::text, $4::bigint) "
      "ON CONFLICT (id) DO UPDATE SET version = excluded.version, policy_text = excluded.policy_text, "
      "document = excluded.document, set_at_ms = excluded.set_at_ms "
      "WHERE module_policy.version < excluded.version OR "
      "(module_policy.version = excluded.version AND module_policy.policy_text = excluded.policy_text) "
      "RETURNING version",
      Params().add(p.version).add(p.policy_text).add(p.document).add(p.set_at_ms));
  if (!rows) return fail(rows.error());
  if (!rows->empty()) return ModulePolicyPut{true, rows->int64(0, 0)};
  // Refused: the version that refused it, for the message (the decision above is final; a put
  // committed since may show a newer one).
  auto stored = run("SELECT version FROM module_policy WHERE id = 1", Params());
  if (!stored) return fail(stored.error());
  return ModulePolicyPut{false, stored->empty() ? 0 : stored->int64(0, 0)};
}

Result<std::optional<ModulePolicyRecord>> PostgresStore::find_module_policy() {
  auto rows = run("SELECT version, policy_text, document, set_at_ms FROM module_policy WHERE id = 1", Params());
  if (!rows) return fail(rows.error());
  if (rows->empty()) return std::optional<ModulePolicyRecord>();
  return std::optional<ModulePolicyRecord>(
      ModulePolicyRecord{rows->int64(0, 0), rows->text(0, 1), rows->text(0, 2), rows->int64(0, 3)});
}

}  // namespace cairn::control::postgres_internal
