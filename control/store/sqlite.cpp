// The SQLite backend of Store: the connection, its prepared statements, transactions and the
// schema migrations. The other concerns live in sqlite_*.cpp (see sqlite_internal.hpp).
#include "control/store/sqlite.hpp"

#include "control/store/sqlite_internal.hpp"

namespace cairn::control {

Result<std::unique_ptr<Store>> open_sqlite_store(const std::filesystem::path& file) {
  auto store = std::make_unique<sqlite_internal::SqliteStore>();
  if (auto ok = store->open(file); !ok) return fail(ok.error().with_context("store"));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace cairn::control

namespace cairn::control::sqlite_internal {

namespace {

// Ordered schema migrations. Each runs once, in its own transaction, together with the row
// that records it in schema_version. Never edit one that has shipped: append a new one.
struct Migration {
  int version;
  const char* sql;
};
constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE tokens (
  id            TEXT PRIMARY KEY,
  hash          TEXT NOT NULL UNIQUE,
  created_at_ms INTEGER NOT NULL,
  expires_at_ms INTEGER NOT NULL,
  uses          INTEGER NOT NULL DEFAULT 0,
  max_uses      INTEGER NOT NULL,
  labels        TEXT NOT NULL DEFAULT '{}',
  expect_id     TEXT,
  revoked       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE nodes (
  id                   TEXT PRIMARY KEY,
  identity             TEXT NOT NULL,
  labels               TEXT NOT NULL DEFAULT '{}',
  first_enrolled_at_ms INTEGER NOT NULL,
  enrolled_at_ms       INTEGER NOT NULL,
  enroll_count         INTEGER NOT NULL DEFAULT 1,
  token_id             TEXT REFERENCES tokens(id),
  revoked_at_ms        INTEGER
);
CREATE TABLE certificates (
  serial        TEXT PRIMARY KEY,
  node_id       TEXT NOT NULL REFERENCES nodes(id),
  fingerprint   TEXT NOT NULL,
  not_before_ms INTEGER NOT NULL,
  not_after_ms  INTEGER NOT NULL,
  issued_at_ms  INTEGER NOT NULL,
  reason        TEXT NOT NULL,
  status        TEXT NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'superseded', 'revoked'))
);
CREATE INDEX certificates_by_node ON certificates(node_id, status);
CREATE TABLE node_status (
  node_id               TEXT PRIMARY KEY REFERENCES nodes(id),
  last_seen_ms          INTEGER NOT NULL,
  boot_id               TEXT NOT NULL,
  agent_version         TEXT NOT NULL,
  mount_state           TEXT NOT NULL,
  load1 REAL NOT NULL, load5 REAL NOT NULL, load15 REAL NOT NULL,
  cpu_count             INTEGER NOT NULL,
  mem_total_bytes       INTEGER NOT NULL,
  mem_available_bytes   INTEGER NOT NULL,
  disk_total_bytes      INTEGER NOT NULL,
  disk_free_bytes       INTEGER NOT NULL,
  uptime_s              INTEGER NOT NULL,
  cert_not_after        TEXT NOT NULL,
  modules               TEXT NOT NULL,
  labels                TEXT NOT NULL,
  heartbeats            INTEGER NOT NULL DEFAULT 1,
  critical_events_total INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE node_events (
  node_id        TEXT NOT NULL REFERENCES nodes(id),
  event_id       TEXT NOT NULL,
  severity       TEXT NOT NULL,
  kind           TEXT NOT NULL,
  message        TEXT NOT NULL,
  time           TEXT NOT NULL,
  received_at_ms INTEGER NOT NULL,
  PRIMARY KEY (node_id, event_id)
);
CREATE TABLE counters (
  name  TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('enrollments', 0);
)sql"},
    // Issue 12: rotation retires the old certificate after a grace; re-enrollment rules
    // need the current key and the operator's allowance; admin credentials are tracked.
    {2, R"sql(
ALTER TABLE certificates ADD COLUMN replaced_by TEXT;
ALTER TABLE certificates ADD COLUMN retire_at_ms INTEGER;
ALTER TABLE certificates ADD COLUMN public_key TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN reenroll_allowed_until_ms INTEGER;
CREATE INDEX node_events_by_time ON node_events(received_at_ms);
CREATE INDEX certificates_by_replacement ON certificates(replaced_by);
CREATE TABLE admin_certificates (
  serial        TEXT PRIMARY KEY,
  name          TEXT NOT NULL,
  fingerprint   TEXT NOT NULL,
  issued_at_ms  INTEGER NOT NULL,
  not_after_ms  INTEGER NOT NULL,
  revoked_at_ms INTEGER
);
CREATE INDEX admin_certificates_by_name ON admin_certificates(name);
)sql"},
    // Issues 13-15: the task queue (tasks and their attempts), an event sequence for
    // cursors, the module catalog and assignments, escrowed volume keys.
    {3, R"sql(
CREATE TABLE tasks (
  seq              INTEGER PRIMARY KEY AUTOINCREMENT,
  id               TEXT NOT NULL UNIQUE,
  kind             TEXT NOT NULL,
  args             TEXT NOT NULL,
  node_id          TEXT,
  selector         TEXT NOT NULL DEFAULT '{}',
  capabilities     TEXT NOT NULL DEFAULT '[]',
  min_cpu_millis   INTEGER NOT NULL DEFAULT 0,
  min_mem_bytes    INTEGER NOT NULL DEFAULT 0,
  min_disk_bytes   INTEGER NOT NULL DEFAULT 0,
  timeout_s        INTEGER NOT NULL,
  max_attempts     INTEGER NOT NULL,
  serial_key       TEXT,
  idempotency_key  TEXT UNIQUE,
  state            TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'running', 'succeeded',
                                                  'failed', 'dead', 'cancelled')),
  attempts         INTEGER NOT NULL DEFAULT 0,
  fence            INTEGER NOT NULL DEFAULT 0,
  leased_by        TEXT,
  lease_expires_ms INTEGER,
  not_before_ms    INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  created_at_ms    INTEGER NOT NULL,
  updated_at_ms    INTEGER NOT NULL,
  started_at_ms    INTEGER,
  finished_at_ms   INTEGER,
  exit_code        INTEGER,
  last_reason      TEXT,
  last_error       TEXT NOT NULL DEFAULT '',
  output           TEXT NOT NULL DEFAULT '',
  output_truncated INTEGER NOT NULL DEFAULT 0,
  output_bytes     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_by_state ON tasks(state, seq);
CREATE INDEX tasks_by_serial_key ON tasks(serial_key, seq) WHERE serial_key IS NOT NULL;
CREATE INDEX tasks_by_holder ON tasks(leased_by, state);
CREATE INDEX tasks_by_node ON tasks(node_id, seq);
CREATE INDEX tasks_queued_by_node ON tasks(node_id, seq) WHERE state = 'queued';
CREATE INDEX tasks_by_lease_expiry ON tasks(lease_expires_ms) WHERE lease_expires_ms IS NOT NULL;
CREATE INDEX tasks_by_finish ON tasks(finished_at_ms) WHERE finished_at_ms IS NOT NULL;
CREATE TABLE task_attempts (
  task_id        TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
  attempt        INTEGER NOT NULL,
  fence          INTEGER NOT NULL,
  node_id        TEXT NOT NULL,
  leased_at_ms   INTEGER NOT NULL,
  started_at_ms  INTEGER,
  finished_at_ms INTEGER,
  outcome        TEXT NOT NULL DEFAULT '',
  reason         TEXT,
  exit_code      INTEGER,
  error          TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (task_id, attempt)
);
CREATE UNIQUE INDEX task_attempts_by_fence ON task_attempts(task_id, fence);
ALTER TABLE node_events ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE node_events SET seq = rowid;
INSERT INTO counters (name, value) VALUES ('event_seq', (SELECT COALESCE(MAX(rowid), 0) FROM node_events));
CREATE INDEX node_events_by_seq ON node_events(seq);
ALTER TABLE node_status ADD COLUMN capabilities TEXT NOT NULL DEFAULT '[]';
CREATE TABLE modules (
  name            TEXT NOT NULL,
  version         TEXT NOT NULL,
  reference       TEXT NOT NULL,
  manifest_digest TEXT NOT NULL,
  priority        INTEGER NOT NULL DEFAULT 0,
  trust           TEXT NOT NULL DEFAULT '{}',
  added_at_ms     INTEGER NOT NULL,
  PRIMARY KEY (name, version)
);
CREATE TABLE module_assignments (
  id             TEXT PRIMARY KEY,
  module_name    TEXT NOT NULL,
  module_version TEXT NOT NULL,
  node_id        TEXT,
  selector       TEXT NOT NULL DEFAULT '{}',
  created_at_ms  INTEGER NOT NULL
);
CREATE TABLE escrow_keys (
  node_id      TEXT PRIMARY KEY,
  key          TEXT NOT NULL,
  stored_at_ms INTEGER NOT NULL
);
)sql"},
    // modules (h-modctl): the module manifest `module add` verified (name, version, digests,
    // dependencies) and whether a node refuses a change that would leave the module out.
    {4, R"sql(
ALTER TABLE modules ADD COLUMN manifest TEXT NOT NULL DEFAULT '';
ALTER TABLE modules ADD COLUMN required INTEGER NOT NULL DEFAULT 0;
)sql"},
    // tasks (h-taskbatch): fewer indexes on tasks, each one a query needs (checked with EXPLAIN
    // QUERY PLAN on every task query). Version 5: 4 is the module manifest (h-modctl).
    //  - the queue in submission order (queued_heads) and per node (the lease walks) are
    //    partial indexes of queued tasks only: a task leaves them when leased;
    //  - what a node holds (its reservations) and the expiry sweep read the same partial index
    //    of open leases: extend, which moves the expiry, then touches no index;
    //  - by_state, by_lease_expiry and by_finish go: every lease and completion rewrote them.
    //    Pruning by age ranks every final task anyway; `task list --status` walks the newest
    //    tasks backwards (slow only for a rare state in a long history);
    //  - by_holder becomes (leased_by, seq): rewritten when a task is leased (or requeued),
    //    no longer at every state change; with by_node it serves `task list --node`;
    //  - the serial-key index keeps open tasks only (the head check asks for those).
    // An auth generation counter: bumped with every change of authorisation (store.hpp).
    {5, R"sql(
DROP INDEX tasks_by_state;
DROP INDEX tasks_by_holder;
DROP INDEX tasks_by_lease_expiry;
DROP INDEX tasks_by_finish;
DROP INDEX tasks_by_serial_key;
CREATE INDEX tasks_by_holder ON tasks(leased_by, seq);
CREATE INDEX tasks_queued ON tasks(seq) WHERE state = 'queued';
CREATE INDEX tasks_open ON tasks(leased_by) WHERE state IN ('leased', 'running');
CREATE INDEX tasks_serial_open ON tasks(serial_key, seq)
  WHERE serial_key IS NOT NULL AND state IN ('queued', 'leased', 'running');
INSERT INTO counters (name, value) VALUES ('auth_generation', 0);
)sql"},
    // modules (h-policystore): the signed module trust policy, in the store so that every
    // replica serves the same one (it was <state>/module-policy.json). One row at most.
    {6, R"sql(
CREATE TABLE module_policy (
  id          INTEGER PRIMARY KEY CHECK (id = 1),
  version     INTEGER NOT NULL,
  policy_text TEXT NOT NULL,
  document    TEXT NOT NULL,
  set_at_ms   INTEGER NOT NULL
);
)sql"},
};

}  // namespace

Status SqliteStore::open(const std::filesystem::path& file) {
  path_ = file;
  sqlite3* raw = nullptr;
  // NOMUTEX: every use of the connection is already serialized by mutex_.
  const int rc = sqlite3_open_v2(file.c_str(), &raw,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  db_.reset(raw);
  if (rc != SQLITE_OK) {
    return fail(Errc::io,
                "open database " + file.string() + ": " +
                    (raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)),
                "check that the state dir exists and is writable");
  }
  // WAL: readers never block the writer, and a commit is one append to the log.
  // synchronous=NORMAL in WAL mode fsyncs only at checkpoints, not at every commit: a
  // committed transaction survives a crash of the process (kill -9) because it is in the
  // OS page cache; only a power loss or kernel crash can lose the last commits (the
  // database stays consistent). That is what lets heartbeats be group-committed at
  // thousands per second (https://www.sqlite.org/pragma.html#pragma_synchronous).
  // busy_timeout: a second process (the CLI run by hand) waits instead of failing.
  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL",
                             "PRAGMA busy_timeout=5000", "PRAGMA foreign_keys=ON"}) {
    if (auto ok = exec(pragma); !ok) return ok;
  }
  return migrate();
}

