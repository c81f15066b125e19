// The node's credentials on the persist volume: private key, certificate and CA chain,
// installed as one unit. Each set lives in certs/<serial>/ and certs/current is a symlink
// swapped by rename(2), so a crash leaves the old set or the new one, never a mix; the
// previous sets stay beside it as the archive of rotated certificates.
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include "common/crypto.hpp"
#include "common/result.hpp"

namespace cairn::agent {

struct CredentialFiles {
  std::filesystem::path dir;
  [[nodiscard]] std::filesystem::path key() const { return dir / "node.key"; }  // 0600
  [[nodiscard]] std::filesystem::path cert() const { return dir / "node.crt"; }
  [[nodiscard]] std::filesystem::path ca() const { return dir / "ca.crt"; }
};

struct NewCredentials {
  std::string key_pem;
  std::string cert_pem;
  std::string ca_pem;
};

struct InstalledCredentials {
  CredentialFiles files;  // through certs/current, stable across rotations
  CertInfo cert;
  std::string ca_pem;
};

class CredentialStore {
 public:
  explicit CredentialStore(std::filesystem::path state_dir);

  // nullopt when never enrolled. An unreadable or corrupt set is an error naming the file.
  [[nodiscard]] Result<std::optional<InstalledCredentials>> load() const;

  // Writes the set into certs/<serial>/ and makes it current; keeps the last kArchiveKept
  // older sets, removes the rest.
  Status install(const NewCredentials& creds);

  [[nodiscard]] CredentialFiles current() const { return {certs_dir_ / "current"}; }
  static constexpr int kArchiveKept = 3;

 private:
  std::filesystem::path certs_dir_;
};

}  // namespace cairn::agent
