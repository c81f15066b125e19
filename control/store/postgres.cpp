// The PostgreSQL backend of Store: the only file that includes libpq-fe.h (STYLE.md 3).
// Several cairn-control replicas share one database: every method is one statement or one
// transaction, row locks and SKIP LOCKED keep them apart, and batches travel as one jsonb
// parameter (jsonb_to_recordset) so a batch costs one round trip.
#include "control/store/postgres.hpp"

#include <libpq-fe.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/json.hpp"

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

namespace {

using protocol::FailureReason;
using protocol::TaskState;

struct PgConnCloser {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
struct PgResultClearer {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnCloser>;
using PgResultPtr = std::unique_ptr<PGresult, PgResultClearer>;

// SQLSTATEs worth running the transaction again for (https://www.postgresql.org/docs/15/errcodes-appendix.html).
constexpr std::string_view kSerializationFailure = "40001";
constexpr std::string_view kDeadlockDetected = "40P01";

// ---- values in and out (text format) ----

std::string hex_encode(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char ch : bytes) {
    out.push_back(kDigits[ch >> 4]);
    out.push_back(kDigits[ch & 0xf]);
  }
  return out;
}

std::string hex_decode(std::string_view hex) {
  auto nibble = [](char ch) -> int {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return 0;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>((nibble(hex[i]) << 4) | nibble(hex[i + 1])));
  }
  return out;
}

// PostgreSQL text cannot hold NUL (nor can jsonb's \u0000): dropped, as Params::add does.
std::string no_nul(std::string_view v) {
  std::string s(v);
  std::erase(s, '\0');
  return s;
}

// bytea in text format: \x followed by hex digits (bytea_output = hex, the default).
std::string bytea_param(std::string_view bytes) { return "\\x" + hex_encode(bytes); }
std::string bytea_value(std::string_view text) {
  if (text.starts_with("\\x")) return hex_decode(text.substr(2));
  return std::string(text);
}

class Params {
 public:
  Params& add(std::string_view v) {
    // PostgreSQL text cannot hold NUL: it would end the value (libpq takes C strings).
    std::string s(v);
    std::erase(s, '\0');
    values_.emplace_back(std::move(s));
    return *this;
  }
  Params& add(const std::string& v) { return add(std::string_view(v)); }
  Params& add(const char* v) { return add(std::string_view(v)); }
  Params& add(std::int64_t v) {
    values_.emplace_back(std::to_string(v));
    return *this;
  }
  Params& add(int v) { return add(static_cast<std::int64_t>(v)); }
  Params& add(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    values_.emplace_back(buf);
    return *this;
  }
  Params& add(bool v) {
    values_.emplace_back(v ? "t" : "f");
    return *this;
  }
  Params& null() {
    values_.emplace_back(std::nullopt);
    return *this;
  }
  template <class T>
  Params& add(const std::optional<T>& v) {
    return v ? add(*v) : null();
  }
  Params& raw(std::string v) {  // already a valid literal (bytea hex)
    values_.emplace_back(std::move(v));
    return *this;
  }

  [[nodiscard]] std::vector<const char*> pointers() const {
    std::vector<const char*> out;
    out.reserve(values_.size());
    for (const auto& v : values_) out.push_back(v ? v->c_str() : nullptr);
    return out;
  }
  [[nodiscard]] int size() const { return static_cast<int>(values_.size()); }

 private:
  std::vector<std::optional<std::string>> values_;
};

class Rows {
 public:
  explicit Rows(PgResultPtr res) : res_(std::move(res)) {}
  [[nodiscard]] int size() const { return PQntuples(res_.get()); }
  [[nodiscard]] bool empty() const { return size() == 0; }
  [[nodiscard]] bool is_null(int r, int c) const { return PQgetisnull(res_.get(), r, c) != 0; }
  [[nodiscard]] std::string text(int r, int c) const {
    return std::string(PQgetvalue(res_.get(), r, c), static_cast<std::size_t>(PQgetlength(res_.get(), r, c)));
  }
  [[nodiscard]] std::int64_t int64(int r, int c) const {
    return is_null(r, c) ? 0 : std::strtoll(PQgetvalue(res_.get(), r, c), nullptr, 10);
  }
  [[nodiscard]] double real(int r, int c) const {
    return is_null(r, c) ? 0.0 : std::strtod(PQgetvalue(res_.get(), r, c), nullptr);
  }
  [[nodiscard]] bool boolean(int r, int c) const { return !is_null(r, c) && PQgetvalue(res_.get(), r, c)[0] == 't'; }
  [[nodiscard]] std::optional<std::int64_t> opt_int64(int r, int c) const {
    if (is_null(r, c)) return std::nullopt;
    return int64(r, c);
  }
  [[nodiscard]] std::optional<std::string> opt_text(int r, int c) const {
    if (is_null(r, c)) return std::nullopt;
    return text(r, c);
  }
  // Rows changed by an INSERT/UPDATE/DELETE without RETURNING.
  [[nodiscard]] std::int64_t affected() const { return std::strtoll(PQcmdTuples(res_.get()), nullptr, 10); }

 private:
  PgResultPtr res_;
};

// A statement prepared on one connection: its name there, how often it ran, and after how
// many runs it is prepared again (see Conn).
struct Prepared {
  std::string name;
  std::int64_t runs = 0;
  std::int64_t replan_after = 0;
};

// One connection with its prepared statements (named per connection, prepared on first use).
// PostgreSQL keeps the generic plan of a prepared statement until the statistics of its
// tables change, and a young table has none: autovacuum analyzes it after a minute at the
// earliest. A plan chosen while the task tables held a few pages (a sequential scan is the
// cheapest there) stayed in use while they grew to thousands: at 20,000 tasks a batch
// complete read 2,600-8,700 pages instead of ~100. So a statement is prepared again after
// 32, 128, 512, ... runs (x4, then every 32,768): a plan is at most a few multiples of the
// table's growth old, for a cost of a dozen extra prepares per statement and connection.
// (Planning every run, force_custom_plan, would cost 0.4-0.8 ms per lease or complete.)
struct Conn {
  static constexpr std::int64_t kFirstReplan = 32;
  static constexpr std::int64_t kMaxReplan = 32'768;
  PgConnPtr pg;
  std::unordered_map<std::string, Prepared> prepared;  // by sql
  std::int64_t names = 0;                              // statement names used: s1, s2, ...
  bool broken = false;
};

// Connections shared by the callers of one store: one per concurrent caller, up to max.
class Pool {
 public:
  Pool(std::string url, int max) : url_(std::move(url)), shown_(redact_database_url(url_)), max_(std::max(1, max)) {}

  class Lease {
   public:
    Lease(Pool* pool, std::unique_ptr<Conn> conn) : pool_(pool), conn_(std::move(conn)) {}
    Lease(Lease&& o) noexcept : pool_(o.pool_), conn_(std::move(o.conn_)) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (conn_) pool_->release(std::move(conn_));
    }
    Conn& operator*() { return *conn_; }
    Conn* operator->() { return conn_.get(); }

   private:
    Pool* pool_;
    std::unique_ptr<Conn> conn_;
  };

  Result<Lease> acquire() {
    {
      std::unique_lock lock(mutex_);
      for (;;) {
        cv_.wait(lock, [&] { return !idle_.empty() || open_ < max_; });
        if (idle_.empty()) break;
        auto conn = std::move(idle_.back());
        idle_.pop_back();
        // A connection the server closed while it sat idle (a restart, a failover, an idle
        // timeout) reads EOF here without blocking: it is dropped, not handed out to fail.
        // (Twice: the first read may take the server's goodbye message, the second the EOF.)
        if (PQconsumeInput(conn->pg.get()) != 0 && PQconsumeInput(conn->pg.get()) != 0 &&
            PQstatus(conn->pg.get()) == CONNECTION_OK) {
          return Lease(this, std::move(conn));
        }
        --open_;
      }
      ++open_;
    }
    auto conn = connect();
    if (!conn) {
      std::lock_guard lock(mutex_);
      --open_;
      cv_.notify_one();
      return fail(conn.error());
    }
    return Lease(this, std::move(*conn));
  }

  [[nodiscard]] const std::string& shown() const { return shown_; }

 private:
  Result<std::unique_ptr<Conn>> connect() {
    auto conn = std::make_unique<Conn>();
    conn->pg.reset(PQconnectdb(url_.c_str()));
    if (conn->pg == nullptr || PQstatus(conn->pg.get()) != CONNECTION_OK) {
      std::string why = conn->pg ? PQerrorMessage(conn->pg.get()) : "out of memory";
      while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
      return fail(Errc::unavailable, "connect to database " + shown_ + ": " + why,
                  "check that PostgreSQL is running there and the URL's user, password and database are right");
    }
    // Notices ("relation already exists, skipping") are not errors: not printed.
    PQsetNoticeProcessor(conn->pg.get(), [](void*, const char*) {}, nullptr);
    return conn;
  }

