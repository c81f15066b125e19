// Crypto helpers both programs share: keys, CSRs, certificates, digests, random tokens.
// Only this file and control's CA speak OpenSSL's X.509 API.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "common/ssl.hpp"

namespace cairn {

// Drains OpenSSL's error queue into one line.
std::string openssl_error();

enum class KeyType { ed25519, p256 };

Result<EvpPkey> generate_key(KeyType type);
Result<std::string> private_key_pem(const EVP_PKEY* key);  // PKCS#8 PEM
Result<EvpPkey> parse_private_key_pem(std::string_view pem);
Result<std::string> public_key_pem(const EVP_PKEY* key);  // SubjectPublicKeyInfo PEM
Result<EvpPkey> parse_public_key_pem(std::string_view pem);
std::string key_type_name(const EVP_PKEY* key);            // "ED25519", "P-256", "RSA-2048", ...

// X.509 caps a commonName at 64 bytes (RFC 5280, ub-common-name): a longer CN is refused
// with Errc::data by make_csr_pem and issue_certificate, never written as an empty subject.
inline constexpr std::size_t kMaxCommonNameBytes = 64;

// A CSR with subject CN=common_name, signed by key.
Result<std::string> make_csr_pem(const EVP_PKEY* key, std::string_view common_name);
Result<X509ReqPtr> parse_csr_pem(std::string_view pem);

Result<X509Ptr> parse_cert_pem(std::string_view pem);
Result<std::vector<X509Ptr>> parse_cert_chain_pem(std::string_view pem);
Result<std::string> cert_pem(const X509* cert);

struct CertInfo {
  std::string subject_cn;
  std::string issuer_cn;
  std::string serial_hex;
  std::string fingerprint_sha256;  // hex of the DER
  std::chrono::system_clock::time_point not_before;
  std::chrono::system_clock::time_point not_after;
};
// Fields OpenSSL cannot produce (out of memory) are left empty, never garbage.
CertInfo cert_info(const X509* cert);
std::string subject_cn(const X509_NAME* name);

// What a certificate being issued looks like; the issuer signs it with its key.
struct CertSpec {
  std::string common_name{};
  std::chrono::system_clock::time_point not_before{};
  std::chrono::system_clock::time_point not_after{};
  bool is_ca = false;
  bool server_auth = false;
  bool client_auth = false;
  std::vector<std::string> dns_names{};  // subjectAltName DNS entries
  std::vector<std::string> ip_addresses{};
};

// Self-signed when issuer == nullptr (issuer_key must then be the subject's own key).
Result<X509Ptr> issue_certificate(const CertSpec& spec, const EVP_PKEY* subject_key,
                                  const X509* issuer, const EVP_PKEY* issuer_key);

// Checks leaf against the trust anchors (PEM bundle) at time `at`.
Status verify_cert_chain(const X509* leaf, std::string_view trusted_pem,
                         std::chrono::system_clock::time_point at);

// Signs data with key (Ed25519: the message itself, RFC 8032; EC: ECDSA over SHA-256) and
// returns the signature as lower-case hex; verify_signature_hex checks one (Errc::refused).
Result<std::string> sign_hex(const EVP_PKEY* key, std::string_view data);
Status verify_signature_hex(const EVP_PKEY* key, std::string_view data, std::string_view signature_hex);

std::string sha256_hex(std::string_view data);
std::string hex_encode(const unsigned char* data, std::size_t size);
// Lower- or upper-case hex to bytes; Errc::data on an odd length or a non-hex character.
Result<std::string> hex_decode(std::string_view hex);
// Standard base64 (RFC 4648, with padding; whitespace ignored) to bytes; Errc::data if invalid.
Result<std::string> base64_decode(std::string_view text);
// Random bytes as lower-case hex (CSPRNG); 32 bytes makes a 64-char token.
std::string random_hex(std::size_t bytes);
// Constant-time equality for secrets.
bool equal_constant_time(std::string_view a, std::string_view b);

}  // namespace cairn