int SqliteStore::schema_version() {
  std::lock_guard lock(mutex_);
  return read_schema_version().value_or(0);
}

Result<SqliteStore::Transaction> SqliteStore::begin() {
  if (auto ok = exec("BEGIN IMMEDIATE"); !ok) return fail(ok.error());
  return Transaction(this);
}

Status SqliteStore::exec(const char* sql) {
  char* msg = nullptr;
  const int rc = sqlite3_exec(db_.get(), sql, nullptr, nullptr, &msg);
  if (rc != SQLITE_OK) {
    std::string text = msg ? msg : sqlite3_errstr(rc);
    sqlite3_free(msg);
    return fail(Errc::io, "database " + path_.string() + ": '" + std::string(sql).substr(0, 60) +
                              "': " + text,
                "check the disk and the permissions of the state dir");
  }
  return {};
}

Result<Query> SqliteStore::query(const std::string& sql) {
  auto it = stmts_.find(sql);
  if (it == stmts_.end()) {
    sqlite3_stmt* raw = nullptr;
    const int rc = sqlite3_prepare_v3(db_.get(), sql.c_str(), static_cast<int>(sql.size()),
                                      SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(raw);
      return fail(Errc::internal, "prepare '" + sql + "': " + sqlite3_errmsg(db_.get()));
    }
    it = stmts_.emplace(sql, StmtPtr(raw)).first;
  }
  return Query(db_.get(), it->second.get());
}