  void release(std::unique_ptr<Conn> conn) {
    std::lock_guard lock(mutex_);
    if (conn->broken || PQstatus(conn->pg.get()) != CONNECTION_OK || PQtransactionStatus(conn->pg.get()) != PQTRANS_IDLE) {
      --open_;  // dropped: a new one is opened when needed
    } else {
      idle_.push_back(std::move(conn));
    }
    cv_.notify_one();
  }

  std::string url_;
  std::string shown_;
  int max_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Conn>> idle_;
  int open_ = 0;
};

// ---- stored forms shared with the SQLite backend ----

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
};

// Any number: the key of the advisory lock that serialises migrations across replicas.
constexpr std::int64_t kMigrationLockKey = 0x6361'6972'6e00'0001;  // "cairn\0\0\1"

constexpr const char* kNodeColumns = R"sql(
  n.id, n.identity, n.labels, n.first_enrolled_at_ms, n.enrolled_at_ms, n.enroll_count,
  n.revoked_at_ms,
  (SELECT MAX(c.not_after_ms) FROM certificates c WHERE c.node_id = n.id AND c.status = 'active'),
  s.last_seen_ms, s.boot_id, s.agent_version, s.mount_state, s.load1, s.load5, s.load15,
  s.cpu_count, s.mem_total_bytes, s.mem_available_bytes, s.disk_total_bytes, s.disk_free_bytes,
  s.uptime_s, s.cert_not_after, s.modules, s.labels, s.heartbeats, s.critical_events_total,
  n.reenroll_allowed_until_ms, s.capabilities
FROM nodes n LEFT JOIN node_status s ON s.node_id = n.id)sql";

NodeRecord node_from(const Rows& q, int r) {
  NodeRecord n;
  n.id = q.text(r, 0);
  if (auto j = parse_json(q.text(r, 1), "stored identity")) {
    if (auto id = protocol::node_identity_from_json(*j)) n.identity = std::move(*id);
  }
  n.labels = labels_from(q.text(r, 2));
  n.first_enrolled_at_ms = q.int64(r, 3);
  n.enrolled_at_ms = q.int64(r, 4);
  n.enroll_count = q.int64(r, 5);
  n.revoked_at_ms = q.opt_int64(r, 6);
  n.cert_not_after_ms = q.opt_int64(r, 7);
  n.reenroll_allowed_until_ms = q.opt_int64(r, 26);
  if (!q.is_null(r, 8)) {
    NodeStatusRecord s;
    s.last_seen_ms = q.int64(r, 8);
    auto& hb = s.last;
    hb.boot_id = q.text(r, 9);
    hb.agent_version = q.text(r, 10);
    hb.mount_state = q.text(r, 11);
    hb.load1 = q.real(r, 12);
    hb.load5 = q.real(r, 13);
    hb.load15 = q.real(r, 14);
    hb.cpu_count = static_cast<std::uint32_t>(q.int64(r, 15));
    hb.mem_total_bytes = static_cast<std::uint64_t>(q.int64(r, 16));
    hb.mem_available_bytes = static_cast<std::uint64_t>(q.int64(r, 17));
    hb.disk_total_bytes = static_cast<std::uint64_t>(q.int64(r, 18));
    hb.disk_free_bytes = static_cast<std::uint64_t>(q.int64(r, 19));
    hb.uptime_s = static_cast<std::uint64_t>(q.int64(r, 20));
    hb.cert_not_after = q.text(r, 21);
    hb.modules = modules_from(q.text(r, 22));
    hb.labels = labels_from(q.text(r, 23));
    s.heartbeats = q.int64(r, 24);
    s.critical_events_total = q.int64(r, 25);
    hb.capabilities = strings_from(q.text(r, 27));
    n.status = std::move(s);
  }
  return n;
}

constexpr const char* kTokenColumns =
    "id, hash, created_at_ms, expires_at_ms, uses, max_uses, labels, expect_id, revoked";
TokenRecord token_from(const Rows& q, int r) {
  TokenRecord t;
  t.id = q.text(r, 0);
  t.hash = q.text(r, 1);
  t.created_at_ms = q.int64(r, 2);
  t.expires_at_ms = q.int64(r, 3);
  t.uses = q.int64(r, 4);
  t.max_uses = q.int64(r, 5);
  t.labels = labels_from(q.text(r, 6));
  t.expect_id = q.opt_text(r, 7);
  t.revoked = q.boolean(r, 8);
  return t;
}

constexpr const char* kCertColumns =
    "serial, node_id, fingerprint, not_before_ms, not_after_ms, issued_at_ms, reason, status, "
    "retire_at_ms, public_key, replaced_by";
CertRecord cert_from(const Rows& q, int r) {
  CertRecord c;
  c.serial_hex = q.text(r, 0);
  c.node_id = q.text(r, 1);
  c.fingerprint_sha256 = q.text(r, 2);
  c.not_before_ms = q.int64(r, 3);
  c.not_after_ms = q.int64(r, 4);
  c.issued_at_ms = q.int64(r, 5);
  c.reason = q.text(r, 6);
  c.status = cert_status_from(q.text(r, 7));
  c.retire_at_ms = q.opt_int64(r, 8);
  c.public_key_pem = q.text(r, 9);
  c.replaced_by = q.opt_text(r, 10);
  return c;
}

constexpr const char* kAdminColumns = "serial, name, fingerprint, issued_at_ms, not_after_ms, revoked_at_ms";
AdminCertRecord admin_from(const Rows& q, int r) {
  return {q.text(r, 0), q.text(r, 1), q.text(r, 2), q.int64(r, 3), q.int64(r, 4), q.opt_int64(r, 5)};
}

constexpr const char* kEventColumns = "node_id, event_id, severity, kind, message, time, received_at_ms, seq";
NodeEventRecord event_from(const Rows& q, int r) {
  NodeEventRecord e;
  e.node_id = q.text(r, 0);
  e.event_id = q.text(r, 1);
  e.severity = q.text(r, 2);
  e.kind = q.text(r, 3);
  e.message = q.text(r, 4);
  e.time = q.text(r, 5);
  e.received_at_ms = q.int64(r, 6);
  e.seq = q.int64(r, 7);
  return e;
}

// Any numbers: advisory lock keys. Migrations run one replica at a time; event inserts too,
// so event seq (a sequence) grows in commit order and a follower's cursor never skips an
// event that commits late.
constexpr std::int64_t kEventLockKey = 0x6361'6972'6e00'0002;

// The auth generation (Store::auth_generation) moves with each change of authorisation: in
// the change's transaction, or, after a CTE `u` of the change, only when it changed a row.
constexpr const char* kBumpAuth = "UPDATE counters SET value = value + 1 WHERE name = 'auth_generation'";
constexpr const char* kBumpAuthIf =
    "g AS (UPDATE counters SET value = value + 1 WHERE name = 'auth_generation' AND EXISTS (SELECT 1 FROM u))";

// Every task column but the output (list_tasks leaves it out; find_task adds it last).
constexpr const char* kTaskColumns =
    "id, seq, kind, args, node_id, selector::text, capabilities::text, min_cpu, min_mem, min_disk, "
    "timeout_s, max_attempts, serial_key, idempotency_key, state, attempts, fence, leased_by, "
    "lease_expires_ms, not_before_ms, cancel_requested, created_at_ms, updated_at_ms, started_at_ms, "
    "finished_at_ms, exit_code, last_reason, last_error, output_truncated, output_bytes";
constexpr int kTaskOutputColumn = 30;

TaskRecord task_from(const Rows& q, int r) {
  TaskRecord t;
  t.id = q.text(r, 0);
  t.seq = q.int64(r, 1);
  t.kind = q.text(r, 2);
  t.args_json = q.text(r, 3);
  t.node_id = q.opt_text(r, 4);
  t.selector = labels_from(q.text(r, 5));
  t.capabilities = strings_from(q.text(r, 6));
  t.min = {q.int64(r, 7), q.int64(r, 8), q.int64(r, 9)};
  t.timeout_s = q.int64(r, 10);
  t.max_attempts = q.int64(r, 11);
  t.serial_key = q.opt_text(r, 12);
  t.idempotency_key = q.opt_text(r, 13);
  t.state = protocol::task_state_from(q.text(r, 14)).value_or(TaskState::queued);
  t.attempts = q.int64(r, 15);
  t.fence = q.int64(r, 16);
  t.leased_by = q.opt_text(r, 17);
  t.lease_expires_ms = q.opt_int64(r, 18);
  t.not_before_ms = q.int64(r, 19);
  t.cancel_requested = q.boolean(r, 20);
  t.created_at_ms = q.int64(r, 21);
  t.updated_at_ms = q.int64(r, 22);
  t.started_at_ms = q.opt_int64(r, 23);
  t.finished_at_ms = q.opt_int64(r, 24);
  if (!q.is_null(r, 25)) t.exit_code = static_cast<int>(q.int64(r, 25));
  if (!q.is_null(r, 26)) t.last_reason = protocol::failure_reason_from(q.text(r, 26));
  t.last_error = q.text(r, 27);
  t.output_truncated = q.boolean(r, 28);
  t.output_bytes = q.int64(r, 29);
  return t;
}

