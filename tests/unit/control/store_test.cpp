#include <doctest/doctest.h>

#include <sqlite3.h>

#include <string>

#include "control/store/sqlite.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::test;

namespace {

// Reads one text value straight from the file, bypassing the store under test.
std::string sql_value(const std::filesystem::path& db, const char* sql) {
  sqlite3* raw = nullptr;
  REQUIRE(sqlite3_open_v2(db.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  std::unique_ptr<sqlite3, decltype(&sqlite3_close)> conn(raw, &sqlite3_close);
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(raw, sql, -1, &stmt, nullptr) == SQLITE_OK);
  std::string out;
  if (sqlite3_step(stmt) == SQLITE_ROW) out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
  sqlite3_finalize(stmt);
  return out;
}

}  // namespace

TEST_CASE("opening a database twice applies each migration once and records the version") {
  TempDir dir;
  const auto db = dir.path() / "control.db";
  {
    auto store = control::open_sqlite_store(db);
    REQUIRE_MESSAGE(store, (store ? "" : store.error().message));
    CHECK((*store)->schema_version() == 6);
    control::TokenRecord t;
    t.id = "t1";
    t.hash = std::string(64, 'a');
    t.expires_at_ms = 1000;
    REQUIRE((*store)->insert_token(t));
  }
  {
    auto store = control::open_sqlite_store(db);
    REQUIRE(store);
    CHECK((*store)->schema_version() == 6);
    auto tokens = (*store)->list_tokens();
    REQUIRE(tokens);
    CHECK(tokens->size() == 1);  // data kept, nothing re-created
  }
  // Each version once (4 is the module manifest's, h-modctl; 5 the task indexes, h-taskbatch).
  CHECK(sql_value(db, "SELECT COUNT(*) = COUNT(DISTINCT version) FROM schema_version") == "1");
  CHECK(sql_value(db, "SELECT MAX(version) FROM schema_version") == "6");
  CHECK(sql_value(db, "PRAGMA journal_mode") == "wal");
}

TEST_CASE("a database from a newer cairn-control is refused") {
  TempDir dir;
  const auto db = dir.path() / "control.db";
  REQUIRE(control::open_sqlite_store(db));
  sqlite3* raw = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &raw) == SQLITE_OK);
  REQUIRE(sqlite3_exec(raw, "INSERT INTO schema_version VALUES (99, 0)", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(raw);
  auto store = control::open_sqlite_store(db);
  REQUIRE(!store);
  CHECK(store.error().code == Errc::config);
}

TEST_CASE("a heartbeat for an unknown node fails alone, the rest of the batch commits") {
  TempDir dir;
  auto store = control::open_sqlite_store(dir.path() / "control.db");
  REQUIRE(store);
  control::TokenRecord t;
  t.id = "t1";
  t.hash = "h";
  t.expires_at_ms = 10'000;
  t.max_uses = 5;
  REQUIRE((*store)->insert_token(t));
  control::EnrollmentCommit c;
  c.token_id = "t1";
  c.now_ms = 1;
  c.node.id = "n1";
  c.cert.serial_hex = "01";
  c.cert.node_id = "n1";
  c.cert.reason = "enroll";
  auto outcome = (*store)->commit_enrollment(c);
  REQUIRE(outcome);
  REQUIRE(*outcome == control::EnrollmentOutcome::committed);
  std::vector<control::HeartbeatRecord> batch = {{"n1", 5, {}}, {"ghost", 5, {}}, {"n1", 6, {}}};
  auto results = (*store)->write_heartbeats(batch);
  REQUIRE(results);
  CHECK((*results)[0]);
  CHECK(!(*results)[1]);
  CHECK((*results)[2]);
  auto node = (*store)->find_node("n1");
  REQUIRE(node);
  REQUIRE(*node);
  CHECK((*node)->status->heartbeats == 2);
  CHECK((*node)->status->last_seen_ms == 6);

  // an expired token is not consumed, and nothing of the enrollment is written
  c.now_ms = 20'000;
  c.node.id = "n2";
  c.cert.serial_hex = "02";
  c.cert.node_id = "n2";
  outcome = (*store)->commit_enrollment(c);
  REQUIRE(outcome);
  CHECK(*outcome == control::EnrollmentOutcome::token_unavailable);
  auto n2 = (*store)->find_node("n2");
  REQUIRE(n2);
  CHECK(!*n2);
  CHECK(*(*store)->enrollments_total() == 1);
}

namespace {

// Every line of EXPLAIN QUERY PLAN for `sql` (its detail column), one per line.
std::string query_plan(const std::filesystem::path& db, const std::string& sql) {
  sqlite3* raw = nullptr;
  REQUIRE(sqlite3_open_v2(db.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  std::unique_ptr<sqlite3, decltype(&sqlite3_close)> conn(raw, &sqlite3_close);
  sqlite3_stmt* stmt = nullptr;
  const std::string explain = "EXPLAIN QUERY PLAN " + sql;
  REQUIRE_MESSAGE(sqlite3_prepare_v2(raw, explain.c_str(), -1, &stmt, nullptr) == SQLITE_OK, sqlite3_errmsg(raw));
  std::string out;
  while (sqlite3_step(stmt) == SQLITE_ROW) out += std::string(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 3))) + "\n";
  sqlite3_finalize(stmt);
  return out;
}

}  // namespace

// The task queries of sqlite.cpp against the indexes of migration 5: each one searches an
// index; none reads the whole table (the queue's hot paths) but pruning, which ranks every
// final task by design.
TEST_CASE("the task queries use the indexes migration 5 keeps") {
  TempDir dir;
  const auto db = dir.path() / "control.db";
  REQUIRE(control::open_sqlite_store(db));
  const std::string serial_head =
      "(t.serial_key IS NULL OR NOT EXISTS (SELECT 1 FROM tasks o WHERE o.serial_key = t.serial_key "
      "AND o.seq < t.seq AND o.state IN ('queued', 'leased', 'running')))";
  struct Case {
    const char* what;
    std::string sql;
    const char* index;
  };
  const Case cases[] = {
      {"lease: this node's walk",
       "SELECT seq FROM tasks t INDEXED BY tasks_queued_by_node WHERE state = 'queued' AND node_id = ?1 "
       "AND not_before_ms <= ?2 AND " + serial_head + " ORDER BY seq",
       "tasks_queued_by_node"},
      {"lease: the walk of tasks for any node",
       "SELECT seq FROM tasks t INDEXED BY tasks_queued_by_node WHERE state = 'queued' AND node_id IS NULL "
       "AND not_before_ms <= ?2 AND " + serial_head + " ORDER BY seq",
       "tasks_queued_by_node"},
      {"lease: what the node holds",
       "SELECT SUM(min_cpu_millis) FROM tasks WHERE leased_by = ?1 AND state IN ('leased', 'running')", "tasks_open"},
      {"queued_heads", "SELECT seq FROM tasks t WHERE state = 'queued' AND " + serial_head + " ORDER BY seq LIMIT 10",
       "tasks_queued"},
      {"the serial key's head (inside queued_heads and the walks)",
       "SELECT seq FROM tasks t WHERE state = 'queued' AND " + serial_head + " ORDER BY seq LIMIT 10",
       "tasks_serial_open"},
      {"the expiry sweep",
       "SELECT seq FROM tasks INDEXED BY tasks_open WHERE lease_expires_ms <= ?1 AND state IN ('leased', 'running') "
       "ORDER BY seq",
       "tasks_open"},
      {"task list --node",
       "SELECT seq FROM tasks WHERE (?1 IS NULL OR state = ?1) AND (node_id = ?2 OR leased_by = ?2) "
       "ORDER BY seq DESC LIMIT 5",
       "tasks_by_holder"},
      {"complete and extend", "SELECT seq FROM tasks WHERE id = ?1", "sqlite_autoindex_tasks"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    const std::string plan = query_plan(db, c.sql);
    CAPTURE(plan);
    CHECK(plan.find(c.index) != std::string::npos);
    CHECK(plan.find("SCAN tasks\n") == std::string::npos);
    CHECK(plan.find("SCAN t\n") == std::string::npos);
  }
  // The indexes every lease and completion rewrote are gone.
  for (const char* gone : {"tasks_by_state", "tasks_by_lease_expiry", "tasks_by_finish", "tasks_by_serial_key"}) {
    CHECK(sql_value(db, ("SELECT COUNT(*) FROM sqlite_master WHERE name = '" + std::string(gone) + "'").c_str()) == "0");
  }
}
