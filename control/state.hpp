// Creating the state dir of cairn-control (`cairn-control init`): the cluster CA, the
// server certificate and the first admin credential.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "common/clock.hpp"
#include "common/result.hpp"
#include "control/state_paths.hpp"

namespace cairn::control {

struct InitOptions {
  // Added to the defaults (DNS localhost, IP 127.0.0.1 and ::1), which are always present so
  // the operator CLI on the host itself can reach the service.
  std::vector<std::string> server_dns_names;
  std::vector<std::string> server_ips;
  std::string admin_name = "admin";
  // An operator's CA (both or neither); empty: a new P-256 CA is created.
  std::filesystem::path ca_cert_file;
  std::filesystem::path ca_key_file;
  std::chrono::seconds ca_lifetime{std::chrono::hours(24 * 365 * 10)};
  // Under the 825-day cap TLS clients and scanners (testssl) hold server certificates to,
  // counting the backdate of issue_certificate.
  std::chrono::seconds server_lifetime{std::chrono::hours(24 * 824)};
  std::chrono::seconds admin_lifetime{std::chrono::hours(24 * 365)};
  // Replace the credentials of an existing state dir (the database is kept). Needs
  // yes_replace_ca too: a new CA orphans every enrolled node.
  bool force = false;
  bool yes_replace_ca = false;
};

struct InitReport {
  std::vector<std::filesystem::path> written;
  bool created_ca = false;  // false: the operator's CA was imported
  std::string ca_subject;
  std::string ca_fingerprint_sha256;
  std::vector<std::string> server_dns_names;
  std::vector<std::string> server_ips;
  std::string admin_cn;
};

// Writes ca.crt, ca.key, server.crt (leaf then CA), server.key, admin.crt, admin.key with
// write_file_atomic, keys 0600. Refuses (Errc::config) when any of them exists unless
// force and yes_replace_ca are both set.
Result<InitReport> init_state(const StatePaths& state, const InitOptions& options, const Clock& clock);

}  // namespace cairn::control