constexpr const char* kAttemptColumns =
    "task_id, attempt, fence, node_id, leased_at_ms, started_at_ms, finished_at_ms, outcome, reason, "
    "exit_code, error";
TaskAttemptRecord attempt_from(const Rows& q, int r) {
  TaskAttemptRecord a;
  a.task_id = q.text(r, 0);
  a.attempt = q.int64(r, 1);
  a.fence = q.int64(r, 2);
  a.node_id = q.text(r, 3);
  a.leased_at_ms = q.int64(r, 4);
  a.started_at_ms = q.opt_int64(r, 5);
  a.finished_at_ms = q.opt_int64(r, 6);
  a.outcome = q.text(r, 7);
  if (!q.is_null(r, 8)) a.reason = protocol::failure_reason_from(q.text(r, 8));
  if (!q.is_null(r, 9)) a.exit_code = static_cast<int>(q.int64(r, 9));
  a.error = q.text(r, 10);
  return a;
}

template <class Fn>
auto collect(const Rows& q, Fn&& from) -> std::vector<decltype(from(q, 0))> {
  std::vector<decltype(from(q, 0))> out;
  out.reserve(static_cast<std::size_t>(q.size()));
  for (int r = 0; r < q.size(); ++r) out.push_back(from(q, r));
  return out;
}

// The placement part of a lease, shared by lease_tasks and has_work. Parameters: $1 node id,
// $2 labels (jsonb object), $3 capabilities (jsonb array), $4 now, $5..$7 the budget (cpu,
// mem, disk). A task is a candidate when queued, due, addressed to the node or matching its
// labels and capabilities, the oldest open task of its serial key, and it fits the budget
// alone (with what the node holds already).
constexpr const char* kHeldSql = R"sql(
held AS (
  SELECT COALESCE(SUM(min_cpu), 0) AS cpu, COALESCE(SUM(min_mem), 0) AS mem,
         COALESCE(SUM(min_disk), 0) AS disk
  FROM tasks WHERE leased_by = $1::text AND state IN ('leased', 'running')))sql";
constexpr const char* kCandidateWhere = R"sql(
  t.state = 'queued' AND t.not_before_ms <= $4::bigint
  AND (t.node_id = $1::text
       OR (t.node_id IS NULL AND t.selector <@ $2::jsonb AND t.capabilities <@ $3::jsonb))
  AND (t.serial_key IS NULL OR NOT EXISTS (
         SELECT 1 FROM tasks o WHERE o.serial_key = t.serial_key AND o.seq < t.seq
         AND o.state IN ('queued', 'leased', 'running')))
  AND h.cpu + t.min_cpu <= $5::bigint AND h.mem + t.min_mem <= $6::bigint
  AND h.disk + t.min_disk <= $7::bigint)sql";

class PostgresStore final : public Store {
 public:
  PostgresStore(std::string url, const PostgresOptions& options) : pool_(std::move(url), options.max_connections) {}

  Status open() { return migrate(); }

  int schema_version() override {
    auto conn = pool_.acquire();
    if (!conn) return 0;
    auto v = read_schema_version(**conn);
    return v ? *v : 0;
  }

  // ---- tokens ----

