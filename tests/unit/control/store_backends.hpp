// The Store backends the store cases run against (tests/unit/control/store_tasks_test.cpp):
// each is a type with a name and `open()`, listed in CAIRN_STORE_BACKENDS for doctest's
// TEST_CASE_TEMPLATE. A backend that cannot run here (no PostgreSQL server) returns no store
// and a reason, and the case is skipped with it, never counted as passed.
#pragma once

#include <memory>
#include <string>

#include "control/store/sqlite.hpp"
#include "control/store/store.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {

struct OpenedStore {
  std::unique_ptr<control::Store> store;  // null: skipped, see skip_reason
  std::string skip_reason;
  std::shared_ptr<void> keep;  // whatever must outlive the store (a temp dir, a database)
};

struct SqliteBackend {
  static constexpr const char* kName = "sqlite";
  static OpenedStore open() {
    auto dir = std::make_shared<TempDir>();
    auto store = control::open_sqlite_store(dir->path() / "control.db");
    if (!store) return {nullptr, "sqlite: " + store.error().message, dir};
    return {std::move(*store), "", dir};
  }
};

}  // namespace cairn::test

// Each backend type, comma separated (the PostgreSQL one adds itself here).
#define CAIRN_STORE_BACKENDS ::cairn::test::SqliteBackend

// Opens the backend under test as `store` (a control::Store&) or skips the case.
#define CAIRN_OPEN_STORE(Backend)                                                        \
  auto opened_store_ = Backend::open();                                                  \
  if (!opened_store_.store) CAIRN_SKIP(std::string(Backend::kName) + ": " + opened_store_.skip_reason); \
  ::cairn::control::Store& store = *opened_store_.store
