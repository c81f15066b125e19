// The Store backends the store cases run against (tests/unit/control/store_tasks_test.cpp):
// each is a type with a name and `open()`, listed in CAIRN_STORE_BACKENDS for doctest's
// TEST_CASE_TEMPLATE. A backend that cannot run here (no PostgreSQL server) returns no store
// and a reason, and the case is skipped with it, never counted as passed.
#pragma once

#include <doctest/doctest.h>

#include <memory>
#include <string>

#include "control/store/postgres.hpp"
#include "control/store/sqlite.hpp"
#include "control/store/store.hpp"
#include "tests/support/postgres.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {

struct OpenedStore {
  std::unique_ptr<control::Store> store;  // null: skipped, see skip_reason
  std::string skip_reason;
  std::shared_ptr<void> keep;  // whatever must outlive the store (a temp dir, a database)
  std::string location;        // the database file or URL: Backend::open_again opens it once more
};

struct SqliteBackend {
  static constexpr const char* kName = "sqlite";
  static OpenedStore open() {
    auto dir = std::make_shared<TempDir>();
    auto store = control::open_sqlite_store(dir->path() / "control.db");
    if (!store) return {nullptr, "sqlite: " + store.error().message, dir, ""};
    return {std::move(*store), "", dir, (dir->path() / "control.db").string()};
  }
  // A second store on the same database (another process on the state dir, in effect).
  static std::unique_ptr<control::Store> open_again(const OpenedStore& first) {
    auto store = control::open_sqlite_store(first.location);
    REQUIRE_MESSAGE(store, (store ? "" : store.error().message));
    return std::move(*store);
  }
};

// A fresh database on the test binary's PostgreSQL server (tests/support/postgres: started at
// first use, as an unprivileged user, on 127.0.0.1). Skipped only when PostgreSQL is not
// installed; a server that is installed but does not start fails the case.
struct PostgresBackend {
  static constexpr const char* kName = "postgresql";
  static OpenedStore open() {
    std::string why;
    PostgresServer* server = shared_postgres(why);
    if (server == nullptr) {
      if (PostgresServer::unavailable_reason()) return {nullptr, why, nullptr, ""};
      FAIL("PostgreSQL is installed but did not start: " << why);
    }
    auto url = fresh_postgres_database(*server);
    REQUIRE_MESSAGE(url, (url ? "" : url.error().message));
    auto store = control::open_postgres_store(*url);
    REQUIRE_MESSAGE(store, (store ? "" : store.error().message));
    return {std::move(*store), "", nullptr, *url};
  }
  // A second store on the same database (another replica, in effect).
  static std::unique_ptr<control::Store> open_again(const OpenedStore& first) {
    auto store = control::open_postgres_store(first.location);
    REQUIRE_MESSAGE(store, (store ? "" : store.error().message));
    return std::move(*store);
  }
};

}  // namespace cairn::test

// Each backend type, comma separated (the PostgreSQL one adds itself here).
#define CAIRN_STORE_BACKENDS ::cairn::test::SqliteBackend, ::cairn::test::PostgresBackend

// Opens the backend under test as `store` (a control::Store&) or skips the case.
#define CAIRN_OPEN_STORE(Backend)                                                        \
  auto opened_store_ = Backend::open();                                                  \
  if (!opened_store_.store) CAIRN_SKIP(std::string(Backend::kName) + ": " + opened_store_.skip_reason); \
  ::cairn::control::Store& store = *opened_store_.store