Result<int> SqliteStore::read_schema_version() {
  auto q = query("SELECT COALESCE(MAX(version), 0) FROM schema_version");
  if (!q) return fail(q.error());
  auto row = q->step();
  if (!row) return fail(row.error());
  return *row ? static_cast<int>(q->int64(0)) : 0;
}

Status SqliteStore::migrate() {
  std::lock_guard lock(mutex_);
  if (auto ok = exec("CREATE TABLE IF NOT EXISTS schema_version ("
                     " version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)");
      !ok) {
    return ok;
  }
  for (const auto& m : kMigrations) {
    auto tx = begin();
    if (!tx) return fail(tx.error());
    // Read inside the write transaction: two processes opening the same new database
    // cannot both apply a migration.
    auto current = read_schema_version();
    if (!current) return fail(current.error());
    if (*current >= m.version) continue;
    if (auto ok = exec(m.sql); !ok) {
      return fail(ok.error().with_context("schema migration " + std::to_string(m.version)));
    }
    auto q = query(
        "INSERT INTO schema_version (version, applied_at_ms) "
        "VALUES (?1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))");
    if (!q) return fail(q.error());
    q->bind(1, std::int64_t{m.version});
    if (auto ok = q->run(); !ok) return ok;
    if (auto ok = tx->commit(); !ok) return ok;
  }
  const int newest = kMigrations[std::size(kMigrations) - 1].version;
  auto current = read_schema_version();
  if (!current) return fail(current.error());
  if (*current > newest) {
    return fail(Errc::config,
                "database " + path_.string() + " has schema version " + std::to_string(*current) +
                    ", newer than this cairn-control knows (" + std::to_string(newest) + ")",
                "run the cairn-control release that wrote it, or a newer one");
  }
  return {};
}

}  // namespace cairn::control::sqlite_internal
