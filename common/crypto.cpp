#include "common/crypto.hpp"

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <stdexcept>

#include "common/time.hpp"

namespace cairn {
namespace {

BioPtr mem_bio(std::string_view data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

std::string bio_string(BIO* bio) {
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(len));
}

std::chrono::system_clock::time_point asn1_to_time(const ASN1_TIME* t) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return {};
  return std::chrono::system_clock::from_time_t(::timegm(&tm));
}

// Ed25519 signs the message itself: no digest is passed (RFC 8410).
const EVP_MD* signing_digest(const EVP_PKEY* key) {
  return EVP_PKEY_get_id(key) == EVP_PKEY_ED25519 ? nullptr : EVP_sha256();
}

Status add_ext(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return fail(Errc::internal, "add X.509 extension " + std::string(OBJ_nid2sn(nid)) + "=" +
                                    value + ": " + openssl_error());
  }
  return {};
}

}  // namespace

std::string openssl_error() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

Result<EvpPkey> generate_key(KeyType type) {
  EVP_PKEY* raw = type == KeyType::ed25519 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")
                                           : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  if (raw == nullptr) return fail(Errc::internal, "key generation failed: " + openssl_error());
  return EvpPkey(raw);
}

Result<std::string> private_key_pem(const EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr)) {
    return fail(Errc::internal, "encode private key: " + openssl_error());
  }
  return bio_string(bio.get());
}

Result<EvpPkey> parse_private_key_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  EvpPkey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) return fail(Errc::data, "not a PEM private key: " + openssl_error());
  return key;
}

std::string key_type_name(const EVP_PKEY* key) {
  switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_ED25519: return "ED25519";
    case EVP_PKEY_EC: {
      char group[64] = {};
      size_t len = 0;
      EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof group, &len);
      const std::string g(group, len);
      return g == "prime256v1" ? "P-256" : "EC-" + g;
    }
    case EVP_PKEY_RSA: return "RSA-" + std::to_string(EVP_PKEY_get_bits(key));
    default: return "unknown";
  }
}

Result<std::string> make_csr_pem(const EVP_PKEY* key, std::string_view common_name) {
  X509ReqPtr req(X509_REQ_new());
  if (!req) return fail(Errc::internal, "X509_REQ_new: " + openssl_error());
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  const std::string cn(common_name);
  if (X509_REQ_set_version(req.get(), 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) != 1 ||
      X509_REQ_set_pubkey(req.get(), const_cast<EVP_PKEY*>(key)) != 1 ||
      X509_REQ_sign(req.get(), const_cast<EVP_PKEY*>(key), signing_digest(key)) <= 0) {
    return fail(Errc::internal, "build CSR: " + openssl_error());
  }
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_X509_REQ(bio.get(), req.get())) {
    return fail(Errc::internal, "encode CSR: " + openssl_error());
  }
  return bio_string(bio.get());
}

Result<X509ReqPtr> parse_csr_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  X509ReqPtr req(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  if (!req) return fail(Errc::data, "not a PEM certificate request: " + openssl_error());
  return req;
}

Result<X509Ptr> parse_cert_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return fail(Errc::data, "not a PEM certificate: " + openssl_error());
  return cert;
}

Result<std::vector<X509Ptr>> parse_cert_chain_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  std::vector<X509Ptr> chain;
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) chain.emplace_back(c);
  ERR_clear_error();  // the loop ends on "no start line", which is not an error
  if (chain.empty()) return fail(Errc::data, "no PEM certificate found");
  return chain;
}

Result<std::string> cert_pem(const X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_X509(bio.get(), const_cast<X509*>(cert))) {
    return fail(Errc::internal, "encode certificate: " + openssl_error());
  }
  return bio_string(bio.get());
}

std::string subject_cn(const X509_NAME* name) {
  const int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (idx < 0) return {};
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
                     static_cast<std::size_t>(ASN1_STRING_length(data)));
}

