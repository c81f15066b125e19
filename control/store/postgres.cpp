// The PostgreSQL backend of Store: the connection pool, the statement plumbing and the schema
// migrations (the other concerns are in postgres_*.cpp; libpq is spoken only by these files,
// through postgres_internal.hpp: STYLE.md 3).
// Several cairn-control replicas share one database: every method is one statement or one
// transaction, row locks and SKIP LOCKED keep them apart, and batches travel as one jsonb
// parameter (jsonb_to_recordset) so a batch costs one round trip.
#include "control/store/postgres.hpp"

#include <cstdint>
#include <string>

#include "control/store/postgres_internal.hpp"

namespace cairn::control {

std::string redact_database_url(std::string_view url) {
  std::string out(url);
  // userinfo: scheme://user:password@host -> scheme://user@host
  if (const auto scheme = out.find("://"); scheme != std::string::npos) {
    const auto start = scheme + 3;
    const auto end = out.find_first_of("/?", start);
    const auto at = out.rfind('@', end == std::string::npos ? std::string::npos : end);
    if (at != std::string::npos && at >= start) {
      const auto colon = out.find(':', start);
      if (colon != std::string::npos && colon < at) out.erase(colon, at - colon);
    }
  }
  // a password=... query parameter
  for (std::size_t pos = out.find("password="); pos != std::string::npos; pos = out.find("password=", pos + 1)) {
    const auto value = pos + 9;
    const auto end = out.find('&', value);
    out.replace(value, (end == std::string::npos ? out.size() : end) - value, "***");
  }
  return out;
}

Result<std::unique_ptr<Store>> open_postgres_store(const std::string& url, PostgresOptions options) {
  auto store = std::make_unique<postgres_internal::PostgresStore>(url, options);
  if (auto ok = store->open(); !ok) return fail(ok.error().with_context("store"));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace cairn::control

namespace cairn::control::postgres_internal {

namespace {

// Ordered schema migrations; each runs once, in its own transaction, under an advisory lock
// so replicas starting at once apply it once. Never edit one that has shipped: append.
struct Migration {
  int version;
  const char* sql;
};
constexpr Migration kMigrations[] = {
    // Issues 11-12: what the SQLite store's migrations 1 and 2 hold, in one step.
    {1, R"sql(
CREATE TABLE tokens (
  id            TEXT PRIMARY KEY,
  hash          TEXT NOT NULL UNIQUE,
  created_at_ms BIGINT NOT NULL,
  expires_at_ms BIGINT NOT NULL,
  uses          BIGINT NOT NULL DEFAULT 0,
  max_uses      BIGINT NOT NULL,
  labels        TEXT NOT NULL DEFAULT '{}',
  expect_id     TEXT,
  revoked       BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE nodes (
  id                        TEXT PRIMARY KEY,
  identity                  TEXT NOT NULL,
  labels                    TEXT NOT NULL DEFAULT '{}',
  first_enrolled_at_ms      BIGINT NOT NULL,
  enrolled_at_ms            BIGINT NOT NULL,
  enroll_count              BIGINT NOT NULL DEFAULT 1,
  token_id                  TEXT REFERENCES tokens(id),
  revoked_at_ms             BIGINT,
  reenroll_allowed_until_ms BIGINT
);
CREATE TABLE certificates (
  serial        TEXT PRIMARY KEY,
  node_id       TEXT NOT NULL REFERENCES nodes(id),
  fingerprint   TEXT NOT NULL,
  not_before_ms BIGINT NOT NULL,
  not_after_ms  BIGINT NOT NULL,
  issued_at_ms  BIGINT NOT NULL,
  reason        TEXT NOT NULL,
  status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'superseded', 'revoked')),
  replaced_by   TEXT,
  retire_at_ms  BIGINT,
  public_key    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX certificates_by_node ON certificates(node_id, status);
CREATE INDEX certificates_by_replacement ON certificates(replaced_by);
CREATE TABLE node_status (
  node_id               TEXT PRIMARY KEY REFERENCES nodes(id),
  last_seen_ms          BIGINT NOT NULL,
  boot_id               TEXT NOT NULL,
  agent_version         TEXT NOT NULL,
  mount_state           TEXT NOT NULL,
  load1 DOUBLE PRECISION NOT NULL, load5 DOUBLE PRECISION NOT NULL, load15 DOUBLE PRECISION NOT NULL,
  cpu_count             BIGINT NOT NULL,
  mem_total_bytes       BIGINT NOT NULL,
  mem_available_bytes   BIGINT NOT NULL,
  disk_total_bytes      BIGINT NOT NULL,
  disk_free_bytes       BIGINT NOT NULL,
  uptime_s              BIGINT NOT NULL,
  cert_not_after        TEXT NOT NULL,
  modules               TEXT NOT NULL,
  labels                TEXT NOT NULL,
  heartbeats            BIGINT NOT NULL DEFAULT 1,
  critical_events_total BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE node_events (
  seq            BIGSERIAL NOT NULL,
  node_id        TEXT NOT NULL REFERENCES nodes(id),
  event_id       TEXT NOT NULL,
  severity       TEXT NOT NULL,
  kind           TEXT NOT NULL,
  message        TEXT NOT NULL,
  time           TEXT NOT NULL,
  received_at_ms BIGINT NOT NULL,
  PRIMARY KEY (node_id, event_id)
);
CREATE INDEX node_events_by_node ON node_events(node_id, seq);
CREATE INDEX node_events_by_time ON node_events(received_at_ms, seq);
CREATE TABLE counters (
  name  TEXT PRIMARY KEY,
  value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('enrollments', 0);
CREATE TABLE admin_certificates (
  serial        TEXT PRIMARY KEY,
  name          TEXT NOT NULL,
  fingerprint   TEXT NOT NULL,
  issued_at_ms  BIGINT NOT NULL,
  not_after_ms  BIGINT NOT NULL,
  revoked_at_ms BIGINT
);
CREATE INDEX admin_certificates_by_name ON admin_certificates(name);
)sql"},
    // Issues 13-15: tasks and their attempts, the capabilities a heartbeat reports, the module
    // catalog and assignments, escrowed keys.
    {2, R"sql(
ALTER TABLE node_status ADD COLUMN capabilities TEXT NOT NULL DEFAULT '[]';
CREATE TABLE tasks (
  id               TEXT PRIMARY KEY,
  seq              BIGSERIAL NOT NULL UNIQUE,
  kind             TEXT NOT NULL,
  args             TEXT NOT NULL,
  node_id          TEXT,
  selector         JSONB NOT NULL DEFAULT '{}',
  capabilities     JSONB NOT NULL DEFAULT '[]',
  min_cpu          BIGINT NOT NULL DEFAULT 0,
  min_mem          BIGINT NOT NULL DEFAULT 0,
  min_disk         BIGINT NOT NULL DEFAULT 0,
  timeout_s        BIGINT NOT NULL,
  max_attempts     BIGINT NOT NULL,
  serial_key       TEXT,
  idempotency_key  TEXT UNIQUE,
  state            TEXT NOT NULL,
  attempts         BIGINT NOT NULL DEFAULT 0,
  fence            BIGINT NOT NULL DEFAULT 0,
  leased_by        TEXT,
  lease_expires_ms BIGINT,
  not_before_ms    BIGINT NOT NULL DEFAULT 0,
  cancel_requested BOOLEAN NOT NULL DEFAULT false,
  created_at_ms    BIGINT NOT NULL,
  updated_at_ms    BIGINT NOT NULL,
  started_at_ms    BIGINT,
  finished_at_ms   BIGINT,
  exit_code        INTEGER,
  last_reason      TEXT,
  last_error       TEXT NOT NULL DEFAULT '',
  output           BYTEA NOT NULL DEFAULT '',
  output_truncated BOOLEAN NOT NULL DEFAULT false,
  output_bytes     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tasks_queued ON tasks(seq) WHERE state = 'queued';
CREATE INDEX tasks_serial_open ON tasks(serial_key, seq)
  WHERE serial_key IS NOT NULL AND state IN ('queued', 'leased', 'running');
CREATE INDEX tasks_leases ON tasks(lease_expires_ms) WHERE state IN ('leased', 'running');
CREATE INDEX tasks_held ON tasks(leased_by) WHERE state IN ('leased', 'running');
CREATE INDEX tasks_by_node ON tasks(node_id, seq);
CREATE INDEX tasks_by_holder ON tasks(leased_by, seq);
CREATE INDEX tasks_finished ON tasks(finished_at_ms) WHERE finished_at_ms IS NOT NULL;
CREATE TABLE task_attempts (
  task_id        TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
  attempt        BIGINT NOT NULL,
  fence          BIGINT NOT NULL,
  node_id        TEXT NOT NULL,
  leased_at_ms   BIGINT NOT NULL,
  started_at_ms  BIGINT,
  finished_at_ms BIGINT,
  outcome        TEXT NOT NULL DEFAULT '',
  reason         TEXT,
  exit_code      INTEGER,
  error          TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (task_id, attempt)
);
CREATE UNIQUE INDEX task_attempts_by_fence ON task_attempts(task_id, fence);
CREATE TABLE modules (
  name            TEXT NOT NULL,
  version         TEXT NOT NULL,
  reference       TEXT NOT NULL,
  manifest_digest TEXT NOT NULL,
  priority        BIGINT NOT NULL DEFAULT 0,
  trust           TEXT NOT NULL DEFAULT '{}',
  added_at_ms     BIGINT NOT NULL,
  PRIMARY KEY (name, version)
);
CREATE TABLE assignments (
  id             TEXT PRIMARY KEY,
  module_name    TEXT NOT NULL,
  module_version TEXT NOT NULL,
  node_id        TEXT,
  selector       TEXT NOT NULL DEFAULT '{}',
  created_at_ms  BIGINT NOT NULL
);
CREATE TABLE escrow_keys (
  node_id TEXT PRIMARY KEY,
  key     BYTEA NOT NULL
);
)sql"},
    // modules (h-modctl): the module manifest `module add` verified (name, version, digests,
    // dependencies) and whether a node refuses a change that would leave the module out.
    {3, R"sql(
ALTER TABLE modules ADD COLUMN manifest TEXT NOT NULL DEFAULT '';
ALTER TABLE modules ADD COLUMN required BOOLEAN NOT NULL DEFAULT FALSE;
)sql"},
    // tasks (h-taskbatch). Version 4: 3 is the module manifest (h-modctl).
    // Every lease and completion changes `state`, an indexed column, so no such update is HOT:
    // each one writes a new entry into EVERY index of tasks that covers the new row (a partial
    // index only when the row matches it). Ten indexes made that most of a task's cost; keep
    // those a query needs, each as narrow as the query:
    //  - seq needs no unique index (a sequence fills it); the idempotency key only where set;
    //  - the queue in order (tasks_queued, for queued_heads) and a new per-node queue
    //    (tasks_queued_by_node: the lease's two walks, node_id = $1 and node_id IS NULL, as
    //    SQLite's) hold queued rows only;
    //  - tasks_held (open leases by holder) also serves the expiry sweep, which scans open
    //    leases: tasks_leases goes, and extend (it moves only the expiry) becomes HOT;
    //  - by node / by holder keep addressed / leased rows only (task list --node);
    //  - tasks_finished goes: pruning ranks every final task anyway.
    // auth_generation: bumped with every change of authorisation; replicas poll it (store.hpp).
    {4, R"sql(
ALTER TABLE tasks DROP CONSTRAINT tasks_seq_key;
ALTER TABLE tasks DROP CONSTRAINT tasks_idempotency_key_key;
CREATE UNIQUE INDEX tasks_idempotency ON tasks(idempotency_key) WHERE idempotency_key IS NOT NULL;
DROP INDEX tasks_leases;
DROP INDEX tasks_finished;
DROP INDEX tasks_by_node;
DROP INDEX tasks_by_holder;
CREATE INDEX tasks_queued_by_node ON tasks(node_id, seq) WHERE state = 'queued';
CREATE INDEX tasks_by_node ON tasks(node_id, seq) WHERE node_id IS NOT NULL;
CREATE INDEX tasks_by_holder ON tasks(leased_by, seq) WHERE leased_by IS NOT NULL;
INSERT INTO counters (name, value) VALUES ('auth_generation', 0);
)sql"},
    // modules (h-policystore): the signed module trust policy, in the store so that every
    // replica serves the same one (it was <state>/module-policy.json). One row at most.
    {5, R"sql(
CREATE TABLE module_policy (
  id          INTEGER PRIMARY KEY CHECK (id = 1),
  version     BIGINT NOT NULL,
  policy_text TEXT NOT NULL,
  document    TEXT NOT NULL,
  set_at_ms   BIGINT NOT NULL
);
)sql"},
};

// Any number: the key of the advisory lock that serialises migrations across replicas.
constexpr std::int64_t kMigrationLockKey = 0x6361'6972'6e00'0001;  // "cairn\0\0\1"

}  // namespace

int PostgresStore::schema_version() {
  auto conn = pool_.acquire();
  if (!conn) return 0;
  auto v = read_schema_version(**conn);
  return v ? *v : 0;
}

std::unexpected<Error> PostgresStore::db_error(Conn& conn, const PGresult* res, std::string_view sql) {
  std::string why = res != nullptr ? PQresultErrorMessage(res) : "";
  if (why.empty()) why = PQerrorMessage(conn.pg.get());
  while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
  const char* state = res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  const std::string_view sqlstate = state != nullptr ? state : "";
  Errc code = Errc::io;
  if (PQstatus(conn.pg.get()) != CONNECTION_OK) {
    conn.broken = true;
    code = Errc::unavailable;
  } else if (sqlstate == kSerializationFailure || sqlstate == kDeadlockDetected) {
    code = Errc::temporary;
  }
  std::string shown(sql.substr(0, 80));
  std::replace(shown.begin(), shown.end(), '\n', ' ');
  return fail(code, "database " + pool_.shown() + ": '" + shown + "...': " + why,
              "check that PostgreSQL at " + pool_.shown() + " is up and reachable");
}

Status PostgresStore::simple(Conn& conn, const char* sql) {
  PgResultPtr res(PQexec(conn.pg.get(), sql));
  const auto st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return fail(db_error(conn, res.get(), sql).error());
  return {};
}

Result<Prepared*> PostgresStore::prepare(Conn& conn, const std::string& sql, std::int64_t replan_after) {
  const std::string name = "s" + std::to_string(++conn.names);
  PgResultPtr res(PQprepare(conn.pg.get(), name.c_str(), sql.c_str(), 0, nullptr));
  if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) return fail(db_error(conn, res.get(), sql).error());
  return &(conn.prepared[sql] = Prepared{name, 0, replan_after});
}

Result<Rows> PostgresStore::exec(Conn& conn, const std::string& sql, const Params& params) {
  Prepared* stmt = nullptr;
  if (auto it = conn.prepared.find(sql); it == conn.prepared.end()) {
    auto prepared = prepare(conn, sql, Conn::kFirstReplan);
    if (!prepared) return fail(prepared.error());
    stmt = *prepared;
  } else if (it->second.runs >= it->second.replan_after) {
    // Time for a fresh plan (see Conn): the old statement goes, the new one gets a new name.
    const std::string deallocate = "DEALLOCATE " + it->second.name;
    if (auto ok = simple(conn, deallocate.c_str()); !ok) return fail(ok.error());
    auto prepared = prepare(conn, sql, std::min(it->second.replan_after * 4, Conn::kMaxReplan));
    if (!prepared) return fail(prepared.error());
    stmt = *prepared;
  } else {
    stmt = &it->second;
  }
  ++stmt->runs;
  const auto values = params.pointers();
  PgResultPtr res(PQexecPrepared(conn.pg.get(), stmt->name.c_str(), params.size(), values.data(), nullptr,
                                 nullptr, 0));
  const auto st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return fail(db_error(conn, res.get(), sql).error());
  return Rows(std::move(res));
}

Result<Rows> PostgresStore::run(const std::string& sql, const Params& params) {
  auto conn = pool_.acquire();
  if (!conn) return fail(conn.error());
  return exec(**conn, sql, params);
}

Result<Rows> PostgresStore::run_retrying(const std::string& sql, const Params& params) {
  for (int attempt = 0;; ++attempt) {
    auto rows = run(sql, params);
    if (rows || rows.error().code != Errc::temporary || attempt == 4) return rows;
  }
}

Status PostgresStore::run_status(const std::string& sql, const Params& params) {
  auto rows = run(sql, params);
  if (!rows) return fail(rows.error());
  return {};
}

Result<int> PostgresStore::read_schema_version(Conn& conn) {
  auto rows = exec(conn, "SELECT COALESCE(MAX(version), 0) FROM schema_version", Params());
  if (!rows) return fail(rows.error());
  return static_cast<int>(rows->int64(0, 0));
}

Status PostgresStore::migrate() {
  auto conn = pool_.acquire();
  if (!conn) return fail(conn.error());
  for (const auto& m : kMigrations) {
    if (auto ok = simple(**conn, "BEGIN"); !ok) return ok;
    // Replicas starting at once wait here for each other: one applies, the others see it.
    auto step = [&]() -> Result<bool> {
      if (auto ok = exec(**conn, "SELECT pg_advisory_xact_lock($1::bigint)", Params().add(kMigrationLockKey)); !ok) {
        return fail(ok.error());
      }
      if (auto ok = simple(**conn,
                           "CREATE TABLE IF NOT EXISTS schema_version ("
                           " version INTEGER PRIMARY KEY, applied_at_ms BIGINT NOT NULL)");
          !ok) {
        return fail(ok.error());
      }
      auto current = read_schema_version(**conn);
      if (!current) return fail(current.error());
      if (*current >= m.version) return false;
      if (auto ok = simple(**conn, m.sql); !ok) {
        return fail(ok.error().with_context("schema migration " + std::to_string(m.version)));
      }
      if (auto ok = exec(**conn,
                         "INSERT INTO schema_version (version, applied_at_ms) VALUES ($1::integer, "
                         "(extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
                         Params().add(m.version));
          !ok) {
        return fail(ok.error());
      }
      return true;
    }();
    if (!step) {
      (void)simple(**conn, "ROLLBACK");
      return fail(step.error());
    }
    if (auto ok = simple(**conn, "COMMIT"); !ok) return ok;
  }
  const int newest = kMigrations[std::size(kMigrations) - 1].version;
  auto current = read_schema_version(**conn);
  if (!current) return fail(current.error());
  if (*current > newest) {
    return fail(Errc::config,
                "database " + pool_.shown() + " has schema version " + std::to_string(*current) +
                    ", newer than this cairn-control knows (" + std::to_string(newest) + ")",
                "run the cairn-control release that wrote it, or a newer one");
  }
  return {};
}

}  // namespace cairn::control::postgres_internal
