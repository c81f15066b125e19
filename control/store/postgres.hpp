// The PostgreSQL backend of Store: several cairn-control replicas on one database share all
// state (nodes, certificates, heartbeats, tasks). Selected with --database postgresql://...
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/result.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

struct PostgresOptions {
  // Connections kept open at most (one per concurrent caller; more callers wait).
  int max_connections = 16;
};

// Connects to `url` (a libpq URI: postgresql://user[:password]@host[:port]/db[?...]) and
// applies pending schema migrations (serialised across replicas starting at once).
Result<std::unique_ptr<Store>> open_postgres_store(const std::string& url, PostgresOptions options = {});

// The URL with any password removed: safe for logs and error messages.
std::string redact_database_url(std::string_view url);

}  // namespace cairn::control
