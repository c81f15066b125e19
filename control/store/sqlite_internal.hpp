// The SQLite backend's own header: the class behind open_sqlite_store and the helpers its
// files share (the connection, prepared statements, transactions). Included only by the
// sqlite*.cpp files: sqlite3 is spoken by this backend's own files and no others (STYLE.md 3,
// read as "one backend's files": the backend is split by concern into sqlite.cpp (connection,
// statements, migrations), sqlite_nodes.cpp, sqlite_tasks.cpp, sqlite_events.cpp and
// sqlite_modules.cpp).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
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
#include "control/store/records.hpp"
#include "control/store/sqlite.hpp"
#include "control/store/store.hpp"

namespace cairn::control::sqlite_internal {

struct DbCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

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

// The current row of a query, as the backend-neutral conversions of records.hpp read it.
class CurrentRow final : public stored_form::StoredRow {
 public:
  explicit CurrentRow(const Query& q) : q_(q) {}
  [[nodiscard]] bool is_null(int col) const override { return q_.is_null(col); }
  [[nodiscard]] std::string text(int col) const override { return q_.text(col); }
  [[nodiscard]] std::int64_t int64(int col) const override { return q_.int64(col); }
  [[nodiscard]] double real(int col) const override { return q_.real(col); }
  [[nodiscard]] bool boolean(int col) const override { return q_.int64(col) != 0; }

 private:
  const Query& q_;
};

// The shared conversions in the shape collect() takes: from(query).
inline NodeRecord node_from(const Query& q) { return stored_form::node_from(CurrentRow(q)); }
inline TokenRecord token_from(const Query& q) { return stored_form::token_from(CurrentRow(q)); }
inline CertRecord cert_from(const Query& q) { return stored_form::cert_from(CurrentRow(q)); }
inline AdminCertRecord admin_from(const Query& q) { return stored_form::admin_from(CurrentRow(q)); }
inline NodeEventRecord event_from(const Query& q) { return stored_form::event_from(CurrentRow(q)); }
inline TaskAttemptRecord attempt_from(const Query& q) { return stored_form::attempt_from(CurrentRow(q)); }

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

class SqliteStore final : public Store {
 public:
  Status open(const std::filesystem::path& file);
  int schema_version() override;
  Status insert_token(const TokenRecord& t) override;
  Result<std::optional<TokenRecord>> find_token_by_hash(std::string_view hash) override;
  Result<std::vector<TokenRecord>> list_tokens() override;
  Result<bool> revoke_token(std::string_view id) override;
  Result<EnrollmentOutcome> commit_enrollment(const EnrollmentCommit& c) override;
  Result<std::int64_t> enrollments_total() override;
  Result<RotationOutcome> commit_rotation(std::string_view old_serial, const CertRecord& fresh) override;
  Status confirm_rotation(std::string_view new_serial, std::int64_t retire_at_ms) override;
  Result<std::vector<CertRecord>> list_certificates(std::string_view node_id) override;
  Result<std::optional<NodeRecord>> find_node(std::string_view id) override;
  Result<std::vector<NodeRecord>> list_nodes() override;
  Result<bool> revoke_node(std::string_view id, std::int64_t now_ms) override;
  Result<bool> allow_reenroll(std::string_view id, std::int64_t until_ms) override;
  Result<std::vector<NodeEventRecord>> recent_events(std::string_view node_id) override;
  Result<std::vector<NodeEventRecord>> list_events(const EventQuery& query_spec) override;
  Result<std::int64_t> insert_events(std::span<const NodeEventRecord> events) override;
  Status insert_admin_cert(const AdminCertRecord& a) override;
  Result<std::vector<AdminCertRecord>> list_admin_certs() override;
  Result<std::int64_t> revoke_admin(std::string_view name, std::int64_t now_ms) override;
  Result<std::map<std::string, std::int64_t>> count_tasks() override;
  Result<std::int64_t> auth_generation() override;
  Result<std::vector<Status>> write_heartbeats(std::span<const HeartbeatRecord> batch) override;
  Result<AuthSnapshot> load_auth_snapshot(std::int64_t now_ms) override;

