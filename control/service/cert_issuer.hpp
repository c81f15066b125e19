// Issues node certificates for enrollment and rotation: the CA signs, and the record the
// store keeps (serial, fingerprint, validity, public key) comes from the issued certificate.
#pragma once

#include <string>

#include "common/clock.hpp"
#include "control/ca.hpp"
#include "control/service.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

struct IssuedCert {
  std::string pem;
  CertRecord record;
};

class CertIssuer {
 public:
  CertIssuer(const CertificateAuthority& ca, const ServiceConfig& config, const Clock& clock)
      : ca_(ca), config_(config), clock_(clock) {}

  [[nodiscard]] ApiResult<IssuedCert> issue(const X509_REQ* csr, const std::string& node_id,
                                            const char* reason) const;
  [[nodiscard]] protocol::CertificateResponse response_for(const std::string& node_id,
                                                           const IssuedCert& issued) const;

 private:
  const CertificateAuthority& ca_;
  const ServiceConfig& config_;
  const Clock& clock_;
};

}  // namespace cairn::control