  Status insert_token(const TokenRecord& t) override {
    Params p;
    p.add(t.id).add(t.hash).add(t.created_at_ms).add(t.expires_at_ms).add(t.uses).add(t.max_uses);
    p.add(labels_text(t.labels)).add(t.expect_id).add(t.revoked);
    return run_status(
        "INSERT INTO tokens (id, hash, created_at_ms, expires_at_ms, uses, max_uses, labels, expect_id, revoked) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        p);
  }

  Result<std::optional<TokenRecord>> find_token_by_hash(std::string_view hash) override {
    auto rows = run(std::string("SELECT ") + kTokenColumns + " FROM tokens WHERE hash = $1::text", Params().add(hash));
    if (!rows) return fail(rows.error());
    if (rows->empty()) return std::optional<TokenRecord>{};
    return std::optional<TokenRecord>(token_from(*rows, 0));
  }

  Result<std::vector<TokenRecord>> list_tokens() override {
    auto rows = run(std::string("SELECT ") + kTokenColumns + " FROM tokens ORDER BY created_at_ms, id", Params());
    if (!rows) return fail(rows.error());
    return collect(*rows, token_from);
  }

  Result<bool> revoke_token(std::string_view id) override {
    auto rows = run("UPDATE tokens SET revoked = true WHERE id = $1::text", Params().add(id));
    if (!rows) return fail(rows.error());
    return rows->affected() > 0;
  }

  // ---- enrollment and certificates ----

  Result<EnrollmentOutcome> commit_enrollment(const EnrollmentCommit& c) override {
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

  Result<std::int64_t> enrollments_total() override {
    auto rows = run("SELECT value FROM counters WHERE name = 'enrollments'", Params());
    if (!rows) return fail(rows.error());
    return rows->empty() ? 0 : rows->int64(0, 0);
  }

  Result<RotationOutcome> commit_rotation(std::string_view old_serial, const CertRecord& fresh) override {
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

  Status confirm_rotation(std::string_view new_serial, std::int64_t retire_at_ms) override {
    return run_status(std::string("WITH u AS (UPDATE certificates SET retire_at_ms = $2::bigint WHERE replaced_by = $1::text "
                                  "AND retire_at_ms IS NULL RETURNING 1), ") +
                          kBumpAuthIf + " SELECT 1",
                      Params().add(new_serial).add(retire_at_ms));
  }

  Result<std::vector<CertRecord>> list_certificates(std::string_view node_id) override {
    auto rows = run(std::string("SELECT ") + kCertColumns +
                        " FROM certificates WHERE node_id = $1::text ORDER BY issued_at_ms DESC, serial",
                    Params().add(node_id));
    if (!rows) return fail(rows.error());
    return collect(*rows, cert_from);
  }

  // ---- nodes ----

  Result<std::optional<NodeRecord>> find_node(std::string_view id) override {
    auto rows = run(std::string("SELECT ") + kNodeColumns + " WHERE n.id = $1::text", Params().add(id));
    if (!rows) return fail(rows.error());
    if (rows->empty()) return std::optional<NodeRecord>{};
    return std::optional<NodeRecord>(node_from(*rows, 0));
  }

  Result<std::vector<NodeRecord>> list_nodes() override {
    auto rows = run(std::string("SELECT ") + kNodeColumns + " ORDER BY n.id", Params());
    if (!rows) return fail(rows.error());
    return collect(*rows, node_from);
  }

  Result<bool> revoke_node(std::string_view id, std::int64_t now_ms) override {
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

  Result<bool> allow_reenroll(std::string_view id, std::int64_t until_ms) override {
    auto rows = run(
        "UPDATE nodes SET reenroll_allowed_until_ms = $2::bigint WHERE id = $1::text AND revoked_at_ms IS NULL",
        Params().add(id).add(until_ms));
    if (!rows) return fail(rows.error());
    return rows->affected() > 0;
  }

  // ---- events ----

  Result<std::vector<NodeEventRecord>> recent_events(std::string_view node_id) override {
    auto rows = run(std::string("SELECT ") + kEventColumns + " FROM node_events WHERE node_id = $1::text ORDER BY seq DESC",
                    Params().add(node_id));
    if (!rows) return fail(rows.error());
    return collect(*rows, event_from);
  }

  Result<std::vector<NodeEventRecord>> list_events(const EventQuery& query) override {
    if (query.after_seq) {
      // A follower's next page: the oldest events after its cursor, in the order stored.
      auto rows = run(std::string("SELECT ") + kEventColumns +
                          " FROM node_events WHERE seq > $4::bigint AND ($1::text IS NULL OR node_id = $1::text) "
                          "AND received_at_ms >= $2::bigint ORDER BY seq LIMIT $3::bigint",
                      Params().add(query.node_id).add(query.since_ms).add(query.limit).add(*query.after_seq));
      if (!rows) return fail(rows.error());
      return collect(*rows, event_from);
    }
    // The newest `limit` matching events, returned oldest first.
    auto rows = run(std::string("SELECT ") + kEventColumns + " FROM (SELECT " + kEventColumns +
                        " FROM node_events WHERE ($1::text IS NULL OR node_id = $1::text) AND received_at_ms >= $2::bigint "
                        "ORDER BY received_at_ms DESC, seq DESC LIMIT $3::bigint) e ORDER BY received_at_ms, seq",
                    Params().add(query.node_id).add(query.since_ms).add(query.limit));
    if (!rows) return fail(rows.error());
    return collect(*rows, event_from);
  }

  Result<std::int64_t> insert_events(std::span<const NodeEventRecord> events) override {
    if (events.empty()) return std::int64_t{0};
    return in_tx([&](Conn& conn) -> Result<std::int64_t> {
      auto stored = insert_event_batch(conn, events);
      if (!stored) return fail(stored.error());
      std::int64_t total = 0;
      for (const auto& [node, counts] : *stored) total += counts.stored;
      return total;
    });
  }

  // ---- admin credentials ----

  Status insert_admin_cert(const AdminCertRecord& a) override {
    Params p;
    p.add(a.serial_hex).add(a.name).add(a.fingerprint_sha256).add(a.issued_at_ms).add(a.not_after_ms);
    p.add(a.revoked_at_ms);
    return run_status(std::string("WITH u AS (INSERT INTO admin_certificates (serial, name, fingerprint, issued_at_ms, "
                                  "not_after_ms, revoked_at_ms) VALUES ($1, $2, $3, $4, $5, $6) "
                                  "ON CONFLICT (serial) DO NOTHING RETURNING 1), ") +
                          kBumpAuthIf + " SELECT 1",
                      p);
  }

  Result<std::vector<AdminCertRecord>> list_admin_certs() override {
    auto rows = run(std::string("SELECT ") + kAdminColumns + " FROM admin_certificates ORDER BY name, issued_at_ms, serial",
                    Params());
    if (!rows) return fail(rows.error());
    return collect(*rows, admin_from);
  }

  Result<std::int64_t> revoke_admin(std::string_view name, std::int64_t now_ms) override {
    auto rows = run(std::string("WITH u AS (UPDATE admin_certificates SET revoked_at_ms = $2::bigint WHERE name = $1::text "
                                "AND revoked_at_ms IS NULL RETURNING 1), ") +
                        kBumpAuthIf + " SELECT count(*) FROM u",
                    Params().add(name).add(now_ms));
    if (!rows) return fail(rows.error());
    return rows->int64(0, 0);
  }

  Result<std::map<std::string, std::int64_t>> count_tasks() override {
    auto rows = run("SELECT state, count(*) FROM tasks GROUP BY state", Params());
    if (!rows) return fail(rows.error());
    std::map<std::string, std::int64_t> out;
    for (auto st : {"queued", "leased", "running", "succeeded", "failed", "dead", "cancelled"}) out[st] = 0;
    for (int r = 0; r < rows->size(); ++r) out[rows->text(r, 0)] = rows->int64(r, 1);
    return out;
  }

  Result<std::int64_t> auth_generation() override {
    auto rows = run("SELECT value FROM counters WHERE name = 'auth_generation'", Params());
    if (!rows) return fail(rows.error());
    return rows->empty() ? 0 : rows->int64(0, 0);
  }

  // ---- heartbeats: the batch in one transaction, three statements at most ----

  Result<std::vector<Status>> write_heartbeats(std::span<const HeartbeatRecord> batch) override {
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

  Result<AuthSnapshot> load_auth_snapshot(std::int64_t now_ms) override {
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

  // ---- tasks ----

  Result<SubmitOutcome> submit_task(const TaskRecord& t) override {
    Params p;
    p.add(t.id).add(t.kind).add(t.args_json).add(t.node_id).add(labels_text(t.selector));
    p.add(strings_text(t.capabilities)).add(t.min.cpu_millis).add(t.min.mem_bytes).add(t.min.disk_bytes);
    p.add(t.timeout_s).add(t.max_attempts).add(t.serial_key).add(t.idempotency_key);
    p.add(protocol::task_state_name(t.state)).add(t.not_before_ms).add(t.created_at_ms);
    p.add(t.updated_at_ms == 0 ? t.created_at_ms : t.updated_at_ms);
    auto inserted = run(std::string(R"sql(
INSERT INTO tasks (id, kind, args, node_id, selector, capabilities, min_cpu, min_mem, min_disk,
  timeout_s, max_attempts, serial_key, idempotency_key, state, not_before_ms, created_at_ms,
  updated_at_ms)
VALUES ($1::text, $2::text, $3::text, $4::text, $5::jsonb, $6::jsonb, $7::bigint, $8::bigint, $9::bigint,
  $10::bigint, $11::bigint, $12::text, $13::text, $14::text, $15::bigint, $16::bigint, $17::bigint)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING )sql") + kTaskColumns,
                        p);
    if (!inserted) return fail(inserted.error());
    if (!inserted->empty()) return SubmitOutcome{task_from(*inserted, 0), true};
    // The key is taken: the task it names, unchanged (the other insert has committed: ON
    // CONFLICT waited for it).
    auto existing = run(std::string("SELECT ") + kTaskColumns + " FROM tasks WHERE idempotency_key = $1::text",
                        Params().add(t.idempotency_key));
    if (!existing) return fail(existing.error());
    if (existing->empty()) {
      return fail(Errc::temporary, "task with idempotency key '" + t.idempotency_key.value_or("") +
                                       "' was being submitted concurrently and then vanished",
                  "submit again");
    }
    return SubmitOutcome{task_from(*existing, 0), false};
  }

  // One statement: the batch travels as one jsonb array, inserted in its order (seq follows
  // it); an idempotency key already stored (or earlier in the batch) inserts nothing and the
  // task it names is read back, as submit_task does.
  Result<std::vector<SubmitOutcome>> submit_tasks(std::span<const TaskRecord> tasks) override {
    std::vector<SubmitOutcome> out;
    if (tasks.empty()) return out;
    Json rows = Json::array();
    std::int64_t ord = 0;
    for (const auto& t : tasks) {
      rows.push_back({{"ord", ord++},
                      {"id", no_nul(t.id)},
                      {"kind", no_nul(t.kind)},
                      {"args", no_nul(t.args_json)},
                      {"node_id", t.node_id ? Json(no_nul(*t.node_id)) : Json(nullptr)},
                      {"selector", Json(t.selector)},
                      {"capabilities", Json(t.capabilities)},
                      {"min_cpu", t.min.cpu_millis},
                      {"min_mem", t.min.mem_bytes},
                      {"min_disk", t.min.disk_bytes},
                      {"timeout_s", t.timeout_s},
                      {"max_attempts", t.max_attempts},
                      {"serial_key", t.serial_key ? Json(no_nul(*t.serial_key)) : Json(nullptr)},
                      {"idempotency_key", t.idempotency_key ? Json(no_nul(*t.idempotency_key)) : Json(nullptr)},
                      {"state", protocol::task_state_name(t.state)},
                      {"not_before_ms", t.not_before_ms},
                      {"created_at_ms", t.created_at_ms},
                      {"updated_at_ms", t.updated_at_ms == 0 ? t.created_at_ms : t.updated_at_ms}});
    }
    auto inserted = run_retrying(std::string(R"sql(
INSERT INTO tasks (id, kind, args, node_id, selector, capabilities, min_cpu, min_mem, min_disk,
  timeout_s, max_attempts, serial_key, idempotency_key, state, not_before_ms, created_at_ms,
  updated_at_ms)
SELECT id, kind, args, node_id, COALESCE(selector, '{}'), COALESCE(capabilities, '[]'), min_cpu, min_mem,
  min_disk, timeout_s, max_attempts, serial_key, idempotency_key, state, not_before_ms, created_at_ms,
  updated_at_ms
FROM jsonb_to_recordset($1::jsonb) AS x(ord bigint, id text, kind text, args text, node_id text, selector jsonb,
  capabilities jsonb, min_cpu bigint, min_mem bigint, min_disk bigint, timeout_s bigint, max_attempts bigint,
  serial_key text, idempotency_key text, state text, not_before_ms bigint, created_at_ms bigint,
  updated_at_ms bigint)
ORDER BY ord
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING )sql") + kTaskColumns,
                                 Params().add(dump_json(rows)));
    if (!inserted) return fail(inserted.error());
    std::unordered_map<std::string, int> by_id;
    for (int r = 0; r < inserted->size(); ++r) by_id.emplace(inserted->text(r, 0), r);
    // The keys that inserted nothing: the tasks they name, read back in one query.
    Json keys = Json::array();
    for (const auto& t : tasks) {
      if (!by_id.contains(no_nul(t.id)) && t.idempotency_key) keys.push_back(no_nul(*t.idempotency_key));
    }
    std::unordered_map<std::string, TaskRecord> by_key;
    if (!keys.empty()) {
      auto existing = run(std::string("SELECT ") + kTaskColumns +
                              " FROM tasks WHERE idempotency_key IN (SELECT jsonb_array_elements_text($1::jsonb))",
                          Params().add(dump_json(keys)));
      if (!existing) return fail(existing.error());
      for (int r = 0; r < existing->size(); ++r) {
        auto t = task_from(*existing, r);
        const std::string key = t.idempotency_key.value_or("");
        by_key.emplace(key, std::move(t));
      }
    }
    out.reserve(tasks.size());
    for (const auto& t : tasks) {
      if (auto it = by_id.find(no_nul(t.id)); it != by_id.end()) {
        out.push_back(SubmitOutcome{task_from(*inserted, it->second), true});
        by_id.erase(it);  // the same id twice in a batch: the second is the existing task
        if (t.idempotency_key) by_key.emplace(no_nul(*t.idempotency_key), out.back().task);
        continue;
      }
      auto it = t.idempotency_key ? by_key.find(no_nul(*t.idempotency_key)) : by_key.end();
      if (it == by_key.end()) {
        return fail(Errc::temporary, "task " + t.id + " (idempotency key '" + t.idempotency_key.value_or("") +
                                         "') of a batch: neither inserted nor found",
                    "submit the batch again");
      }
      out.push_back(SubmitOutcome{it->second, false});
    }
    return out;
  }

  // One statement per round: the completions travel as one jsonb array; the rows of their
  // tasks are locked in id order (two batches never wait on each other in a cycle); each
  // completion is decided as complete_task decides one. A task named twice in a batch is
  // completed in a second round (its repeat then answers as a repeat does).
  // Each table is reached through its key whatever the planner thinks of it: `id =
  // ANY (ARRAY(ids))` is an index scan for any size of table (tasks_pkey, or
  // task_attempts_by_fence on its first column). Joined to the jsonb rows instead, the planner
  // of a young table (no statistics yet, the generic plan of a prepared statement, 100 rows
  // guessed for jsonb_to_recordset) chose sequential scans of both tables, or an index scan
  // on the fence alone: 15-55 ms and 2,600-8,700 pages per batch of 10 at 20,000 tasks, the
  // most of the benchmark's database time.
  Result<std::vector<CompleteOutcome>> complete_tasks(std::span<const TaskCompletion> completions) override {
    std::vector<CompleteOutcome> out(completions.size());
    std::vector<std::size_t> pending(completions.size());
    for (std::size_t i = 0; i < pending.size(); ++i) pending[i] = i;
    while (!pending.empty()) {
      std::vector<std::size_t> round, later;
      std::unordered_map<std::string, bool> seen;
      for (auto i : pending) (seen.emplace(completions[i].task_id, true).second ? round : later).push_back(i);
      Json rows = Json::array();
      for (auto i : round) {
        const auto& c = completions[i];
        std::optional<FailureReason> reason = c.reason;
        if (c.outcome != "succeeded" && c.outcome != "cancelled" && !reason) reason = FailureReason::internal;
        Json reason_text = nullptr;
        if (reason && c.outcome != "succeeded") reason_text = std::string(protocol::failure_reason_name(*reason));
        rows.push_back({{"ord", static_cast<std::int64_t>(i)},
                        {"id", no_nul(c.task_id)},
                        {"fence", c.fence},
                        {"node", no_nul(c.node_id)},
                        {"now", c.now_ms},
                        {"outcome", no_nul(c.outcome)},
                        {"transient", reason && protocol::failure_transient(*reason)},
                        {"not_before", c.retry_not_before_ms},
                        {"exit_code", c.exit_code ? Json(*c.exit_code) : Json(nullptr)},
                        {"reason", reason_text},
                        {"error", no_nul(c.error)},
                        {"output", hex_encode(c.output)},
                        {"truncated", c.output_truncated},
                        {"bytes", c.output_bytes}});
      }
      auto result = run_retrying(R"sql(
WITH c AS (
  SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(ord bigint, id text, fence bigint, node text, now bigint,
    outcome text, transient boolean, not_before bigint, exit_code integer, reason text, error text, output text,
    truncated boolean, bytes bigint)),
cur AS (
  SELECT t.id, t.state, t.fence, t.leased_by, t.attempts, t.max_attempts, t.cancel_requested FROM tasks t
  WHERE t.id = ANY (ARRAY(SELECT id FROM c)) ORDER BY t.id FOR UPDATE OF t),
prev AS (
  SELECT c.ord, a.outcome, a.node_id FROM c JOIN task_attempts a ON a.task_id = c.id AND a.fence = c.fence
  WHERE a.task_id = ANY (ARRAY(SELECT id FROM c))),
nxt AS (
  SELECT c.ord, c.id, CASE WHEN c.outcome = 'succeeded' THEN 'succeeded'
                           WHEN c.outcome = 'cancelled' OR cur.cancel_requested THEN 'cancelled'
                           WHEN NOT c.transient THEN 'failed'
                           WHEN cur.attempts < cur.max_attempts THEN 'queued'
                           ELSE 'dead' END AS state
  FROM c JOIN cur ON cur.id = c.id JOIN prev ON prev.ord = c.ord
  WHERE cur.fence = c.fence AND cur.leased_by = c.node AND cur.state IN ('leased', 'running')
    AND prev.outcome = '' AND prev.node_id = c.node),
upd AS (
  UPDATE tasks t SET state = nxt.state, updated_at_ms = c.now,
    finished_at_ms = CASE WHEN nxt.state = 'queued' THEN NULL ELSE c.now END,
    leased_by = CASE WHEN nxt.state = 'queued' THEN NULL ELSE t.leased_by END,
    not_before_ms = CASE WHEN nxt.state = 'queued' THEN c.not_before ELSE t.not_before_ms END,
    lease_expires_ms = NULL, exit_code = c.exit_code, last_reason = c.reason, last_error = c.error,
    output = decode(c.output, 'hex'), output_truncated = c.truncated, output_bytes = c.bytes
  FROM nxt JOIN c ON c.ord = nxt.ord WHERE t.id = nxt.id AND t.id = ANY (ARRAY(SELECT id FROM nxt))),
att AS (
  UPDATE task_attempts a SET finished_at_ms = c.now, outcome = c.outcome, reason = c.reason,
    exit_code = c.exit_code, error = c.error
  FROM nxt JOIN c ON c.ord = nxt.ord
  WHERE a.task_id = nxt.id AND a.fence = c.fence AND a.task_id = ANY (ARRAY(SELECT id FROM nxt)))
SELECT c.ord, cur.state, prev.outcome, nxt.state, prev.node_id
FROM c LEFT JOIN cur ON cur.id = c.id LEFT JOIN prev ON prev.ord = c.ord LEFT JOIN nxt ON nxt.ord = c.ord
ORDER BY c.ord)sql",
                                 Params().add(dump_json(rows)));
      if (!result) return fail(result.error());
      for (int r = 0; r < result->size(); ++r) {
        const auto i = static_cast<std::size_t>(result->int64(r, 0));
        if (i >= out.size()) continue;
        const auto& c = completions[i];
        if (result->is_null(r, 1)) {
          out[i] = CompleteOutcome{FenceCheck::not_found, TaskState::queued};
          continue;
        }
        const auto stored = protocol::task_state_from(result->text(r, 1)).value_or(TaskState::queued);
        if (!result->is_null(r, 3)) {
          out[i] = CompleteOutcome{FenceCheck::ok, protocol::task_state_from(result->text(r, 3)).value_or(TaskState::queued)};
        } else if (result->is_null(r, 4) || result->text(r, 4) != c.node_id) {
          out[i] = CompleteOutcome{FenceCheck::stale, stored};
        } else {
          const std::string previous = result->text(r, 2);
          if (previous == c.outcome) {
            out[i] = CompleteOutcome{FenceCheck::ok, stored, true};
          } else if (previous.empty() || previous == "lease_lost") {
            out[i] = CompleteOutcome{FenceCheck::stale, stored};
          } else {
            out[i] = CompleteOutcome{FenceCheck::finished, stored};
          }
        }
      }
      pending = std::move(later);
    }
    return out;
  }

  Result<std::optional<TaskRecord>> find_task(std::string_view id) override {
    auto rows = run(std::string("SELECT ") + kTaskColumns + ", output FROM tasks WHERE id = $1::text", Params().add(id));
    if (!rows) return fail(rows.error());
    if (rows->empty()) return std::optional<TaskRecord>{};
    auto t = task_from(*rows, 0);
    t.output = bytea_value(rows->text(0, kTaskOutputColumn));
    return std::optional<TaskRecord>(std::move(t));
  }

  Result<std::vector<TaskRecord>> list_tasks(const TaskQuery& query) override {
    std::optional<std::string> state;
    if (query.state) state = std::string(protocol::task_state_name(*query.state));
    auto rows = run(std::string("SELECT ") + kTaskColumns +
                        " FROM tasks WHERE ($1::text IS NULL OR state = $1::text) AND ($2::text IS NULL OR "
                        "node_id = $2::text OR leased_by = $2::text) ORDER BY seq DESC LIMIT $3::bigint",
                    Params().add(state).add(query.node_id).add(query.limit));
    if (!rows) return fail(rows.error());
    return collect(*rows, task_from);
  }

  Result<std::vector<TaskAttemptRecord>> list_task_attempts(std::string_view task_id) override {
    auto rows = run(std::string("SELECT ") + kAttemptColumns + " FROM task_attempts WHERE task_id = $1::text ORDER BY attempt",
                    Params().add(task_id));
    if (!rows) return fail(rows.error());
    return collect(*rows, attempt_from);
  }

  // One statement: the candidates (a window of the oldest that may run here) are locked with
  // FOR UPDATE SKIP LOCKED, so a task another replica is leasing right now is skipped, never
  // waited for nor leased twice; a recursive walk in submission order takes each one whose
  // reservation still fits the budget (with what the node holds and what it took before),
  // up to max_tasks; those are updated and their attempt rows inserted.
  // The candidates come from two walks on tasks_queued_by_node, each in submission order:
  // the tasks addressed to this node, and those addressed to none. Tasks waiting for other
  // nodes are never read (one scan of the whole queue filtering node ids would read them).
  Result<std::vector<TaskRecord>> lease_tasks(const LeaseQuery& q) override {
    if (q.max_tasks <= 0) return std::vector<TaskRecord>{};
    // ORDER BY node_id first (one value in each walk): the planner then walks the index in
    // its order; by seq alone it would scan tasks_queued and filter out other nodes' tasks.
    // The window (each candidate fits the budget alone; the walk then sums them) is kept
    // small: every row locked and not taken is one more row the other leases skip.
    const std::string window = " ORDER BY t.node_id, t.seq LIMIT $8::bigint * 2 + 4 FOR UPDATE OF t SKIP LOCKED)";
    const std::string sql = std::string("WITH RECURSIVE ") + kHeldSql + R"sql(,
mine AS (
  SELECT t.id, t.seq, t.min_cpu, t.min_mem, t.min_disk FROM tasks t, held h
  WHERE t.node_id = $1::text AND )sql" + kCandidateWhere + window + R"sql(,
anyone AS (
  SELECT t.id, t.seq, t.min_cpu, t.min_mem, t.min_disk FROM tasks t, held h
  WHERE t.node_id IS NULL AND )sql" + kCandidateWhere + window + R"sql(,
cand0 AS (SELECT * FROM mine UNION ALL SELECT * FROM anyone),
cand AS (SELECT cand0.*, row_number() OVER (ORDER BY seq) AS rn FROM cand0),
walk AS (
  SELECT 0::bigint AS rn, NULL::text AS id, h.cpu, h.mem, h.disk, false AS taken, 0::bigint AS n FROM held h
  UNION ALL
  SELECT c.rn, c.id,
    w.cpu + CASE WHEN w.cpu + c.min_cpu <= $5::bigint AND w.mem + c.min_mem <= $6::bigint
                      AND w.disk + c.min_disk <= $7::bigint THEN c.min_cpu ELSE 0 END,
    w.mem + CASE WHEN w.cpu + c.min_cpu <= $5::bigint AND w.mem + c.min_mem <= $6::bigint
                      AND w.disk + c.min_disk <= $7::bigint THEN c.min_mem ELSE 0 END,
    w.disk + CASE WHEN w.cpu + c.min_cpu <= $5::bigint AND w.mem + c.min_mem <= $6::bigint
                       AND w.disk + c.min_disk <= $7::bigint THEN c.min_disk ELSE 0 END,
    w.cpu + c.min_cpu <= $5::bigint AND w.mem + c.min_mem <= $6::bigint AND w.disk + c.min_disk <= $7::bigint,
    w.n + CASE WHEN w.cpu + c.min_cpu <= $5::bigint AND w.mem + c.min_mem <= $6::bigint
                    AND w.disk + c.min_disk <= $7::bigint THEN 1 ELSE 0 END
  FROM walk w JOIN cand c ON c.rn = w.rn + 1
  WHERE w.n < $8::bigint),
fit AS (SELECT id FROM walk WHERE taken),
leased AS (
  UPDATE tasks t SET state = 'leased', leased_by = $1::text, fence = t.fence + 1,
    attempts = t.attempts + 1, lease_expires_ms = $4::bigint + $9::bigint, updated_at_ms = $4::bigint,
    started_at_ms = NULL
  FROM fit WHERE t.id = fit.id
  RETURNING t.*),
attempt AS (
  INSERT INTO task_attempts (task_id, attempt, fence, node_id, leased_at_ms)
  SELECT id, attempts, fence, $1::text, $4::bigint FROM leased)
SELECT )sql" + kTaskColumns + " FROM leased ORDER BY seq";
    Params p;
    p.add(q.node_id).add(labels_text(q.labels)).add(strings_text(q.capabilities)).add(q.now_ms);
    p.add(q.budget.cpu_millis).add(q.budget.mem_bytes).add(q.budget.disk_bytes);
    p.add(q.max_tasks).add(q.lease_ms);
    auto rows = run_retrying(sql, p);
    if (!rows) return fail(rows.error());
    return collect(*rows, task_from);
  }

  Result<std::vector<TaskRecord>> queued_heads(std::int64_t limit) override {
    auto rows = run(std::string("SELECT ") + kTaskColumns +
                        " FROM tasks t WHERE state = 'queued' AND (t.serial_key IS NULL OR NOT EXISTS ("
                        "SELECT 1 FROM tasks o WHERE o.serial_key = t.serial_key AND o.seq < t.seq "
                        "AND o.state IN ('queued', 'leased', 'running'))) ORDER BY seq LIMIT $1::bigint",
                    Params().add(limit));
    if (!rows) return fail(rows.error());
    return collect(*rows, task_from);
  }

  Result<bool> has_work(const LeaseQuery& q) override {
    const std::string sql = std::string("WITH ") + kHeldSql +
                            "\nSELECT EXISTS (SELECT 1 FROM tasks t, held h WHERE " + kCandidateWhere + ")";
    Params p;
    p.add(q.node_id).add(labels_text(q.labels)).add(strings_text(q.capabilities)).add(q.now_ms);
    p.add(q.budget.cpu_millis).add(q.budget.mem_bytes).add(q.budget.disk_bytes);
    auto rows = run(sql, p);
    if (!rows) return fail(rows.error());
    return !rows->empty() && rows->boolean(0, 0);
  }

  Result<ExtendOutcome> extend_lease(std::string_view task_id, std::string_view node_id, std::int64_t fence,
                                     std::int64_t lease_ms, std::int64_t now_ms, bool running) override {
    auto rows = run_retrying(R"sql(
WITH ext AS (
  UPDATE tasks SET lease_expires_ms = $5::bigint + $4::bigint, updated_at_ms = $5::bigint,
    state = CASE WHEN $6::boolean AND state = 'leased' THEN 'running' ELSE state END,
    started_at_ms = CASE WHEN $6::boolean AND state = 'leased' THEN $5::bigint ELSE started_at_ms END
  WHERE id = $1::text AND leased_by = $2::text AND fence = $3::bigint AND state IN ('leased', 'running')
    AND lease_expires_ms > $5::bigint
  RETURNING id, fence, started_at_ms, cancel_requested),
att AS (
  UPDATE task_attempts a SET started_at_ms = ext.started_at_ms FROM ext
  WHERE a.task_id = ext.id AND a.fence = ext.fence AND ext.started_at_ms IS NOT NULL
    AND a.started_at_ms IS DISTINCT FROM ext.started_at_ms)
SELECT 'ok', cancel_requested FROM ext
UNION ALL
SELECT CASE WHEN fence <> $3::bigint OR leased_by IS DISTINCT FROM $2::text THEN 'stale'
            WHEN state IN ('succeeded', 'failed', 'dead', 'cancelled') THEN 'finished'
            ELSE 'stale' END, cancel_requested
FROM tasks WHERE id = $1::text AND NOT EXISTS (SELECT 1 FROM ext))sql",
                             Params().add(task_id).add(node_id).add(fence).add(lease_ms).add(now_ms).add(running));
    if (!rows) return fail(rows.error());
    if (rows->empty()) return ExtendOutcome{FenceCheck::not_found, false};
    const std::string check = rows->text(0, 0);
    const FenceCheck fc = check == "ok" ? FenceCheck::ok : check == "finished" ? FenceCheck::finished : FenceCheck::stale;
    return ExtendOutcome{fc, rows->boolean(0, 1)};
  }

  // One statement: the task row is locked, the attempt of this fence read; only the current
  // leaseholder with the current fence changes anything. The next state is decided here: a
  // transient failure with attempts left goes back to the queue (not before the backoff the
  // service chose), a permanent one fails, the last transient one is dead.
  Result<CompleteOutcome> complete_task(const TaskCompletion& c) override {
    std::optional<FailureReason> reason = c.reason;
    if (c.outcome != "succeeded" && c.outcome != "cancelled" && !reason) reason = FailureReason::internal;
    std::optional<std::string> reason_text;
    if (reason && c.outcome != "succeeded") reason_text = std::string(protocol::failure_reason_name(*reason));
    const bool transient = reason && protocol::failure_transient(*reason);
    Params p;
    p.add(c.task_id).add(c.fence).add(c.node_id).add(c.now_ms).add(c.outcome).add(transient);
    p.add(c.retry_not_before_ms).add(c.exit_code ? std::optional<std::int64_t>(*c.exit_code) : std::nullopt);
    p.add(reason_text).add(c.error).raw(bytea_param(c.output)).add(c.output_truncated).add(c.output_bytes);
    auto rows = run_retrying(R"sql(
WITH cur AS (
  SELECT id, state, fence, leased_by, attempts, max_attempts, cancel_requested FROM tasks
  WHERE id = $1::text FOR UPDATE),
prev AS (
  SELECT outcome, node_id FROM task_attempts WHERE task_id = $1::text AND fence = $2::bigint),
nxt AS (
  SELECT id, CASE WHEN $5::text = 'succeeded' THEN 'succeeded'
                  WHEN $5::text = 'cancelled' OR cancel_requested THEN 'cancelled'
                  WHEN NOT $6::boolean THEN 'failed'
                  WHEN attempts < max_attempts THEN 'queued'
                  ELSE 'dead' END AS state
  FROM cur
  WHERE fence = $2::bigint AND leased_by = $3::text AND state IN ('leased', 'running')
    AND EXISTS (SELECT 1 FROM prev WHERE outcome = '' AND node_id = $3::text)),
upd AS (
  UPDATE tasks t SET state = nxt.state, updated_at_ms = $4::bigint,
    finished_at_ms = CASE WHEN nxt.state = 'queued' THEN NULL ELSE $4::bigint END,
    leased_by = CASE WHEN nxt.state = 'queued' THEN NULL ELSE t.leased_by END,
    not_before_ms = CASE WHEN nxt.state = 'queued' THEN $7::bigint ELSE t.not_before_ms END,
    lease_expires_ms = NULL, exit_code = $8::integer, last_reason = $9::text, last_error = $10::text,
    output = $11::bytea, output_truncated = $12::boolean, output_bytes = $13::bigint
  FROM nxt WHERE t.id = nxt.id),
att AS (
  UPDATE task_attempts a SET finished_at_ms = $4::bigint, outcome = $5::text, reason = $9::text,
    exit_code = $8::integer, error = $10::text
  FROM nxt WHERE a.task_id = nxt.id AND a.fence = $2::bigint)
SELECT (SELECT state FROM cur), (SELECT outcome FROM prev), (SELECT state FROM nxt),
  (SELECT node_id FROM prev))sql",
                             p);
    if (!rows) return fail(rows.error());
    if (rows->empty() || rows->is_null(0, 0)) return CompleteOutcome{FenceCheck::not_found, TaskState::queued};
    const auto stored = protocol::task_state_from(rows->text(0, 0)).value_or(TaskState::queued);
    if (!rows->is_null(0, 2)) {
      return CompleteOutcome{FenceCheck::ok, protocol::task_state_from(rows->text(0, 2)).value_or(TaskState::queued)};
    }
    // No attempt of this fence by this node: someone else's lease.
    if (rows->is_null(0, 3) || rows->text(0, 3) != c.node_id) return CompleteOutcome{FenceCheck::stale, stored};
    // This fence's attempt already ended: the same outcome again is answered as before.
    const std::string previous = rows->text(0, 1);
    if (previous == c.outcome) return CompleteOutcome{FenceCheck::ok, stored, true};
    if (previous.empty() || previous == "lease_lost") return CompleteOutcome{FenceCheck::stale, stored};
    return CompleteOutcome{FenceCheck::finished, stored};
  }

  Result<std::vector<TaskRecord>> expire_leases(std::int64_t now_ms,
                                                const std::function<std::int64_t(std::int64_t)>& backoff_ms) override {
    return in_tx([&](Conn& conn) -> Result<std::vector<TaskRecord>> {
      // Replicas sweeping at once split the expired leases between them (SKIP LOCKED).
      auto expired = exec(conn,
                          "SELECT id, fence, attempts, max_attempts, cancel_requested FROM tasks "
                          "WHERE state IN ('leased', 'running') AND lease_expires_ms <= $1::bigint "
                          "ORDER BY seq LIMIT 1000 FOR UPDATE SKIP LOCKED",
                          Params().add(now_ms));
      if (!expired) return fail(expired.error());
      if (expired->empty()) return rollback(conn, std::vector<TaskRecord>{});
      Json changes = Json::array();
      for (int r = 0; r < expired->size(); ++r) {
        const std::int64_t attempts = expired->int64(r, 2);
        const bool cancelled = expired->boolean(r, 4);
        const bool dead = attempts >= expired->int64(r, 3);
        const TaskState next = cancelled ? TaskState::cancelled : dead ? TaskState::dead : TaskState::queued;
        changes.push_back({{"id", expired->text(r, 0)},
                           {"fence", expired->int64(r, 1)},
                           {"state", protocol::task_state_name(next)},
                           {"final", protocol::task_state_final(next)},
                           {"not_before", next == TaskState::queued ? now_ms + backoff_ms(attempts) : 0}});
      }
      Params p;
      p.add(dump_json(changes)).add(now_ms).add(protocol::failure_reason_name(FailureReason::lease_lost));
      auto rows = exec(conn, std::string(R"sql(
WITH ch AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id text, fence bigint, state text, final boolean,
                                                            not_before bigint)),
att AS (
  UPDATE task_attempts a SET finished_at_ms = $2::bigint, outcome = 'lease_lost', reason = $3::text,
    error = 'the lease of node ' || a.node_id || ' expired'
  FROM ch WHERE a.task_id = ch.id AND a.fence = ch.fence AND a.outcome = ''),
upd AS (
  UPDATE tasks t SET state = ch.state, updated_at_ms = $2::bigint, lease_expires_ms = NULL,
    leased_by = CASE WHEN ch.final THEN t.leased_by ELSE NULL END,
    finished_at_ms = CASE WHEN ch.final THEN $2::bigint ELSE NULL END,
    not_before_ms = CASE WHEN ch.final THEN t.not_before_ms ELSE ch.not_before END,
    last_reason = $3::text, exit_code = NULL,
    last_error = 'attempt ' || t.attempts || ': the lease of node ' || COALESCE(t.leased_by, '?') ||
                 ' expired before it completed'
  FROM ch WHERE t.id = ch.id
  RETURNING t.*)
SELECT )sql") + kTaskColumns + " FROM upd ORDER BY seq",
                       p);
      if (!rows) return fail(rows.error());
      return collect(*rows, task_from);
    });
  }

  Result<CancelOutcome> cancel_task(std::string_view task_id, std::int64_t now_ms) override {
    auto rows = run_retrying(R"sql(
WITH cur AS (SELECT id, state FROM tasks WHERE id = $1::text FOR UPDATE),
upd AS (
  UPDATE tasks t SET
    state = CASE WHEN cur.state = 'queued' THEN 'cancelled' ELSE t.state END,
    finished_at_ms = CASE WHEN cur.state = 'queued' THEN $2::bigint ELSE t.finished_at_ms END,
    last_error = CASE WHEN cur.state = 'queued' THEN 'cancelled by an operator before it ran' ELSE t.last_error END,
    cancel_requested = true, updated_at_ms = $2::bigint
  FROM cur WHERE t.id = cur.id AND cur.state IN ('queued', 'leased', 'running'))
SELECT state FROM cur)sql",
                             Params().add(task_id).add(now_ms));
    if (!rows) return fail(rows.error());
    if (rows->empty()) return CancelOutcome::not_found;
    const auto state = protocol::task_state_from(rows->text(0, 0)).value_or(TaskState::queued);
    if (state == TaskState::queued) return CancelOutcome::cancelled;
    if (state == TaskState::leased || state == TaskState::running) return CancelOutcome::stop_requested;
    return CancelOutcome::already_final;
  }

  Result<std::vector<std::string>> cancelled_among(std::string_view node_id,
                                                   std::span<const std::string> task_ids) override {
    if (task_ids.empty()) return std::vector<std::string>{};
    Json ids = Json::array();
    for (const auto& id : task_ids) ids.push_back(id);
    auto rows = run(
        "SELECT t.id FROM jsonb_array_elements_text($2::jsonb) WITH ORDINALITY AS x(id, ord) "
        "JOIN tasks t ON t.id = x.id WHERE t.leased_by = $1::text AND t.cancel_requested ORDER BY x.ord",
        Params().add(node_id).add(dump_json(ids)));
    if (!rows) return fail(rows.error());
    return collect(*rows, [](const Rows& q, int r) { return q.text(r, 0); });
  }

  Result<std::int64_t> prune_tasks(std::int64_t older_than_ms, std::int64_t keep_per_node) override {
    auto rows = run_retrying(R"sql(
WITH ranked AS (
  SELECT id, finished_at_ms,
         row_number() OVER (PARTITION BY COALESCE(leased_by, node_id, '')
                            ORDER BY finished_at_ms DESC, seq DESC) AS rank
  FROM tasks WHERE state IN ('succeeded', 'failed', 'dead', 'cancelled')),
gone AS (
  DELETE FROM tasks t USING ranked r
  WHERE t.id = r.id AND (r.finished_at_ms < $1::bigint OR r.rank > $2::bigint)
  RETURNING t.id)
SELECT count(*) FROM gone)sql",
                             Params().add(older_than_ms).add(keep_per_node));
    if (!rows) return fail(rows.error());
    return rows->int64(0, 0);
  }

