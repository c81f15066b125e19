// The SQLite backend of Store (the default: one process, one file in the state dir).
#pragma once

#include <filesystem>
#include <memory>

#include "common/result.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

// Opens (creating if missing) the database and applies pending schema migrations.
Result<std::unique_ptr<Store>> open_sqlite_store(const std::filesystem::path& file);

}  // namespace cairn::control
