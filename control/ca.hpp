// The cluster CA of cairn-control: checks node CSRs and issues node, server and admin
// certificates. The CA, not the CSR, decides every name a certificate carries.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.hpp"
#include "common/crypto.hpp"
#include "common/result.hpp"
#include "control/api_error.hpp"
#include "control/peer.hpp"
#include "control/state_paths.hpp"

namespace cairn::control {

// Certificates start this long before "now" so a node whose clock lags a little can use
// its certificate at once.
inline constexpr std::chrono::seconds kBackdate{300};

class CertificateAuthority {
 public:
  // A new self-signed P-256 CA.
  static Result<CertificateAuthority> create(std::string_view common_name,
                                             std::chrono::seconds lifetime, const Clock& clock);
  // An existing CA (the state dir's, or an operator's): the key must match the certificate
  // and the certificate must be a CA.
  static Result<CertificateAuthority> from_pem(std::string_view cert_pem, std::string_view key_pem);
  static Result<CertificateAuthority> load(const StatePaths& state);

  // A node certificate: CN = node_id, clientAuth, for the CSR's (already checked) key.
  [[nodiscard]] Result<X509Ptr> issue_node_cert(const X509_REQ* csr, std::string_view node_id,
                                                std::chrono::seconds lifetime,
                                                const Clock& clock) const;
  [[nodiscard]] Result<X509Ptr> issue_server_cert(const EVP_PKEY* key,
                                                  const std::vector<std::string>& dns_names,
                                                  const std::vector<std::string>& ip_addresses,
                                                  std::chrono::seconds lifetime,
                                                  const Clock& clock) const;
  // CN "admin:<name>" (kAdminCnPrefix), clientAuth. The name must pass valid_admin_name.
  [[nodiscard]] Result<X509Ptr> issue_admin_cert(const EVP_PKEY* key, std::string_view name,
                                                 std::chrono::seconds lifetime,
                                                 const Clock& clock) const;

  [[nodiscard]] const X509* cert() const { return cert_.get(); }
  [[nodiscard]] const EVP_PKEY* key() const { return key_.get(); }
  [[nodiscard]] const std::string& cert_pem() const { return cert_pem_; }

 private:
  CertificateAuthority(X509Ptr cert, EvpPkey key, std::string cert_pem)
      : cert_(std::move(cert)), key_(std::move(key)), cert_pem_(std::move(cert_pem)) {}
  X509Ptr cert_;
  EvpPkey key_;
  std::string cert_pem_;
};

// Admin names: 1..kMaxAdminNameBytes of letters, digits, '-', '.', '_', '@', so that
// "admin:<name>" fits the 64-byte CN.
inline constexpr std::size_t kMaxAdminNameBytes = 64 - kAdminCnPrefix.size();
bool valid_admin_name(std::string_view name);

// Checks a node's CSR: it parses (400 csr_invalid), its self-signature verifies (400
// csr_signature), its key is Ed25519 or P-256 (400 csr_key_type) and its subject CN is
// expected_node_id (400 csr_mismatch; compared as UUIDs, so case does not matter).
ApiResult<X509ReqPtr> check_node_csr(std::string_view csr_pem, std::string_view expected_node_id);

}  // namespace cairn::control