  // ---- tasks (issue 13) ----
  Result<SubmitOutcome> submit_task(const TaskRecord& t) override;
  Result<std::vector<SubmitOutcome>> submit_tasks(std::span<const TaskRecord> tasks) override;
  Result<SubmitOutcome> submit_locked(const TaskRecord& t);
  Result<std::optional<TaskRecord>> find_task(std::string_view id) override;
  Result<std::vector<TaskRecord>> list_tasks(const TaskQuery& spec) override;
  Result<std::vector<TaskAttemptRecord>> list_task_attempts(std::string_view task_id) override;
  Result<std::vector<TaskRecord>> lease_tasks(const LeaseQuery& lq) override;
  Result<bool> has_work(const LeaseQuery& lq) override;
  Result<std::vector<TaskRecord>> queued_heads(std::int64_t limit) override;
  Result<ExtendOutcome> extend_lease(std::string_view task_id, std::string_view node_id, std::int64_t fence,
                                     std::int64_t lease_ms, std::int64_t now_ms, bool running) override;
  Result<CompleteOutcome> complete_task(const TaskCompletion& c) override;
  Result<std::vector<CompleteOutcome>> complete_tasks(std::span<const TaskCompletion> completions) override;
  Result<CompleteOutcome> complete_locked(const TaskCompletion& c);
  Result<std::vector<TaskRecord>> expire_leases(std::int64_t now_ms,
                                                const std::function<std::int64_t(std::int64_t)>& backoff_ms) override;
  Result<CancelOutcome> cancel_task(std::string_view task_id, std::int64_t now_ms) override;
  Result<std::vector<std::string>> cancelled_among(std::string_view node_id,
                                                   std::span<const std::string> task_ids) override;
  Result<std::int64_t> prune_tasks(std::int64_t older_than_ms, std::int64_t keep_per_node) override;

  // ---- module catalog and assignments (issue 14) ----
  Status upsert_module(const ModuleRecord& m) override;
  Result<std::vector<ModuleRecord>> list_modules() override;
  Status insert_assignment(const AssignmentRecord& a) override;
  Result<std::vector<AssignmentRecord>> list_assignments() override;
  Result<bool> delete_assignment(std::string_view id) override;
  Result<ModulePolicyPut> put_module_policy(const ModulePolicyRecord& policy) override;
  Result<std::optional<ModulePolicyRecord>> find_module_policy() override;

  // ---- escrowed volume keys (issue 15) ----
  Result<std::string> put_escrow_key_if_absent(std::string_view node_id, std::string_view key) override;
  Result<std::optional<std::string>> find_escrow_key(std::string_view node_id) override;

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

  Result<std::optional<TaskRecord>> select_task_locked(const char* where, std::string_view value, bool with_output);

  // The ids of up to `max` queued tasks this node may lease now, in submission order.
  Result<std::vector<std::string>> pick_locked(const LeaseQuery& lq, std::int64_t max);

  Status bump_auth_locked();

  Result<std::optional<std::string>> find_escrow_key_locked(std::string_view node_id);

  // true: stored; false: the node already has an event with this id (dropped).
  Result<bool> insert_event_locked(const NodeEventRecord& e);

  Status prune_events_locked(std::string_view node_id);

  Result<Transaction> begin();

  Status exec(const char* sql);

  // Prepared statements are compiled once per connection and reused.
  Result<Query> query(const std::string& sql);

  Result<int> read_schema_version();

  Status migrate();

  Status insert_certificate_locked(const CertRecord& c);

  // A failed statement inside the batch does not abort the transaction in SQLite (only the
  // statement is undone), so one bad record fails alone.
  Status write_one_heartbeat(const HeartbeatRecord& r);

  std::mutex mutex_;  // one connection, one user at a time
  DbPtr db_;
  std::unordered_map<std::string, StmtPtr> stmts_;
  std::filesystem::path path_;
};

}  // namespace cairn::control::sqlite_internal