  // ---- modules and assignments ----

  Status upsert_module(const ModuleRecord& m) override {
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

  Result<std::vector<ModuleRecord>> list_modules() override {
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

  Status insert_assignment(const AssignmentRecord& a) override {
    Params p;
    p.add(a.id).add(a.module_name).add(a.module_version).add(a.node_id).add(labels_text(a.selector));
    p.add(a.created_at_ms);
    return run_status(
        "INSERT INTO assignments (id, module_name, module_version, node_id, selector, created_at_ms) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        p);
  }

  Result<std::vector<AssignmentRecord>> list_assignments() override {
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

  Result<bool> delete_assignment(std::string_view id) override {
    auto rows = run("DELETE FROM assignments WHERE id = $1::text", Params().add(id));
    if (!rows) return fail(rows.error());
    return rows->affected() > 0;
  }

  // ---- escrowed keys ----

  Result<std::string> put_escrow_key_if_absent(std::string_view node_id, std::string_view key) override {
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

  Result<std::optional<std::string>> find_escrow_key(std::string_view node_id) override {
    auto rows = run("SELECT key FROM escrow_keys WHERE node_id = $1::text", Params().add(node_id));
    if (!rows) return fail(rows.error());
    if (rows->empty()) return std::optional<std::string>{};
    return std::optional<std::string>(bytea_value(rows->text(0, 0)));
  }

 private:
  // ---- plumbing ----

  std::unexpected<Error> db_error(Conn& conn, const PGresult* res, std::string_view sql) {
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

  Status simple(Conn& conn, const char* sql) {
    PgResultPtr res(PQexec(conn.pg.get(), sql));
    const auto st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return fail(db_error(conn, res.get(), sql).error());
    return {};
  }

  // Prepares `sql` under a fresh name, to be prepared again after `replan_after` runs.
  Result<Prepared*> prepare(Conn& conn, const std::string& sql, std::int64_t replan_after) {
    const std::string name = "s" + std::to_string(++conn.names);
    PgResultPtr res(PQprepare(conn.pg.get(), name.c_str(), sql.c_str(), 0, nullptr));
    if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) return fail(db_error(conn, res.get(), sql).error());
    return &(conn.prepared[sql] = Prepared{name, 0, replan_after});
  }

  // A prepared statement (prepared on this connection at first use, again now and then: see
  // Conn) with text parameters.
  Result<Rows> exec(Conn& conn, const std::string& sql, const Params& params) {
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

  // One statement on a pooled connection (its own transaction).
  Result<Rows> run(const std::string& sql, const Params& params) {
    auto conn = pool_.acquire();
    if (!conn) return fail(conn.error());
    return exec(**conn, sql, params);
  }
  // The same, run again after a deadlock or serialization failure.
  Result<Rows> run_retrying(const std::string& sql, const Params& params) {
    for (int attempt = 0;; ++attempt) {
      auto rows = run(sql, params);
      if (rows || rows.error().code != Errc::temporary || attempt == 4) return rows;
    }
  }
  Status run_status(const std::string& sql, const Params& params) {
    auto rows = run(sql, params);
    if (!rows) return fail(rows.error());
    return {};
  }

  // An outcome that changes nothing: the transaction is rolled back, the value returned.
  template <class T>
  Result<T> rollback(Conn& conn, T value) {
    if (auto ok = simple(conn, "ROLLBACK"); !ok) return fail(ok.error());
    return value;
  }

  // fn(conn) inside BEGIN/COMMIT; a deadlock or serialization failure runs it again.
  template <class Fn>
  auto in_tx(Fn&& fn) -> decltype(fn(std::declval<Conn&>())) {
    for (int attempt = 0;; ++attempt) {
      auto conn = pool_.acquire();
      if (!conn) return fail(conn.error());
      if (auto ok = simple(**conn, "BEGIN"); !ok) return fail(ok.error());
      auto result = fn(**conn);
      const bool open = PQtransactionStatus((**conn).pg.get()) != PQTRANS_IDLE;
      if (result && open) {
        if (auto ok = simple(**conn, "COMMIT"); !ok) {
          if (ok.error().code == Errc::temporary && attempt < 4) continue;
          return fail(ok.error());
        }
        return result;
      }
      if (open) (void)simple(**conn, "ROLLBACK");
      if (!result && result.error().code == Errc::temporary && attempt < 4) continue;
      return result;
    }
  }

  struct EventCounts {
    std::int64_t stored = 0;
    std::int64_t critical = 0;
  };
  // Stores the events not stored yet (per node id), each with the next seq, in batch order;
  // prunes their nodes to the newest kEventsKeptPerNode; returns what was stored per node.
  // Events of unknown nodes are dropped. Event inserts of all replicas take turns (advisory
  // lock until commit): seq then follows commit order and has no holes from duplicates.
  Result<std::unordered_map<std::string, EventCounts>> insert_event_batch(Conn& conn,
                                                                         std::span<const NodeEventRecord> events) {
    Json rows = Json::array();
    std::int64_t ord = 0;
    for (const auto& e : events) {
      rows.push_back({{"ord", ord++},
                      {"node_id", e.node_id},
                      {"event_id", e.event_id},
                      {"severity", e.severity},
                      {"kind", e.kind},
                      {"message", e.message},
                      {"time", e.time},
                      {"received_at_ms", e.received_at_ms}});
    }
    if (auto ok = exec(conn, "SELECT pg_advisory_xact_lock($1::bigint)", Params().add(kEventLockKey)); !ok) {
      return fail(ok.error());
    }
    auto stored = exec(conn, R"sql(
WITH ev AS (
  INSERT INTO node_events (node_id, event_id, severity, kind, message, time, received_at_ms)
  SELECT node_id, event_id, severity, kind, message, time, received_at_ms FROM (
    SELECT DISTINCT ON (e.node_id, e.event_id) e.*
    FROM jsonb_to_recordset($1::jsonb) AS e(ord bigint, node_id text, event_id text, severity text,
      kind text, message text, time text, received_at_ms bigint)
    WHERE EXISTS (SELECT 1 FROM nodes n WHERE n.id = e.node_id)
      AND NOT EXISTS (SELECT 1 FROM node_events x WHERE x.node_id = e.node_id AND x.event_id = e.event_id)
    ORDER BY e.node_id, e.event_id, e.ord) fresh
  ORDER BY ord
  ON CONFLICT (node_id, event_id) DO NOTHING
  RETURNING node_id, severity)
SELECT node_id, count(*), count(*) FILTER (WHERE severity = 'critical') FROM ev GROUP BY node_id)sql",
                       Params().add(dump_json(rows)));
    if (!stored) return fail(stored.error());
    std::unordered_map<std::string, EventCounts> counts;
    Json touched = Json::array();
    for (int r = 0; r < stored->size(); ++r) {
      counts[stored->text(r, 0)] = {stored->int64(r, 1), stored->int64(r, 2)};
      touched.push_back(stored->text(r, 0));
    }
    if (!touched.empty()) {
      auto pruned = exec(conn, R"sql(
DELETE FROM node_events e USING (
  SELECT node_id, seq FROM (
    SELECT node_id, seq, row_number() OVER (PARTITION BY node_id ORDER BY seq DESC) AS rank
    FROM node_events WHERE node_id IN (SELECT jsonb_array_elements_text($1::jsonb))) ranked
  WHERE rank > $2::bigint) old
WHERE e.node_id = old.node_id AND e.seq = old.seq)sql",
                         Params().add(dump_json(touched)).add(std::int64_t{kEventsKeptPerNode}));
      if (!pruned) return fail(pruned.error());
    }
    return counts;
  }

  Status insert_certificate(Conn& conn, const CertRecord& c) {
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

  Result<int> read_schema_version(Conn& conn) {
    auto rows = exec(conn, "SELECT COALESCE(MAX(version), 0) FROM schema_version", Params());
    if (!rows) return fail(rows.error());
    return static_cast<int>(rows->int64(0, 0));
  }

  Status migrate() {
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

  Pool pool_;
};

}  // namespace

Result<std::unique_ptr<Store>> open_postgres_store(const std::string& url, PostgresOptions options) {
  auto store = std::make_unique<PostgresStore>(url, options);
  if (auto ok = store->open(); !ok) return fail(ok.error().with_context("store"));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace cairn::control
