// Picks the Store backend for `cairn-control serve --database`: SQLite in the state dir by
// default (or at a given file path), PostgreSQL for a postgresql:// (or postgres://) URL.
#pragma once

#include <memory>
#include <string_view>

#include "common/result.hpp"
#include "control/state_paths.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

// Whether `database` names a PostgreSQL database (shared by replicas) rather than a file.
bool is_postgres_url(std::string_view database);

// Empty: the state dir's control.db. A postgresql:// URL: that database (migrated). Anything
// else: an SQLite file at that path.
Result<std::unique_ptr<Store>> open_store(const StatePaths& state, std::string_view database);

}  // namespace cairn::control
