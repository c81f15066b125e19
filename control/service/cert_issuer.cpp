#include "control/service/cert_issuer.hpp"

#include "common/crypto.hpp"
#include "common/time.hpp"

namespace cairn::control {

ApiResult<IssuedCert> CertIssuer::issue(const X509_REQ* csr, const std::string& node_id,
                                        const char* reason) const {
  auto cert = ca_.issue_node_cert(csr, node_id, config_.cert_lifetime, clock_);
  if (!cert) return refuse(500, "internal", "issue certificate: " + cert.error().message);
  auto pem = cert_pem(cert->get());
  if (!pem) return refuse(500, "internal", pem.error().message);
  auto key = public_key_pem(X509_get0_pubkey(cert->get()));
  if (!key) return refuse(500, "internal", key.error().message);
  const auto info = cert_info(cert->get());
  if (info.serial_hex.empty() || info.fingerprint_sha256.empty()) {
    return refuse(500, "internal", "the issued certificate has no readable serial or fingerprint");
  }
  IssuedCert out;
  out.pem = std::move(*pem);
  out.record.serial_hex = info.serial_hex;
  out.record.node_id = node_id;
  out.record.fingerprint_sha256 = info.fingerprint_sha256;
  out.record.not_before_ms = to_unix_ms(info.not_before);
  out.record.not_after_ms = to_unix_ms(info.not_after);
  out.record.issued_at_ms = to_unix_ms(clock_.now());
  out.record.reason = reason;
  out.record.public_key_pem = std::move(*key);
  return out;
}

protocol::CertificateResponse CertIssuer::response_for(const std::string& node_id,
                                                       const IssuedCert& issued) const {
  protocol::CertificateResponse r;
  r.node_id = node_id;
  r.certificate_pem = issued.pem;
  r.ca_chain_pem = ca_.cert_pem();
  r.not_after = format_rfc3339(from_unix_ms(issued.record.not_after_ms));
  r.heartbeat_interval_s = config_.heartbeat_interval.count();
  return r;
}

}  // namespace cairn::control
