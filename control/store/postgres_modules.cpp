// PostgreSQL: the module catalog and its assignments.
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

}  // namespace cairn::control::postgres_internal
