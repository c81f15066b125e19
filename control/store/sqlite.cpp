// The SQLite backend of Store: the only file that includes sqlite3.h (STYLE.md 3).
#include "control/store/sqlite.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "common/json.hpp"

namespace cairn::control {
namespace {

struct DbCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

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
};

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

std::string strings_text(const std::vector<std::string>& list) { return dump_json(Json(list)); }

std::vector<std::string> strings_from(const std::string& text) {
  std::vector<std::string> out;
  auto j = parse_json(text, "stored list");
  if (!j || !j->is_array()) return out;
  for (const auto& v : *j) {
    if (v.is_string()) out.push_back(v.get<std::string>());
  }
  return out;
}

std::string modules_text(const std::vector<protocol::ModuleRef>& modules) {
  Json out = Json::array();
  for (const auto& m : modules) {
    out.push_back({{"name", m.name}, {"digest", m.digest}, {"mounted", m.mounted}});
  }
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

// One use of a cached prepared statement: binds, steps, reads columns, and resets the
// statement when it goes out of scope so no read transaction is left open (which would hold
// back WAL checkpoints).
class Query {
 public:
  Query(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  Query(Query&& other) noexcept
      : db_(other.db_), stmt_(std::exchange(other.stmt_, nullptr)), bind_rc_(other.bind_rc_) {}
  Query(const Query&) = delete;
  Query& operator=(const Query&) = delete;
  Query& operator=(Query&&) = delete;
  ~Query() {
    if (stmt_ != nullptr) {
      sqlite3_reset(stmt_);
      sqlite3_clear_bindings(stmt_);
    }
  }

  Query& bind(int i, std::int64_t v) { return check(sqlite3_bind_int64(stmt_, i, v)); }
  Query& bind(int i, double v) { return check(sqlite3_bind_double(stmt_, i, v)); }
  Query& bind(int i, std::string_view v) {
    return check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
  }
  Query& bind(int i, const std::optional<std::string>& v) {
    return v ? bind(i, std::string_view(*v)) : check(sqlite3_bind_null(stmt_, i));
  }
  Query& bind(int i, const std::optional<std::int64_t>& v) {
    return v ? bind(i, *v) : check(sqlite3_bind_null(stmt_, i));
  }

  // true: a row is ready to read; false: done.
  Result<bool> step() {
    if (bind_rc_ != SQLITE_OK) return error("bind", bind_rc_);
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return error("step", rc);
  }
  // Runs a statement that returns no rows.
  Status run() {
    auto r = step();
    if (!r) return fail(r.error());
    return {};
  }

  [[nodiscard]] std::int64_t int64(int col) const { return sqlite3_column_int64(stmt_, col); }
  [[nodiscard]] double real(int col) const { return sqlite3_column_double(stmt_, col); }
  [[nodiscard]] bool is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  [[nodiscard]] std::string text(int col) const {
    const auto* p = sqlite3_column_text(stmt_, col);
    if (p == nullptr) return {};
    return std::string(reinterpret_cast<const char*>(p),
                       static_cast<std::size_t>(sqlite3_column_bytes(stmt_, col)));
  }
  [[nodiscard]] std::optional<std::int64_t> opt_int64(int col) const {
    if (is_null(col)) return std::nullopt;
    return int64(col);
  }

 private:
  Query& check(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
    return *this;
  }
  std::unexpected<Error> error(const char* what, int rc) const {
    return fail(Errc::io,
                std::string("database ") + what + " '" + sqlite3_sql(stmt_) + "': " +
                    sqlite3_errstr(rc) + " (" + sqlite3_errmsg(db_) + ")",
                "check the disk and the permissions of the state dir");
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  int bind_rc_ = SQLITE_OK;
};

constexpr const char* kNodeColumns = R"sql(
  n.id, n.identity, n.labels, n.first_enrolled_at_ms, n.enrolled_at_ms, n.enroll_count,
  n.revoked_at_ms,
  (SELECT MAX(c.not_after_ms) FROM certificates c WHERE c.node_id = n.id AND c.status = 'active'),
  s.last_seen_ms, s.boot_id, s.agent_version, s.mount_state, s.load1, s.load5, s.load15,
  s.cpu_count, s.mem_total_bytes, s.mem_available_bytes, s.disk_total_bytes, s.disk_free_bytes,
  s.uptime_s, s.cert_not_after, s.modules, s.labels, s.heartbeats, s.critical_events_total,
  n.reenroll_allowed_until_ms, s.capabilities
FROM nodes n LEFT JOIN node_status s ON s.node_id = n.id)sql";

NodeRecord node_from(const Query& q) {
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

TokenRecord token_from(const Query& q) {
  TokenRecord t;
  t.id = q.text(0);
  t.hash = q.text(1);
  t.created_at_ms = q.int64(2);
  t.expires_at_ms = q.int64(3);
  t.uses = q.int64(4);
  t.max_uses = q.int64(5);
  t.labels = labels_from(q.text(6));
  if (!q.is_null(7)) t.expect_id = q.text(7);
  t.revoked = q.int64(8) != 0;
  return t;
}
constexpr const char* kTokenColumns =
    "id, hash, created_at_ms, expires_at_ms, uses, max_uses, labels, expect_id, revoked";

CertRecord cert_from(const Query& q) {
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
  if (!q.is_null(10)) c.replaced_by = q.text(10);
  return c;
}
constexpr const char* kCertColumns =
    "serial, node_id, fingerprint, not_before_ms, not_after_ms, issued_at_ms, reason, status, "
    "retire_at_ms, public_key, replaced_by";

AdminCertRecord admin_from(const Query& q) {
  return {q.text(0), q.text(1), q.text(2), q.int64(3), q.int64(4), q.opt_int64(5)};
}
constexpr const char* kAdminColumns =
    "serial, name, fingerprint, issued_at_ms, not_after_ms, revoked_at_ms";

constexpr const char* kEventColumns =
    "node_id, event_id, severity, kind, message, time, received_at_ms, seq";
NodeEventRecord event_from(const Query& q) {
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

std::optional<std::int64_t> opt_wide(const std::optional<int>& v) {
  if (!v) return std::nullopt;
  return std::int64_t{*v};
}

constexpr const char* kFinal = "('succeeded', 'failed', 'dead', 'cancelled')";
// A task (aliased t) that is the oldest unfinished one of its serial key, or has none.
constexpr const char* kSerialHead =
    "(t.serial_key IS NULL OR NOT EXISTS (SELECT 1 FROM tasks o WHERE o.serial_key = t.serial_key "
    "AND o.seq < t.seq AND o.state IN ('queued', 'leased', 'running')))";

// Column 30 is the output: the real one for find_task, '' for lists.
constexpr const char* kTaskColumns =
    "seq, id, kind, args, node_id, selector, capabilities, min_cpu_millis, min_mem_bytes, "
    "min_disk_bytes, timeout_s, max_attempts, serial_key, idempotency_key, state, attempts, fence, "
    "leased_by, lease_expires_ms, not_before_ms, cancel_requested, created_at_ms, updated_at_ms, "
    "started_at_ms, finished_at_ms, exit_code, last_reason, last_error, output_truncated, output_bytes";

TaskRecord task_from(const Query& q) {
  TaskRecord t;
  t.seq = q.int64(0);
  t.id = q.text(1);
  t.kind = q.text(2);
  t.args_json = q.text(3);
  if (!q.is_null(4)) t.node_id = q.text(4);
  t.selector = labels_from(q.text(5));
  t.capabilities = strings_from(q.text(6));
  t.min = {q.int64(7), q.int64(8), q.int64(9)};
  t.timeout_s = q.int64(10);
  t.max_attempts = q.int64(11);
  if (!q.is_null(12)) t.serial_key = q.text(12);
  if (!q.is_null(13)) t.idempotency_key = q.text(13);
  t.state = protocol::task_state_from(q.text(14)).value_or(protocol::TaskState::failed);
  t.attempts = q.int64(15);
  t.fence = q.int64(16);
  if (!q.is_null(17)) t.leased_by = q.text(17);
  t.lease_expires_ms = q.opt_int64(18);
  t.not_before_ms = q.int64(19);
  t.cancel_requested = q.int64(20) != 0;
  t.created_at_ms = q.int64(21);
  t.updated_at_ms = q.int64(22);
  t.started_at_ms = q.opt_int64(23);
  t.finished_at_ms = q.opt_int64(24);
  if (!q.is_null(25)) t.exit_code = static_cast<int>(q.int64(25));
  if (!q.is_null(26)) t.last_reason = protocol::failure_reason_from(q.text(26));
  t.last_error = q.text(27);
  t.output_truncated = q.int64(28) != 0;
  t.output_bytes = q.int64(29);
  t.output = q.text(30);
  return t;
}

TaskAttemptRecord attempt_from(const Query& q) {
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
constexpr const char* kAttemptColumns =
    "task_id, attempt, fence, node_id, leased_at_ms, started_at_ms, finished_at_ms, outcome, reason, "
    "exit_code, error";

// Placement checked in memory after SQL narrowed the rows (node id, state, serial key):
// the selector against the node's labels, and the capabilities the task needs.
bool placement_matches(const TaskRecord& t, const LeaseQuery& node) {
  for (const auto& [key, value] : t.selector) {
    auto it = node.labels.find(key);
    if (it == node.labels.end() || it->second != value) return false;
  }
  for (const auto& cap : t.capabilities) {
    if (std::find(node.capabilities.begin(), node.capabilities.end(), cap) == node.capabilities.end()) {
      return false;
    }
  }
  return true;
}

bool fits(const TaskResources& used, const TaskResources& want, const TaskResources& budget) {
  return used.cpu_millis + want.cpu_millis <= budget.cpu_millis &&
         used.mem_bytes + want.mem_bytes <= budget.mem_bytes &&
         used.disk_bytes + want.disk_bytes <= budget.disk_bytes;
}

void add(TaskResources& sum, const TaskResources& more) {
  sum.cpu_millis += more.cpu_millis;
  sum.mem_bytes += more.mem_bytes;
  sum.disk_bytes += more.disk_bytes;
}

class SqliteStore final : public Store {
 public:
  Status open(const std::filesystem::path& file) {
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

  int schema_version() override {
    std::lock_guard lock(mutex_);
    return read_schema_version().value_or(0);
  }

  Status insert_token(const TokenRecord& t) override {
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

  Result<std::optional<TokenRecord>> find_token_by_hash(std::string_view hash) override {
    std::lock_guard lock(mutex_);
    auto q = query(std::string("SELECT ") + kTokenColumns + " FROM tokens WHERE hash = ?1");
    if (!q) return fail(q.error());
    q->bind(1, hash);
    auto row = q->step();
    if (!row) return fail(row.error());
    if (!*row) return std::optional<TokenRecord>{};
    return std::optional<TokenRecord>(token_from(*q));
  }

  Result<std::vector<TokenRecord>> list_tokens() override {
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

  Result<bool> revoke_token(std::string_view id) override {
    std::lock_guard lock(mutex_);
    auto q = query("UPDATE tokens SET revoked = 1 WHERE id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, id);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    return sqlite3_changes(db_.get()) > 0;
  }

  Result<EnrollmentOutcome> commit_enrollment(const EnrollmentCommit& c) override {
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

  Result<std::int64_t> enrollments_total() override {
    std::lock_guard lock(mutex_);
    auto q = query("SELECT value FROM counters WHERE name = 'enrollments'");
    if (!q) return fail(q.error());
    auto row = q->step();
    if (!row) return fail(row.error());
    return *row ? q->int64(0) : 0;
  }

  Result<RotationOutcome> commit_rotation(std::string_view old_serial, const CertRecord& fresh) override {
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

  Status confirm_rotation(std::string_view new_serial, std::int64_t retire_at_ms) override {
    std::lock_guard lock(mutex_);
    auto q = query("UPDATE certificates SET retire_at_ms = ?2 WHERE replaced_by = ?1 AND retire_at_ms IS NULL");
    if (!q) return fail(q.error());
    q->bind(1, new_serial).bind(2, retire_at_ms);
    if (auto ok = q->run(); !ok) return ok;
    if (sqlite3_changes(db_.get()) == 0) return {};
    return bump_auth_locked();
  }

  Result<std::vector<CertRecord>> list_certificates(std::string_view node_id) override {
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

  Result<std::optional<NodeRecord>> find_node(std::string_view id) override {
    std::lock_guard lock(mutex_);
    auto q = query(std::string("SELECT ") + kNodeColumns + " WHERE n.id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, id);
    auto row = q->step();
    if (!row) return fail(row.error());
    if (!*row) return std::optional<NodeRecord>{};
    return std::optional<NodeRecord>(node_from(*q));
  }

  Result<std::vector<NodeRecord>> list_nodes() override {
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

  Result<bool> revoke_node(std::string_view id, std::int64_t now_ms) override {
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

  Result<bool> allow_reenroll(std::string_view id, std::int64_t until_ms) override {
    std::lock_guard lock(mutex_);
    auto q = query(
        "UPDATE nodes SET reenroll_allowed_until_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL");
    if (!q) return fail(q.error());
    q->bind(1, id).bind(2, until_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    return sqlite3_changes(db_.get()) > 0;
  }

  Result<std::vector<NodeEventRecord>> recent_events(std::string_view node_id) override {
    std::lock_guard lock(mutex_);
    auto q = query(std::string("SELECT ") + kEventColumns +
                   " FROM node_events WHERE node_id = ?1 ORDER BY rowid DESC");
    if (!q) return fail(q.error());
    q->bind(1, node_id);
    return collect(*q, event_from);
  }

  Result<std::vector<NodeEventRecord>> list_events(const EventQuery& query_spec) override {
    std::lock_guard lock(mutex_);
    // The newest `limit` matching events, returned oldest first.
    if (query_spec.after_seq) {
      // A follower's next page: the oldest events after its cursor, in the order stored.
      auto q = query(std::string("SELECT ") + kEventColumns +
                     " FROM node_events WHERE seq > ?4 AND (?1 IS NULL OR node_id = ?1) AND "
                     "received_at_ms >= ?2 ORDER BY seq LIMIT ?3");
      if (!q) return fail(q.error());
      q->bind(1, query_spec.node_id).bind(2, query_spec.since_ms).bind(3, query_spec.limit);
      q->bind(4, *query_spec.after_seq);
      return collect(*q, event_from);
    }
    auto q = query(std::string("SELECT ") + kEventColumns + " FROM (SELECT rowid AS r, " + kEventColumns +
                   " FROM node_events WHERE (?1 IS NULL OR node_id = ?1) AND received_at_ms >= ?2 "
                   "ORDER BY received_at_ms DESC, rowid DESC LIMIT ?3) ORDER BY received_at_ms, r");
    if (!q) return fail(q.error());
    q->bind(1, query_spec.node_id).bind(2, query_spec.since_ms).bind(3, query_spec.limit);
    return collect(*q, event_from);
  }

  Result<std::int64_t> insert_events(std::span<const NodeEventRecord> events) override {
    std::lock_guard lock(mutex_);
    auto tx = begin();
    if (!tx) return fail(tx.error());
    std::int64_t stored = 0;
    for (const auto& e : events) {
      auto inserted = insert_event_locked(e);
      if (!inserted) return fail(inserted.error());
      if (*inserted) {
        ++stored;
        if (auto ok = prune_events_locked(e.node_id); !ok) return fail(ok.error());
      }
    }
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
    return stored;
  }

  Status insert_admin_cert(const AdminCertRecord& a) override {
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

  Result<std::vector<AdminCertRecord>> list_admin_certs() override {
    std::lock_guard lock(mutex_);
    auto q = query(std::string("SELECT ") + kAdminColumns +
                   " FROM admin_certificates ORDER BY name, issued_at_ms, serial");
    if (!q) return fail(q.error());
    return collect(*q, admin_from);
  }

  Result<std::int64_t> revoke_admin(std::string_view name, std::int64_t now_ms) override {
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

  Result<std::map<std::string, std::int64_t>> count_tasks() override {
    std::lock_guard lock(mutex_);
    auto q = query("SELECT state, COUNT(*) FROM tasks GROUP BY state");
    if (!q) return fail(q.error());
    std::map<std::string, std::int64_t> out;
    for (auto s : {"queued", "leased", "running", "succeeded", "failed", "dead", "cancelled"}) out[s] = 0;
    for (;;) {
      auto row = q->step();
      if (!row) return fail(row.error());
      if (!*row) break;
      out[q->text(0)] = q->int64(1);
    }
    return out;
  }

  Result<std::int64_t> auth_generation() override {
    std::lock_guard lock(mutex_);
    auto q = query("SELECT value FROM counters WHERE name = 'auth_generation'");
    if (!q) return fail(q.error());
    auto row = q->step();
    if (!row) return fail(row.error());
    return *row ? q->int64(0) : 0;
  }

  Result<std::vector<Status>> write_heartbeats(std::span<const HeartbeatRecord> batch) override {
    std::lock_guard lock(mutex_);
    std::vector<Status> results;
    results.reserve(batch.size());
    auto tx = begin();
    if (!tx) return fail(tx.error());
    for (const auto& hb : batch) results.push_back(write_one_heartbeat(hb));
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
    return results;
  }

  Result<AuthSnapshot> load_auth_snapshot(std::int64_t now_ms) override {
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

  // ---- tasks (issue 13) ----
  Result<SubmitOutcome> submit_task(const TaskRecord& t) override {
    std::lock_guard lock(mutex_);
    auto tx = begin();
    if (!tx) return fail(tx.error());
    auto out = submit_locked(t);
    if (!out) return fail(out.error());
    if (out->created) {
      if (auto ok = tx->commit(); !ok) return fail(ok.error());
    }
    return out;
  }

  Result<std::vector<SubmitOutcome>> submit_tasks(std::span<const TaskRecord> tasks) override {
    std::lock_guard lock(mutex_);
    std::vector<SubmitOutcome> out;
    if (tasks.empty()) return out;
    out.reserve(tasks.size());
    auto tx = begin();
    if (!tx) return fail(tx.error());
    for (const auto& t : tasks) {
      auto one = submit_locked(t);
      if (!one) return fail(one.error().with_context("task " + t.id + " of a batch of " + std::to_string(tasks.size())));
      out.push_back(std::move(*one));
    }
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
    return out;
  }

  // Inside the caller's transaction.
  Result<SubmitOutcome> submit_locked(const TaskRecord& t) {
    if (t.idempotency_key) {
      auto existing = select_task_locked("idempotency_key = ?1", *t.idempotency_key, true);
      if (!existing) return fail(existing.error());
      if (*existing) return SubmitOutcome{std::move(**existing), false};
    }
    auto q = query(
        "INSERT INTO tasks (id, kind, args, node_id, selector, capabilities, min_cpu_millis, "
        "min_mem_bytes, min_disk_bytes, timeout_s, max_attempts, serial_key, idempotency_key, state, "
        "not_before_ms, created_at_ms, updated_at_ms) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'queued', ?14, ?15, ?15)");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(t.id)).bind(2, std::string_view(t.kind)).bind(3, std::string_view(t.args_json));
    q->bind(4, t.node_id).bind(5, std::string_view(labels_text(t.selector)));
    q->bind(6, std::string_view(strings_text(t.capabilities)));
    q->bind(7, t.min.cpu_millis).bind(8, t.min.mem_bytes).bind(9, t.min.disk_bytes);
    q->bind(10, t.timeout_s).bind(11, t.max_attempts).bind(12, t.serial_key).bind(13, t.idempotency_key);
    q->bind(14, t.not_before_ms).bind(15, t.created_at_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    // What was stored: the given fields, the new seq (the rowid) and every other column's default.
    TaskRecord stored;
    stored.id = t.id;
    stored.seq = sqlite3_last_insert_rowid(db_.get());
    stored.kind = t.kind;
    stored.args_json = t.args_json;
    stored.node_id = t.node_id;
    stored.selector = t.selector;
    stored.capabilities = t.capabilities;
    stored.min = t.min;
    stored.timeout_s = t.timeout_s;
    stored.max_attempts = t.max_attempts;
    stored.serial_key = t.serial_key;
    stored.idempotency_key = t.idempotency_key;
    stored.state = protocol::TaskState::queued;
    stored.not_before_ms = t.not_before_ms;
    stored.created_at_ms = t.created_at_ms;
    stored.updated_at_ms = t.created_at_ms;
    return SubmitOutcome{std::move(stored), true};
  }

  Result<std::optional<TaskRecord>> find_task(std::string_view id) override {
    std::lock_guard lock(mutex_);
    return select_task_locked("id = ?1", id, true);
  }

  Result<std::vector<TaskRecord>> list_tasks(const TaskQuery& spec) override {
    std::lock_guard lock(mutex_);
    // Two forms: `node_id = ?2 OR leased_by = ?2` alone lets SQLite search both indexes.
    auto q = query(std::string("SELECT ") + kTaskColumns + ", '' FROM tasks WHERE (?1 IS NULL OR state = ?1) AND " +
                   (spec.node_id ? "(node_id = ?2 OR leased_by = ?2)" : "?2 IS NULL") + " ORDER BY seq DESC LIMIT ?3");
    if (!q) return fail(q.error());
    std::optional<std::string> state;
    if (spec.state) state = std::string(protocol::task_state_name(*spec.state));
    q->bind(1, state).bind(2, spec.node_id).bind(3, spec.limit);
    return collect(*q, task_from);
  }

  Result<std::vector<TaskAttemptRecord>> list_task_attempts(std::string_view task_id) override {
    std::lock_guard lock(mutex_);
    auto q = query(std::string("SELECT ") + kAttemptColumns + " FROM task_attempts WHERE task_id = ?1 ORDER BY attempt");
    if (!q) return fail(q.error());
    q->bind(1, task_id);
    return collect(*q, attempt_from);
  }

  Result<std::vector<TaskRecord>> lease_tasks(const LeaseQuery& lq) override {
    std::lock_guard lock(mutex_);
    auto tx = begin();
    if (!tx) return fail(tx.error());
    auto picked = pick_locked(lq, lq.max_tasks);
    if (!picked) return fail(picked.error());
    std::vector<TaskRecord> out;
    for (const auto& id : *picked) {
      {
        auto q = query(
            "UPDATE tasks SET state = 'leased', leased_by = ?2, fence = fence + 1, attempts = attempts + 1, "
            "lease_expires_ms = ?3, updated_at_ms = ?4, started_at_ms = NULL WHERE id = ?1 AND state = 'queued'");
        if (!q) return fail(q.error());
        q->bind(1, std::string_view(id)).bind(2, std::string_view(lq.node_id)).bind(3, lq.now_ms + lq.lease_ms);
        q->bind(4, lq.now_ms);
        if (auto ok = q->run(); !ok) return fail(ok.error());
      }
      {
        auto q = query(
            "INSERT INTO task_attempts (task_id, attempt, fence, node_id, leased_at_ms) "
            "SELECT id, attempts, fence, leased_by, ?2 FROM tasks WHERE id = ?1");
        if (!q) return fail(q.error());
        q->bind(1, std::string_view(id)).bind(2, lq.now_ms);
        if (auto ok = q->run(); !ok) return fail(ok.error());
      }
      auto task = select_task_locked("id = ?1", id, false);
      if (!task) return fail(task.error());
      if (*task) out.push_back(std::move(**task));
    }
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
    return out;
  }

  Result<bool> has_work(const LeaseQuery& lq) override {
    std::lock_guard lock(mutex_);
    auto picked = pick_locked(lq, 1);
    if (!picked) return fail(picked.error());
    return !picked->empty();
  }

  Result<std::vector<TaskRecord>> queued_heads(std::int64_t limit) override {
    std::lock_guard lock(mutex_);
    auto q = query(std::string("SELECT ") + kTaskColumns + ", '' FROM tasks t WHERE state = 'queued' AND " +
                   kSerialHead + " ORDER BY seq LIMIT ?1");
    if (!q) return fail(q.error());
    q->bind(1, limit);
    return collect(*q, task_from);
  }

  Result<ExtendOutcome> extend_lease(std::string_view task_id, std::string_view node_id, std::int64_t fence,
                                     std::int64_t lease_ms, std::int64_t now_ms, bool running) override {
    std::lock_guard lock(mutex_);
    auto tx = begin();
    if (!tx) return fail(tx.error());
    auto t = select_task_locked("id = ?1", task_id, false);
    if (!t) return fail(t.error());
    if (!*t) return ExtendOutcome{FenceCheck::not_found, false};
    const TaskRecord& task = **t;
    if (task.fence != fence || task.leased_by != std::optional<std::string>(node_id)) {
      return ExtendOutcome{FenceCheck::stale, task.cancel_requested};
    }
    if (protocol::task_state_final(task.state)) return ExtendOutcome{FenceCheck::finished, task.cancel_requested};
    if (task.state == protocol::TaskState::queued || task.lease_expires_ms.value_or(0) <= now_ms) {
      return ExtendOutcome{FenceCheck::stale, task.cancel_requested};
    }
    const bool starts = running && task.state == protocol::TaskState::leased;
    {
      auto q = query(
          "UPDATE tasks SET lease_expires_ms = ?2, updated_at_ms = ?3, "
          "state = CASE WHEN ?4 THEN 'running' ELSE state END, "
          "started_at_ms = CASE WHEN ?4 THEN ?3 ELSE started_at_ms END WHERE id = ?1");
      if (!q) return fail(q.error());
      q->bind(1, task_id).bind(2, now_ms + lease_ms).bind(3, now_ms).bind(4, std::int64_t{starts ? 1 : 0});
      if (auto ok = q->run(); !ok) return fail(ok.error());
    }
    if (starts) {
      auto q = query("UPDATE task_attempts SET started_at_ms = ?3 WHERE task_id = ?1 AND fence = ?2");
      if (!q) return fail(q.error());
      q->bind(1, task_id).bind(2, fence).bind(3, now_ms);
      if (auto ok = q->run(); !ok) return fail(ok.error());
    }
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
    return ExtendOutcome{FenceCheck::ok, task.cancel_requested};
  }

  Result<CompleteOutcome> complete_task(const TaskCompletion& c) override {
    std::lock_guard lock(mutex_);
    auto tx = begin();
    if (!tx) return fail(tx.error());
    auto out = complete_locked(c);
    if (!out) return fail(out.error());
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
    return out;
  }

  Result<std::vector<CompleteOutcome>> complete_tasks(std::span<const TaskCompletion> completions) override {
    std::lock_guard lock(mutex_);
    std::vector<CompleteOutcome> out;
    if (completions.empty()) return out;
    out.reserve(completions.size());
    auto tx = begin();
    if (!tx) return fail(tx.error());
    for (const auto& c : completions) {
      auto one = complete_locked(c);
      if (!one) {
        return fail(one.error().with_context("completion of task " + c.task_id + " in a batch of " +
                                             std::to_string(completions.size())));
      }
      out.push_back(*one);
    }
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
    return out;
  }

  // Inside the caller's transaction: an outcome other than ok changes nothing.
  Result<CompleteOutcome> complete_locked(const TaskCompletion& c) {
    using protocol::TaskState;
    auto t = select_task_locked("id = ?1", c.task_id, false);
    if (!t) return fail(t.error());
    if (!*t) return CompleteOutcome{FenceCheck::not_found, TaskState::queued};
    const TaskRecord& task = **t;
    // The attempt this fence names: its outcome, if already reported, decides a repeat.
    std::optional<TaskAttemptRecord> attempt;
    {
      auto q = query(std::string("SELECT ") + kAttemptColumns + " FROM task_attempts WHERE task_id = ?1 AND fence = ?2");
      if (!q) return fail(q.error());
      q->bind(1, std::string_view(c.task_id)).bind(2, c.fence);
      auto row = q->step();
      if (!row) return fail(row.error());
      if (*row) attempt = attempt_from(*q);
    }
    if (!attempt || attempt->node_id != c.node_id) return CompleteOutcome{FenceCheck::stale, task.state};
    if (!attempt->outcome.empty()) {
      if (attempt->outcome == c.outcome) return CompleteOutcome{FenceCheck::ok, task.state, true};  // a repeat
      if (attempt->outcome == "lease_lost") return CompleteOutcome{FenceCheck::stale, task.state};
      return CompleteOutcome{FenceCheck::finished, task.state};
    }
    if (task.fence != c.fence || task.leased_by != c.node_id ||
        (task.state != TaskState::leased && task.state != TaskState::running)) {
      return CompleteOutcome{FenceCheck::stale, task.state};
    }
    // The lease may have run out without the sweep noticing yet: the fence is still current
    // and nobody else holds the task, so the result is taken rather than run again.
    TaskState next = TaskState::failed;
    std::optional<protocol::FailureReason> reason = c.reason;
    if (c.outcome == "succeeded") {
      next = TaskState::succeeded;
      reason.reset();
    } else if (c.outcome == "cancelled" || task.cancel_requested) {
      next = TaskState::cancelled;
    } else {
      if (!reason) reason = protocol::FailureReason::internal;
      if (!protocol::failure_transient(*reason)) {
        next = TaskState::failed;
      } else {
        next = task.attempts < task.max_attempts ? TaskState::queued : TaskState::dead;
      }
    }
    std::optional<std::string> reason_text;
    if (reason) reason_text = std::string(protocol::failure_reason_name(*reason));
    {
      auto q = query(
          "UPDATE task_attempts SET finished_at_ms = ?3, outcome = ?4, reason = ?5, exit_code = ?6, error = ?7 "
          "WHERE task_id = ?1 AND fence = ?2");
      if (!q) return fail(q.error());
      q->bind(1, std::string_view(c.task_id)).bind(2, c.fence).bind(3, c.now_ms).bind(4, std::string_view(c.outcome));
      q->bind(5, reason_text).bind(6, opt_wide(c.exit_code)).bind(7, std::string_view(c.error));
      if (auto ok = q->run(); !ok) return fail(ok.error());
    }
    {
      const bool requeue = next == TaskState::queued;
      auto q = query(
          "UPDATE tasks SET state = ?2, updated_at_ms = ?3, exit_code = ?4, last_reason = ?5, last_error = ?6, "
          "output = ?7, output_truncated = ?8, output_bytes = ?9, "
          "leased_by = CASE WHEN ?10 THEN NULL ELSE leased_by END, lease_expires_ms = NULL, "
          "not_before_ms = CASE WHEN ?10 THEN ?11 ELSE not_before_ms END, "
          "finished_at_ms = CASE WHEN ?10 THEN NULL ELSE ?3 END WHERE id = ?1");
      if (!q) return fail(q.error());
      q->bind(1, std::string_view(c.task_id)).bind(2, protocol::task_state_name(next)).bind(3, c.now_ms);
      q->bind(4, opt_wide(c.exit_code)).bind(5, reason_text).bind(6, std::string_view(c.error));
      q->bind(7, std::string_view(c.output)).bind(8, std::int64_t{c.output_truncated ? 1 : 0});
      q->bind(9, c.output_bytes).bind(10, std::int64_t{requeue ? 1 : 0}).bind(11, c.retry_not_before_ms);
      if (auto ok = q->run(); !ok) return fail(ok.error());
    }
    return CompleteOutcome{FenceCheck::ok, next};
  }

  Result<std::vector<TaskRecord>> expire_leases(std::int64_t now_ms,
                                                const std::function<std::int64_t(std::int64_t)>& backoff_ms) override {
    using protocol::TaskState;
    std::lock_guard lock(mutex_);
    auto tx = begin();
    if (!tx) return fail(tx.error());
    std::vector<TaskRecord> expired;
    {
      auto q = query(std::string("SELECT ") + kTaskColumns +
                     ", '' FROM tasks INDEXED BY tasks_open WHERE lease_expires_ms <= ?1 "
                     "AND state IN ('leased', 'running') ORDER BY seq");
      if (!q) return fail(q.error());
      q->bind(1, now_ms);
      auto rows = collect(*q, task_from);
      if (!rows) return fail(rows.error());
      expired = std::move(*rows);
    }
    for (auto& t : expired) {
      {
        auto q = query(
            "UPDATE task_attempts SET finished_at_ms = ?3, outcome = 'lease_lost', reason = 'lease_lost', "
            "error = ?4 WHERE task_id = ?1 AND fence = ?2 AND outcome = ''");
        if (!q) return fail(q.error());
        q->bind(1, std::string_view(t.id)).bind(2, t.fence).bind(3, now_ms);
        q->bind(4, std::string_view("the lease of node " + t.leased_by.value_or("?") + " expired"));
        if (auto ok = q->run(); !ok) return fail(ok.error());
      }
      const std::string error = "attempt " + std::to_string(t.attempts) + ": the lease of node " +
                                t.leased_by.value_or("?") + " expired before it completed";
      if (t.cancel_requested) {
        t.state = TaskState::cancelled;
      } else if (t.attempts >= t.max_attempts) {
        t.state = TaskState::dead;
      } else {
        t.state = TaskState::queued;
        t.not_before_ms = now_ms + backoff_ms(t.attempts);
      }
      const bool requeue = t.state == TaskState::queued;
      auto q = query(
          "UPDATE tasks SET state = ?2, updated_at_ms = ?3, last_reason = 'lease_lost', last_error = ?4, "
          "exit_code = NULL, lease_expires_ms = NULL, leased_by = CASE WHEN ?5 THEN NULL ELSE leased_by END, "
          "not_before_ms = ?6, finished_at_ms = CASE WHEN ?5 THEN NULL ELSE ?3 END WHERE id = ?1");
      if (!q) return fail(q.error());
      q->bind(1, std::string_view(t.id)).bind(2, protocol::task_state_name(t.state)).bind(3, now_ms);
      q->bind(4, std::string_view(error)).bind(5, std::int64_t{requeue ? 1 : 0}).bind(6, t.not_before_ms);
      if (auto ok = q->run(); !ok) return fail(ok.error());
      t.updated_at_ms = now_ms;
      t.last_reason = protocol::FailureReason::lease_lost;
      t.last_error = error;
      t.exit_code.reset();
      t.lease_expires_ms.reset();
      if (requeue) {
        t.leased_by.reset();
      } else {
        t.finished_at_ms = now_ms;
      }
    }
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
    return expired;
  }

  Result<CancelOutcome> cancel_task(std::string_view task_id, std::int64_t now_ms) override {
    using protocol::TaskState;
    std::lock_guard lock(mutex_);
    auto tx = begin();
    if (!tx) return fail(tx.error());
    auto t = select_task_locked("id = ?1", task_id, false);
    if (!t) return fail(t.error());
    if (!*t) return CancelOutcome::not_found;
    if (protocol::task_state_final((*t)->state)) return CancelOutcome::already_final;
    const bool queued = (*t)->state == TaskState::queued;
    auto q = query(
        queued ? "UPDATE tasks SET state = 'cancelled', cancel_requested = 1, updated_at_ms = ?2, "
                 "finished_at_ms = ?2, last_error = 'cancelled by an operator before it ran' WHERE id = ?1"
               : "UPDATE tasks SET cancel_requested = 1, updated_at_ms = ?2 WHERE id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, task_id).bind(2, now_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
    return queued ? CancelOutcome::cancelled : CancelOutcome::stop_requested;
  }

  Result<std::vector<std::string>> cancelled_among(std::string_view node_id,
                                                   std::span<const std::string> task_ids) override {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& id : task_ids) {
      auto q = query("SELECT 1 FROM tasks WHERE id = ?1 AND leased_by = ?2 AND cancel_requested = 1");
      if (!q) return fail(q.error());
      q->bind(1, std::string_view(id)).bind(2, node_id);
      auto row = q->step();
      if (!row) return fail(row.error());
      if (*row) out.push_back(id);
    }
    return out;
  }

  Result<std::int64_t> prune_tasks(std::int64_t older_than_ms, std::int64_t keep_per_node) override {
    std::lock_guard lock(mutex_);
    auto tx = begin();
    if (!tx) return fail(tx.error());
    std::int64_t deleted = 0;
    {
      auto q = query(std::string("DELETE FROM tasks WHERE state IN ") + kFinal + " AND finished_at_ms < ?1");
      if (!q) return fail(q.error());
      q->bind(1, older_than_ms);
      if (auto ok = q->run(); !ok) return fail(ok.error());
      deleted += sqlite3_changes(db_.get());
    }
    {
      // A final task belongs to the node that ran it last, or the one it was addressed to.
      auto q = query(std::string(
                         "DELETE FROM tasks WHERE seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER "
                         "(PARTITION BY COALESCE(leased_by, node_id, '') ORDER BY finished_at_ms DESC, seq DESC) "
                         "AS rank FROM tasks WHERE state IN ") +
                     kFinal + ") WHERE rank > ?1)");
      if (!q) return fail(q.error());
      q->bind(1, keep_per_node);
      if (auto ok = q->run(); !ok) return fail(ok.error());
      deleted += sqlite3_changes(db_.get());
    }
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
    return deleted;
  }

  // ---- module catalog and assignments (issue 14) ----
  Status upsert_module(const ModuleRecord& m) override {
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

  Result<std::vector<ModuleRecord>> list_modules() override {
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

  Status insert_assignment(const AssignmentRecord& a) override {
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

  Result<std::vector<AssignmentRecord>> list_assignments() override {
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

  Result<bool> delete_assignment(std::string_view id) override {
    std::lock_guard lock(mutex_);
    auto q = query("DELETE FROM module_assignments WHERE id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, id);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    return sqlite3_changes(db_.get()) > 0;
  }

  // ---- escrowed volume keys (issue 15) ----
  Result<std::string> put_escrow_key_if_absent(std::string_view node_id, std::string_view key) override {
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

  Result<std::optional<std::string>> find_escrow_key(std::string_view node_id) override {
    std::lock_guard lock(mutex_);
    return find_escrow_key_locked(node_id);
  }

 private:
  // BEGIN IMMEDIATE takes the write lock up front, so a transaction never fails half way
  // on SQLITE_BUSY; the destructor rolls back unless commit() ran.
  class Transaction {
   public:
    explicit Transaction(SqliteStore* store) : store_(store) {}
    Transaction(Transaction&& o) noexcept : store_(std::exchange(o.store_, nullptr)) {}
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;
    Transaction& operator=(Transaction&&) = delete;
    ~Transaction() {
      if (store_ != nullptr) (void)store_->exec("ROLLBACK");
    }
    Status commit() {
      auto ok = store_->exec("COMMIT");
      if (ok) store_ = nullptr;
      return ok;
    }

   private:
    SqliteStore* store_;
  };

  template <class Fn>
  static auto collect(Query& q, Fn&& from) -> Result<std::vector<decltype(from(q))>> {
    std::vector<decltype(from(q))> out;
    for (;;) {
      auto row = q.step();
      if (!row) return fail(row.error());
      if (!*row) break;
      out.push_back(from(q));
    }
    return out;
  }

  Result<std::optional<TaskRecord>> select_task_locked(const char* where, std::string_view value, bool with_output) {
    auto q = query(std::string("SELECT ") + kTaskColumns + (with_output ? ", output" : ", ''") + " FROM tasks WHERE " +
                   where);
    if (!q) return fail(q.error());
    q->bind(1, value);
    auto row = q->step();
    if (!row) return fail(row.error());
    if (!*row) return std::optional<TaskRecord>{};
    return std::optional<TaskRecord>(task_from(*q));
  }

  // The ids of up to `max` queued tasks this node may lease now, in submission order.
  Result<std::vector<std::string>> pick_locked(const LeaseQuery& lq, std::int64_t max) {
    std::vector<std::string> picked;
    if (max <= 0) return picked;
    TaskResources used;  // reservations of the tasks the node holds, then of those picked
    {
      auto q = query(
          "SELECT COALESCE(SUM(min_cpu_millis), 0), COALESCE(SUM(min_mem_bytes), 0), "
          "COALESCE(SUM(min_disk_bytes), 0) FROM tasks WHERE leased_by = ?1 AND state IN ('leased', 'running')");
      if (!q) return fail(q.error());
      q->bind(1, std::string_view(lq.node_id));
      auto row = q->step();
      if (!row) return fail(row.error());
      if (*row) used = {q->int64(0), q->int64(1), q->int64(2)};
    }
    // Two walks in submission order, merged: the tasks addressed to this node and those
    // addressed to none, each on the queued-by-node index, so tasks waiting for other nodes
    // are never read.
    // INDEXED BY: without statistics the planner would walk every queued task for IS NULL.
    const std::string head = std::string("SELECT ") + kTaskColumns +
                             ", '' FROM tasks t INDEXED BY tasks_queued_by_node WHERE state = 'queued' AND ";
    const std::string tail = std::string(" AND not_before_ms <= ?2 AND ") + kSerialHead + " ORDER BY seq";
    auto mine = query(head + "node_id = ?1" + tail);
    if (!mine) return fail(mine.error());
    auto anyone = query(head + "node_id IS NULL" + tail);  // ?1 unused: binding it is harmless
    if (!anyone) return fail(anyone.error());
    mine->bind(1, std::string_view(lq.node_id)).bind(2, lq.now_ms);
    anyone->bind(1, std::string_view(lq.node_id)).bind(2, lq.now_ms);
    std::optional<TaskRecord> next_mine;
    std::optional<TaskRecord> next_anyone;
    bool mine_done = false;
    bool anyone_done = false;
    auto pull = [](Query& q, std::optional<TaskRecord>& slot, bool& done) -> Status {
      if (slot || done) return {};
      auto row = q.step();
      if (!row) return fail(row.error());
      if (*row) slot = task_from(q);
      else done = true;
      return {};
    };
    while (static_cast<std::int64_t>(picked.size()) < max) {
      if (auto ok = pull(*mine, next_mine, mine_done); !ok) return fail(ok.error());
      if (auto ok = pull(*anyone, next_anyone, anyone_done); !ok) return fail(ok.error());
      if (!next_mine && !next_anyone) break;
      std::optional<TaskRecord>& slot =
          !next_anyone || (next_mine && next_mine->seq < next_anyone->seq) ? next_mine : next_anyone;
      TaskRecord t = std::move(*slot);
      slot.reset();
      if (!placement_matches(t, lq) || !fits(used, t.min, lq.budget)) continue;
      add(used, t.min);
      picked.push_back(std::move(t.id));
    }
    return picked;
  }

  Status bump_auth_locked() {
    auto q = query("UPDATE counters SET value = value + 1 WHERE name = 'auth_generation'");
    if (!q) return fail(q.error());
    return q->run();
  }

  Result<std::optional<std::string>> find_escrow_key_locked(std::string_view node_id) {
    auto q = query("SELECT key FROM escrow_keys WHERE node_id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, node_id);
    auto row = q->step();
    if (!row) return fail(row.error());
    if (!*row) return std::optional<std::string>{};
    return std::optional<std::string>(q->text(0));
  }

  // true: stored; false: the node already has an event with this id (dropped).
  Result<bool> insert_event_locked(const NodeEventRecord& e) {
    auto q = query(
        "INSERT OR IGNORE INTO node_events (node_id, event_id, severity, kind, message, time, "
        "received_at_ms, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
        "(SELECT value + 1 FROM counters WHERE name = 'event_seq'))");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(e.node_id)).bind(2, std::string_view(e.event_id));
    q->bind(3, std::string_view(e.severity)).bind(4, std::string_view(e.kind));
    q->bind(5, std::string_view(e.message)).bind(6, std::string_view(e.time));
    q->bind(7, e.received_at_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    if (sqlite3_changes(db_.get()) == 0) return false;
    // Only a stored event takes a number: the sequence has no holes from duplicates.
    auto c = query("UPDATE counters SET value = value + 1 WHERE name = 'event_seq'");
    if (!c) return fail(c.error());
    if (auto ok = c->run(); !ok) return fail(ok.error());
    return true;
  }

  Status prune_events_locked(std::string_view node_id) {
    auto q = query(
        "DELETE FROM node_events WHERE node_id = ?1 AND rowid NOT IN (SELECT rowid FROM "
        "node_events WHERE node_id = ?1 ORDER BY rowid DESC LIMIT ?2)");
    if (!q) return fail(q.error());
    q->bind(1, node_id).bind(2, std::int64_t{kEventsKeptPerNode});
    return q->run();
  }

  Result<Transaction> begin() {
    if (auto ok = exec("BEGIN IMMEDIATE"); !ok) return fail(ok.error());
    return Transaction(this);
  }

  Status exec(const char* sql) {
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

  // Prepared statements are compiled once per connection and reused.
  Result<Query> query(const std::string& sql) {
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

  Result<int> read_schema_version() {
    auto q = query("SELECT COALESCE(MAX(version), 0) FROM schema_version");
    if (!q) return fail(q.error());
    auto row = q->step();
    if (!row) return fail(row.error());
    return *row ? static_cast<int>(q->int64(0)) : 0;
  }

  Status migrate() {
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

  Status insert_certificate_locked(const CertRecord& c) {
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

  // A failed statement inside the batch does not abort the transaction in SQLite (only the
  // statement is undone), so one bad record fails alone.
  Status write_one_heartbeat(const HeartbeatRecord& r) {
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

  std::mutex mutex_;  // one connection, one user at a time
  DbPtr db_;
  std::unordered_map<std::string, StmtPtr> stmts_;
  std::filesystem::path path_;
};

}  // namespace

Result<std::unique_ptr<Store>> open_sqlite_store(const std::filesystem::path& file) {
  auto store = std::make_unique<SqliteStore>();
  if (auto ok = store->open(file); !ok) return fail(ok.error().with_context("store"));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace cairn::control
