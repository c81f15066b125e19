// A real PostgreSQL server for a test (Debian's `postgresql` package, v15): initdb into a
// fresh temp dir as an unprivileged user (PostgreSQL refuses root: as root the package's
// `postgres` system user, otherwise the current user), listening on 127.0.0.1 only on a free
// port with its unix socket in the temp dir, fsync on. Stopped and removed at the end.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "common/result.hpp"

namespace cairn::test {

class PostgresServer {
 public:
  // The server binaries (initdb, postgres, createdb); empty when the package is missing.
  static std::filesystem::path bin_dir();
  // Why a test must skip, or nullopt when PostgreSQL can be started here.
  static std::optional<std::string> unavailable_reason();

  // Starts a server (about 1-3 s: initdb dominates). An error says what failed, with the
  // server's log.
  static Result<std::unique_ptr<PostgresServer>> start();

  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;
  ~PostgresServer();  // fast shutdown, then the temp dir is removed

  [[nodiscard]] int port() const { return port_; }
  // postgresql://cairn@127.0.0.1:PORT/NAME (trust authentication on loopback).
  [[nodiscard]] std::string url(const std::string& database = "postgres") const;
  // CREATE DATABASE name (one per test case keeps cases apart); the URL of it.
  Result<std::string> create_database(const std::string& name);
  // Runs one SQL command through psql on `database` (a name, or a URL such as
  // fresh_postgres_database's); its stdout (unaligned, tuples only).
  Result<std::string> psql(const std::string& database, const std::string& sql);
  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  // Stops (SIGKILL: a crash) or restarts the server on the same port and data dir.
  void kill_hard();
  Status restart();

 private:
  PostgresServer() = default;
  Status launch();
  void stop();

  std::filesystem::path dir_;  // owned by the server's user: data/, the socket, server.log
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  int port_ = 0;
  pid_t pid_ = -1;
};

// One server per test binary, started at first use and stopped at exit. nullptr when it
// cannot run, with `why` set (skip with it when PostgreSQL is missing; fail otherwise).
PostgresServer* shared_postgres(std::string& why);
// A fresh, empty place on the shared server for one test case: a new schema, named in the
// returned URL's search_path (cheap; a database per case costs seconds with fsync on).
Result<std::string> fresh_postgres_database(PostgresServer& server);

}  // namespace cairn::test
