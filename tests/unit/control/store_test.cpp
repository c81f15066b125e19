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
    CHECK((*store)->schema_version() == 4);  // 4: the module manifest (h-modctl)
    control::TokenRecord t;
    t.id = "t1";
    t.hash = std::string(64, 'a');
    t.expires_at_ms = 1000;
    REQUIRE((*store)->insert_token(t));
  }
  {
    auto store = control::open_sqlite_store(db);
    REQUIRE(store);
    CHECK((*store)->schema_version() == 4);  // 4: the module manifest (h-modctl)
    auto tokens = (*store)->list_tokens();
    REQUIRE(tokens);
    CHECK(tokens->size() == 1);  // data kept, nothing re-created
  }
  CHECK(sql_value(db, "SELECT COUNT(*) FROM schema_version") == "4");
  CHECK(sql_value(db, "SELECT MAX(version) FROM schema_version") == "4");
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
