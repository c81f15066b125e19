// The state directory `cairn-control init --state DIR` creates and `serve` reads.
#pragma once

#include <filesystem>

namespace cairn::control {

struct StatePaths {
  std::filesystem::path dir;
  [[nodiscard]] std::filesystem::path ca_cert() const { return dir / "ca.crt"; }
  [[nodiscard]] std::filesystem::path ca_key() const { return dir / "ca.key"; }          // 0600
  [[nodiscard]] std::filesystem::path server_cert() const { return dir / "server.crt"; } // + CA chain
  [[nodiscard]] std::filesystem::path server_key() const { return dir / "server.key"; }  // 0600
  [[nodiscard]] std::filesystem::path admin_cert() const { return dir / "admin.crt"; }
  [[nodiscard]] std::filesystem::path admin_key() const { return dir / "admin.key"; }    // 0600
  [[nodiscard]] std::filesystem::path database() const { return dir / "control.db"; }    // SQLite (WAL)
};

}  // namespace cairn::control
