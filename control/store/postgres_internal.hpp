// The PostgreSQL backend's own header: the class behind open_postgres_store and the helpers its
// files share (connection pool, parameters, rows, statement cache). Included only by the
// postgres*.cpp files: libpq is spoken by this backend's own files and no others (STYLE.md 3,
// read as "one backend's files": the backend is split by concern into postgres.cpp (pool,
// plumbing, migrations), postgres_nodes.cpp, postgres_tasks.cpp, postgres_events.cpp and
// postgres_modules.cpp).
#pragma once

#include <libpq-fe.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/json.hpp"
#include "control/store/postgres.hpp"
#include "control/store/records.hpp"
#include "control/store/store.hpp"

namespace cairn::control::postgres_internal {

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

inline std::string hex_encode(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char ch : bytes) {
    out.push_back(kDigits[ch >> 4]);
    out.push_back(kDigits[ch & 0xf]);
  }
  return out;
}

inline std::string hex_decode(std::string_view hex) {
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
inline std::string no_nul(std::string_view v) {
  std::string s(v);
  std::erase(s, '\0');
  return s;
}

// bytea in text format: \x followed by hex digits (bytea_output = hex, the default).
inline std::string bytea_param(std::string_view bytes) { return "\\x" + hex_encode(bytes); }
inline std::string bytea_value(std::string_view text) {
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

// Row r of a result, as the backend-neutral conversions of records.hpp read it.
class RowAt final : public stored_form::StoredRow {
 public:
  RowAt(const Rows& rows, int r) : rows_(rows), r_(r) {}
  [[nodiscard]] bool is_null(int col) const override { return rows_.is_null(r_, col); }
  [[nodiscard]] std::string text(int col) const override { return rows_.text(r_, col); }
  [[nodiscard]] std::int64_t int64(int col) const override { return rows_.int64(r_, col); }
  [[nodiscard]] double real(int col) const override { return rows_.real(r_, col); }
  [[nodiscard]] bool boolean(int col) const override { return rows_.boolean(r_, col); }

 private:
  const Rows& rows_;
  int r_;
};

// The shared conversions in the shape collect() takes: from(rows, r).
inline NodeRecord node_from(const Rows& q, int r) { return stored_form::node_from(RowAt(q, r)); }
inline TokenRecord token_from(const Rows& q, int r) { return stored_form::token_from(RowAt(q, r)); }
inline CertRecord cert_from(const Rows& q, int r) { return stored_form::cert_from(RowAt(q, r)); }
inline AdminCertRecord admin_from(const Rows& q, int r) { return stored_form::admin_from(RowAt(q, r)); }
inline NodeEventRecord event_from(const Rows& q, int r) { return stored_form::event_from(RowAt(q, r)); }
inline TaskAttemptRecord attempt_from(const Rows& q, int r) { return stored_form::attempt_from(RowAt(q, r)); }

using stored_form::cert_status_from;
using stored_form::labels_from;
using stored_form::labels_text;
using stored_form::modules_from;
using stored_form::modules_text;
using stored_form::strings_from;
using stored_form::strings_text;
using stored_form::kAdminColumns;
using stored_form::kAttemptColumns;
using stored_form::kCertColumns;
using stored_form::kEventColumns;
using stored_form::kNodeColumns;
using stored_form::kTokenColumns;

template <class Fn>
auto collect(const Rows& q, Fn&& from) -> std::vector<decltype(from(q, 0))> {
  std::vector<decltype(from(q, 0))> out;
  out.reserve(static_cast<std::size_t>(q.size()));
  for (int r = 0; r < q.size(); ++r) out.push_back(from(q, r));
  return out;
}

class PostgresStore final : public Store {
 public:
  PostgresStore(std::string url, const PostgresOptions& options) : pool_(std::move(url), options.max_connections) {}

  Status open() { return migrate(); }
  int schema_version() override;

  // ---- tokens ----
  Status insert_token(const TokenRecord& t) override;
  Result<std::optional<TokenRecord>> find_token_by_hash(std::string_view hash) override;
  Result<std::vector<TokenRecord>> list_tokens() override;
  Result<bool> revoke_token(std::string_view id) override;

  // ---- enrollment and certificates ----
  Result<EnrollmentOutcome> commit_enrollment(const EnrollmentCommit& c) override;
  Result<std::int64_t> enrollments_total() override;
  Result<RotationOutcome> commit_rotation(std::string_view old_serial, const CertRecord& fresh) override;
  Status confirm_rotation(std::string_view new_serial, std::int64_t retire_at_ms) override;
  Result<std::vector<CertRecord>> list_certificates(std::string_view node_id) override;

  // ---- nodes ----
  Result<std::optional<NodeRecord>> find_node(std::string_view id) override;
  Result<std::vector<NodeRecord>> list_nodes() override;
  Result<bool> revoke_node(std::string_view id, std::int64_t now_ms) override;
  Result<bool> allow_reenroll(std::string_view id, std::int64_t until_ms) override;

  // ---- events ----
  Result<std::vector<NodeEventRecord>> recent_events(std::string_view node_id) override;
  Result<std::vector<NodeEventRecord>> list_events(const EventQuery& query) override;
  Result<std::int64_t> insert_events(std::span<const NodeEventRecord> events) override;

  // ---- admin credentials ----
  Status insert_admin_cert(const AdminCertRecord& a) override;
  Result<std::vector<AdminCertRecord>> list_admin_certs() override;
  Result<std::int64_t> revoke_admin(std::string_view name, std::int64_t now_ms) override;
  Result<std::map<std::string, std::int64_t>> count_tasks() override;
  Result<std::int64_t> auth_generation() override;

  // ---- heartbeats: the batch in one transaction, three statements at most ----
  Result<std::vector<Status>> write_heartbeats(std::span<const HeartbeatRecord> batch) override;
  Result<AuthSnapshot> load_auth_snapshot(std::int64_t now_ms) override;

  // ---- tasks ----
  Result<SubmitOutcome> submit_task(const TaskRecord& t) override;
  Result<std::vector<SubmitOutcome>> submit_tasks(std::span<const TaskRecord> tasks) override;
  Result<std::vector<CompleteOutcome>> complete_tasks(std::span<const TaskCompletion> completions) override;
  Result<std::optional<TaskRecord>> find_task(std::string_view id) override;
  Result<std::vector<TaskRecord>> list_tasks(const TaskQuery& query) override;
  Result<std::vector<TaskAttemptRecord>> list_task_attempts(std::string_view task_id) override;
  Result<std::vector<TaskRecord>> lease_tasks(const LeaseQuery& q) override;
  Result<std::vector<TaskRecord>> queued_heads(std::int64_t limit) override;
  Result<bool> has_work(const LeaseQuery& q) override;
  Result<ExtendOutcome> extend_lease(std::string_view task_id, std::string_view node_id, std::int64_t fence,
                                     std::int64_t lease_ms, std::int64_t now_ms, bool running) override;
  Result<CompleteOutcome> complete_task(const TaskCompletion& c) override;
  Result<std::vector<TaskRecord>> expire_leases(std::int64_t now_ms,
                                                const std::function<std::int64_t(std::int64_t)>& backoff_ms) override;
  Result<CancelOutcome> cancel_task(std::string_view task_id, std::int64_t now_ms) override;
  Result<std::vector<std::string>> cancelled_among(std::string_view node_id,
                                                   std::span<const std::string> task_ids) override;
  Result<std::int64_t> prune_tasks(std::int64_t older_than_ms, std::int64_t keep_per_node) override;

  // ---- modules and assignments ----
  Status upsert_module(const ModuleRecord& m) override;
  Result<std::vector<ModuleRecord>> list_modules() override;
  Status insert_assignment(const AssignmentRecord& a) override;
  Result<std::vector<AssignmentRecord>> list_assignments() override;
  Result<bool> delete_assignment(std::string_view id) override;
  Result<ModulePolicyPut> put_module_policy(const ModulePolicyRecord& policy) override;
  Result<std::optional<ModulePolicyRecord>> find_module_policy() override;

  // ---- escrowed keys ----
  Result<std::string> put_escrow_key_if_absent(std::string_view node_id, std::string_view key) override;
  Result<std::optional<std::string>> find_escrow_key(std::string_view node_id) override;

 private:

  // ---- plumbing ----
  std::unexpected<Error> db_error(Conn& conn, const PGresult* res, std::string_view sql);

  Status simple(Conn& conn, const char* sql);

  // Prepares `sql` under a fresh name, to be prepared again after `replan_after` runs.
  Result<Prepared*> prepare(Conn& conn, const std::string& sql, std::int64_t replan_after);

  // A prepared statement (prepared on this connection at first use, again now and then: see
  // Conn) with text parameters.
  Result<Rows> exec(Conn& conn, const std::string& sql, const Params& params);

  // One statement on a pooled connection (its own transaction).
  Result<Rows> run(const std::string& sql, const Params& params);
  // The same, run again after a deadlock or serialization failure.
  Result<Rows> run_retrying(const std::string& sql, const Params& params);

  // ---- tasks (postgres_tasks.cpp) ----
  // A completion's view of its attempt, read again when its own snapshot predates the commit
  // of the same attempt by another replica (see the definition).
  std::string settled_outcome(const TaskCompletion& c, TaskState stored, std::string seen);
  Status run_status(const std::string& sql, const Params& params);

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
                                                                         std::span<const NodeEventRecord> events);

  Status insert_certificate(Conn& conn, const CertRecord& c);

  Result<int> read_schema_version(Conn& conn);

  Status migrate();

  Pool pool_;
};

}  // namespace cairn::control::postgres_internal