CertInfo cert_info(const X509* cert) {
  CertInfo info;
  info.subject_cn = subject_cn(X509_get_subject_name(cert));
  info.issuer_cn = subject_cn(X509_get_issuer_name(cert));
  BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (bn) {
    char* hex = BN_bn2hex(bn.get());
    info.serial_hex = hex;
    OPENSSL_free(hex);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  X509_digest(cert, EVP_sha256(), md, &len);
  info.fingerprint_sha256 = hex_encode(md, len);
  info.not_before = asn1_to_time(X509_get0_notBefore(cert));
  info.not_after = asn1_to_time(X509_get0_notAfter(cert));
  return info;
}

Result<X509Ptr> issue_certificate(const CertSpec& spec, const EVP_PKEY* subject_key,
                                  const X509* issuer, const EVP_PKEY* issuer_key) {
  X509Ptr cert(X509_new());
  if (!cert) return fail(Errc::internal, "X509_new: " + openssl_error());
  X509_set_version(cert.get(), 2);

  // 159-bit random serial: positive, unique, unpredictable (RFC 5280 4.1.2.2, CA/B BR 7.1).
  unsigned char serial_bytes[20];
  if (RAND_bytes(serial_bytes, sizeof serial_bytes) != 1) {
    return fail(Errc::internal, "RAND_bytes for a certificate serial: " + openssl_error());
  }
  serial_bytes[0] &= 0x7f;
  BignumPtr serial_bn(BN_bin2bn(serial_bytes, sizeof serial_bytes, nullptr));
  BN_to_ASN1_INTEGER(serial_bn.get(), X509_get_serialNumber(cert.get()));

  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
  ASN1_TIME_set(X509_getm_notBefore(cert.get()), std::chrono::system_clock::to_time_t(spec.not_before));
  ASN1_TIME_set(X509_getm_notAfter(cert.get()), std::chrono::system_clock::to_time_t(spec.not_after));
  if (X509_set_pubkey(cert.get(), const_cast<EVP_PKEY*>(subject_key)) != 1) {
    return fail(Errc::internal, "set public key: " + openssl_error());
  }

  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? const_cast<X509*>(issuer) : cert.get(), cert.get(), nullptr, nullptr, 0);
  std::vector<std::pair<int, std::string>> exts;
  if (spec.is_ca) {
    exts.emplace_back(NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
    exts.emplace_back(NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    exts.emplace_back(NID_basic_constraints, "critical,CA:FALSE");
    exts.emplace_back(NID_key_usage, "critical,digitalSignature");
    std::string eku;
    if (spec.server_auth) eku = "serverAuth";
    if (spec.client_auth) eku += eku.empty() ? "clientAuth" : ",clientAuth";
    if (!eku.empty()) exts.emplace_back(NID_ext_key_usage, eku);
  }
  exts.emplace_back(NID_subject_key_identifier, "hash");
  if (issuer) exts.emplace_back(NID_authority_key_identifier, "keyid:always");
  std::string san;
  for (const auto& dns : spec.dns_names) san += (san.empty() ? "DNS:" : ",DNS:") + dns;
  for (const auto& ip : spec.ip_addresses) san += (san.empty() ? "IP:" : ",IP:") + ip;
  if (!san.empty()) exts.emplace_back(NID_subject_alt_name, san);
  for (const auto& [nid, value] : exts) {
    if (auto added = add_ext(cert.get(), &ctx, nid, value); !added) return fail(added.error());
  }

  if (X509_sign(cert.get(), const_cast<EVP_PKEY*>(issuer_key), signing_digest(issuer_key)) <= 0) {
    return fail(Errc::internal, "sign certificate: " + openssl_error());
  }
  return cert;
}

Status verify_cert_chain(const X509* leaf, std::string_view trusted_pem,
                         std::chrono::system_clock::time_point at) {
  auto anchors = parse_cert_chain_pem(trusted_pem);
  if (!anchors) return fail(anchors.error().with_context("trust anchors"));
  X509StorePtr store(X509_STORE_new());
  for (auto& a : *anchors) X509_STORE_add_cert(store.get(), a.get());
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), const_cast<X509*>(leaf), nullptr) != 1) {
    return fail(Errc::internal, "X509_STORE_CTX_init: " + openssl_error());
  }
  X509_STORE_CTX_set_time(ctx.get(), 0, std::chrono::system_clock::to_time_t(at));
  if (X509_verify_cert(ctx.get()) != 1) {
    return fail(Errc::refused, std::string("certificate does not verify: ") +
                                   X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get())));
  }
  return {};
}

std::string hex_encode(const unsigned char* data, std::size_t size) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (std::size_t i = 0; i < size; ++i) {
    out.push_back(kHex[data[i] >> 4]);
    out.push_back(kHex[data[i] & 0xf]);
  }
  return out;
}

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return hex_encode(md, len);
}

std::string random_hex(std::size_t bytes) {
  std::vector<unsigned char> buf(bytes);
  if (RAND_bytes(buf.data(), static_cast<int>(buf.size())) != 1) {
    throw std::runtime_error("RAND_bytes failed: the OpenSSL CSPRNG is not seeded");
  }
  return hex_encode(buf.data(), buf.size());
}

bool equal_constant_time(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace cairn
