#include "control/store/open_store.hpp"

#include <string>

#include "control/store/postgres.hpp"
#include "control/store/sqlite.hpp"

namespace cairn::control {

bool is_postgres_url(std::string_view database) {
  return database.starts_with("postgresql://") || database.starts_with("postgres://");
}

Result<std::unique_ptr<Store>> open_store(const StatePaths& state, std::string_view database) {
  if (database.empty()) return open_sqlite_store(state.database());
  if (is_postgres_url(database)) return open_postgres_store(std::string(database));
  if (database.find("://") != std::string_view::npos) {
    return fail(Errc::usage, "--database '" + redact_database_url(database) + "': not a database this cairn-control knows",
                "give a postgresql://user@host:port/db URL, or an SQLite file path");
  }
  return open_sqlite_store(std::filesystem::path(database));
}

}  // namespace cairn::control
