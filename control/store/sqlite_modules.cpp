// SQLite: the module catalog, its assignments and the signed module trust policy.
#include "control/store/sqlite_internal.hpp"

namespace cairn::control::sqlite_internal {

Status SqliteStore::upsert_module(const ModuleRecord& m) {
  std::lock_guard lock(mutex_);
  auto q = query(
      "INSERT INTO modules (name, version, reference, manifest_digest, priority, trust, added_at_ms, manifest, "
      "required) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (name, version) DO UPDATE SET "
      "reference = excluded.reference, manifest_digest = excluded.manifest_digest, "
      "priority = excluded.priority, trust = excluded.trust, manifest = excluded.manifest, "
      "required = excluded.required");
  if (!q) return fail(q.error());
  q->bind(1, std::string_view(m.name)).bind(2, std::string_view(m.version)).bind(3, std::string_view(m.reference));
  q->bind(4, std::string_view(m.manifest_digest)).bind(5, m.priority).bind(6, std::string_view(m.trust_json));
  q->bind(7, m.added_at_ms).bind(8, std::string_view(m.manifest_json)).bind(9, std::int64_t{m.required ? 1 : 0});
  return q->run();
}

Result<std::vector<ModuleRecord>> SqliteStore::list_modules() {
  std::lock_guard lock(mutex_);
  auto q = query(
      "SELECT name, version, reference, manifest_digest, priority, trust, added_at_ms, manifest, required "
      "FROM modules ORDER BY name, added_at_ms, version");
  if (!q) return fail(q.error());
  return collect(*q, [](const Query& r) {
    return ModuleRecord{r.text(0), r.text(1), r.text(2), r.text(3), r.int64(4), r.text(5), r.int64(6),
                        r.text(7), r.int64(8) != 0};
  });
}

Status SqliteStore::insert_assignment(const AssignmentRecord& a) {
  std::lock_guard lock(mutex_);
  auto q = query(
      "INSERT INTO module_assignments (id, module_name, module_version, node_id, selector, created_at_ms) "
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
  if (!q) return fail(q.error());
  q->bind(1, std::string_view(a.id)).bind(2, std::string_view(a.module_name));
  q->bind(3, std::string_view(a.module_version)).bind(4, a.node_id);
  q->bind(5, std::string_view(labels_text(a.selector))).bind(6, a.created_at_ms);
  return q->run();
}

Result<std::vector<AssignmentRecord>> SqliteStore::list_assignments() {
  std::lock_guard lock(mutex_);
  auto q = query(
      "SELECT id, module_name, module_version, node_id, selector, created_at_ms FROM module_assignments "
      "ORDER BY created_at_ms, id");
  if (!q) return fail(q.error());
  return collect(*q, [](const Query& r) {
    AssignmentRecord a;
    a.id = r.text(0);
    a.module_name = r.text(1);
    a.module_version = r.text(2);
    if (!r.is_null(3)) a.node_id = r.text(3);
    a.selector = labels_from(r.text(4));
    a.created_at_ms = r.int64(5);
    return a;
  });
}

Result<bool> SqliteStore::delete_assignment(std::string_view id) {
  std::lock_guard lock(mutex_);
  auto q = query("DELETE FROM module_assignments WHERE id = ?1");
  if (!q) return fail(q.error());
  q->bind(1, id);
  if (auto ok = q->run(); !ok) return fail(ok.error());
  return sqlite3_changes(db_.get()) > 0;
}

// The version rule is the upsert's WHERE: the row is written when there is none, or the stored
// version is lower, or equal with the same signed text. The transaction (BEGIN IMMEDIATE: the
// database's write lock, which another process waits for) keeps the version a refusal names
// the one that refused.
Result<ModulePolicyPut> SqliteStore::put_module_policy(const ModulePolicyRecord& p) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  ModulePolicyPut put;
  {
    auto q = query(
        "INSERT INTO module_policy (id, version, policy_text, document, set_at_ms) VALUES (1, ?1, ?2, ?3, ?4) "
        "ON CONFLICT (id) DO UPDATE SET version = excluded.version, policy_text = excluded.policy_text, "
        "document = excluded.document, set_at_ms = excluded.set_at_ms "
        "WHERE module_policy.version < excluded.version OR "
        "(module_policy.version = excluded.version AND module_policy.policy_text = excluded.policy_text)");
    if (!q) return fail(q.error());
    q->bind(1, p.version).bind(2, std::string_view(p.policy_text)).bind(3, std::string_view(p.document));
    q->bind(4, p.set_at_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    put.stored = sqlite3_changes(db_.get()) > 0;
    put.stored_version = p.version;
  }
  if (!put.stored) {
    auto q = query("SELECT version FROM module_policy WHERE id = 1");
    if (!q) return fail(q.error());
    auto row = q->step();
    if (!row) return fail(row.error());
    if (*row) put.stored_version = q->int64(0);
  }
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return put;
}

Result<std::optional<ModulePolicyRecord>> SqliteStore::find_module_policy() {
  std::lock_guard lock(mutex_);
  auto q = query("SELECT version, policy_text, document, set_at_ms FROM module_policy WHERE id = 1");
  if (!q) return fail(q.error());
  auto row = q->step();
  if (!row) return fail(row.error());
  if (!*row) return std::optional<ModulePolicyRecord>();
  return std::optional<ModulePolicyRecord>(ModulePolicyRecord{q->int64(0), q->text(1), q->text(2), q->int64(3)});
}

}  // namespace cairn::control::sqlite_internal
