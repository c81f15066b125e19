#include "control/ca.hpp"

#include <openssl/err.h>

#include <algorithm>

#include "common/fs.hpp"
#include "common/uuid.hpp"

namespace cairn::control {
namespace {

ApiError bad_csr(std::string code, std::string message, std::string hint) {
  return ApiError{400, {std::move(code), std::move(message), std::move(hint)}};
}

CertSpec leaf_spec(std::string common_name, std::chrono::seconds lifetime, const Clock& clock) {
  const auto now = std::chrono::time_point_cast<std::chrono::seconds>(clock.now());
  CertSpec spec;
  spec.common_name = std::move(common_name);
  // Backdated for clocks that run behind, but never by more than a tenth of the lifetime:
  // agents rotate at 75% of [not_before, not_after), so a certificate of seconds (tests) must
  // not look three-quarters spent the moment it is issued.
  spec.not_before = now - std::min<std::chrono::seconds>(kBackdate, lifetime / 10);
  spec.not_after = now + lifetime;
  return spec;
}

}  // namespace

bool valid_admin_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxAdminNameBytes) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '@';
  });
}

Result<CertificateAuthority> CertificateAuthority::create(std::string_view common_name,
                                                          std::chrono::seconds lifetime,
                                                          const Clock& clock) {
  auto key = generate_key(KeyType::p256);
  if (!key) return fail(key.error());
  auto spec = leaf_spec(std::string(common_name), lifetime, clock);
  spec.is_ca = true;
  auto cert = issue_certificate(spec, key->get(), nullptr, key->get());
  if (!cert) return fail(cert.error());
  auto pem = cairn::cert_pem(cert->get());
  if (!pem) return fail(pem.error());
  return CertificateAuthority(std::move(*cert), std::move(*key), std::move(*pem));
}

Result<CertificateAuthority> CertificateAuthority::from_pem(std::string_view cert_text,
                                                            std::string_view key_text) {
  auto cert = parse_cert_pem(cert_text);
  if (!cert) return fail(cert.error().with_context("CA certificate"));
  auto key = parse_private_key_pem(key_text);
  if (!key) return fail(key.error().with_context("CA key"));
  if (X509_check_private_key(cert->get(), key->get()) != 1) {
    ERR_clear_error();
    return fail(Errc::config, "the CA key does not match the CA certificate",
                "pass the key that belongs to this certificate");
  }
  if (X509_check_ca(cert->get()) == 0) {
    return fail(Errc::config,
                "the CA certificate '" + cert_info(cert->get()).subject_cn +
                    "' is not a CA (no basicConstraints CA:TRUE)",
                "pass a CA certificate, or let init create one");
  }
  auto pem = cairn::cert_pem(cert->get());
  if (!pem) return fail(pem.error());
  return CertificateAuthority(std::move(*cert), std::move(*key), std::move(*pem));
}

Result<CertificateAuthority> CertificateAuthority::load(const StatePaths& state) {
  const std::string hint = "run 'cairn-control init --state " + state.dir.string() + "' first";
  auto cert = read_file_if_exists(state.ca_cert(), 1 << 20);
  if (!cert) return fail(cert.error());
  auto key = read_file_if_exists(state.ca_key(), 1 << 20);
  if (!key) return fail(key.error());
  if (!*cert || !*key) {
    return fail(Errc::config, "state dir " + state.dir.string() + " has no CA (ca.crt, ca.key)",
                hint);
  }
  auto ca = from_pem(**cert, **key);
  if (!ca) return fail(ca.error().with_context(state.ca_cert().string()));
  return ca;
}

Result<X509Ptr> CertificateAuthority::issue_node_cert(const X509_REQ* csr, std::string_view node_id,
                                                      std::chrono::seconds lifetime,
                                                      const Clock& clock) const {
  const EVP_PKEY* key = X509_REQ_get0_pubkey(const_cast<X509_REQ*>(csr));
  if (key == nullptr) return fail(Errc::data, "CSR has no public key");
  // Only the key comes from the CSR: the subject is the node id, and no extension the
  // requester asked for is copied.
  auto spec = leaf_spec(std::string(node_id), lifetime, clock);
  spec.client_auth = true;
  return issue_certificate(spec, key, cert_.get(), key_.get());
}

Result<X509Ptr> CertificateAuthority::issue_server_cert(const EVP_PKEY* key,
                                                        const std::vector<std::string>& dns_names,
                                                        const std::vector<std::string>& ip_addresses,
                                                        std::chrono::seconds lifetime,
                                                        const Clock& clock) const {
  auto spec = leaf_spec("cairn-control", lifetime, clock);
  spec.server_auth = true;
  spec.dns_names = dns_names;
  spec.ip_addresses = ip_addresses;
  return issue_certificate(spec, key, cert_.get(), key_.get());
}

Result<X509Ptr> CertificateAuthority::issue_admin_cert(const EVP_PKEY* key, std::string_view name,
                                                       std::chrono::seconds lifetime,
                                                       const Clock& clock) const {
  if (!valid_admin_name(name)) {
    return fail(Errc::usage, "admin name '" + std::string(name.substr(0, 64)) + "' is not valid",
                "use up to " + std::to_string(kMaxAdminNameBytes) + " letters, digits, '-', '.', '_' or '@'");
  }
  auto spec = leaf_spec(std::string(kAdminCnPrefix) + std::string(name), lifetime, clock);
  spec.client_auth = true;
  return issue_certificate(spec, key, cert_.get(), key_.get());
}

ApiResult<X509ReqPtr> check_node_csr(std::string_view csr_pem, std::string_view expected_node_id) {
  auto req = parse_csr_pem(csr_pem);
  if (!req) {
    ERR_clear_error();
    return std::unexpected(bad_csr("csr_invalid", "the CSR is not a PEM certificate request",
                                   "send the CSR as PEM (-----BEGIN CERTIFICATE REQUEST-----)"));
  }
  EVP_PKEY* key = X509_REQ_get0_pubkey(req->get());
  if (key == nullptr) {
    ERR_clear_error();
    return std::unexpected(bad_csr("csr_invalid", "the CSR carries no usable public key",
                                   "build the CSR again from the node key"));
  }
  // The self-signature proves the requester holds the private key (RFC 2986 section 3).
  if (X509_REQ_verify(req->get(), key) != 1) {
    ERR_clear_error();
    return std::unexpected(bad_csr("csr_signature", "the CSR signature does not verify",
                                   "sign the CSR with the key it carries"));
  }
  const std::string type = key_type_name(key);
  if (type != "ED25519" && type != "P-256") {
    return std::unexpected(bad_csr("csr_key_type", "the CSR key is " + type + "; only Ed25519 and P-256 are accepted",
                                   "generate an Ed25519 node key"));
  }
  const std::string cn = subject_cn(X509_REQ_get_subject_name(req->get()));
  auto cn_uuid = parse_uuid(cn);
  auto expected = parse_uuid(expected_node_id);
  if (!cn_uuid || !expected || !(*cn_uuid == *expected)) {
    return std::unexpected(bad_csr(
        "csr_mismatch",
        "the CSR subject CN '" + cn.substr(0, 64) + "' is not the node id '" +
            std::string(expected_node_id.substr(0, 64)) + "'",
        "build the CSR with CN set to the node id the request claims"));
  }
  return std::move(*req);
}

}  // namespace cairn::control
