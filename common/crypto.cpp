// Every OpenSSL call here has its return checked: a failure is an Error naming the step
// (with OpenSSL's queue drained into the message), never a silently half-built object.
#include "common/crypto.hpp"

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <climits>
#include <stdexcept>

#include "common/time.hpp"

namespace cairn {
namespace {

Result<BioPtr> mem_bio(std::string_view data) {
  if (data.size() > static_cast<std::size_t>(INT_MAX)) {
    return fail(Errc::data, "PEM input of " + std::to_string(data.size()) + " bytes is too large");
  }
  BioPtr bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
  if (!bio) return fail(Errc::internal, "BIO_new_mem_buf: " + openssl_error());
  return bio;
}

Result<BioPtr> out_bio() {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) return fail(Errc::internal, "BIO_new: " + openssl_error());
  return bio;
}

Result<std::string> bio_string(BIO* bio) {
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  if (len < 0 || (len > 0 && data == nullptr)) {
    return fail(Errc::internal, "BIO_get_mem_data: " + openssl_error());
  }
  return std::string(data == nullptr ? "" : data, static_cast<std::size_t>(len));
}

std::chrono::system_clock::time_point asn1_to_time(const ASN1_TIME* t) {
  std::tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) {
    ERR_clear_error();
    return {};
  }
  return std::chrono::system_clock::from_time_t(::timegm(&tm));
}

// Ed25519 signs the message itself: no digest is passed (RFC 8410).
const EVP_MD* signing_digest(const EVP_PKEY* key) {
  return EVP_PKEY_get_id(key) == EVP_PKEY_ED25519 ? nullptr : EVP_sha256();
}

Status check_common_name(std::string_view cn) {
  if (cn.empty()) return fail(Errc::data, "the common name is empty", "give the certificate a name");
  if (cn.size() > kMaxCommonNameBytes) {
    return fail(Errc::data,
                "the common name '" + std::string(cn.substr(0, 40)) + "...' is " +
                    std::to_string(cn.size()) + " bytes; X.509 allows at most " +
                    std::to_string(kMaxCommonNameBytes) + " (RFC 5280 ub-common-name)",
                "use a shorter name");
  }
  return {};
}

Status add_cn(X509_NAME* name, const std::string& cn) {
  if (name == nullptr ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) != 1) {
    return fail(Errc::data, "set subject CN '" + cn + "': " + openssl_error());
  }
  return {};
}

Status set_time(ASN1_TIME* field, std::chrono::system_clock::time_point t, const char* what) {
  if (field == nullptr || ASN1_TIME_set(field, std::chrono::system_clock::to_time_t(t)) == nullptr) {
    return fail(Errc::internal, std::string("set ") + what + ": " + openssl_error());
  }
  return {};
}

Status add_ext(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    const char* name = OBJ_nid2sn(nid);
    return fail(Errc::internal, "add X.509 extension " + std::string(name != nullptr ? name : "?") + "=" +
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
  auto bio = out_bio();
  if (!bio) return fail(bio.error());
  if (PEM_write_bio_PrivateKey(bio->get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return fail(Errc::internal, "encode private key: " + openssl_error());
  }
  return bio_string(bio->get());
}

Result<EvpPkey> parse_private_key_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  if (!bio) return fail(bio.error());
  EvpPkey key(PEM_read_bio_PrivateKey(bio->get(), nullptr, nullptr, nullptr));
  if (!key) return fail(Errc::data, "not a PEM private key: " + openssl_error());
  return key;
}

Result<std::string> public_key_pem(const EVP_PKEY* key) {
  auto bio = out_bio();
  if (!bio) return fail(bio.error());
  if (PEM_write_bio_PUBKEY(bio->get(), const_cast<EVP_PKEY*>(key)) != 1) {
    return fail(Errc::internal, "encode public key: " + openssl_error());
  }
  return bio_string(bio->get());
}

Result<EvpPkey> parse_public_key_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  if (!bio) return fail(bio.error());
  EvpPkey key(PEM_read_bio_PUBKEY(bio->get(), nullptr, nullptr, nullptr));
  if (!key) return fail(Errc::data, "not a PEM public key: " + openssl_error());
  return key;
}

std::string key_type_name(const EVP_PKEY* key) {
  switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_ED25519: return "ED25519";
    case EVP_PKEY_EC: {
      char group[64] = {};
      size_t len = 0;
      if (EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof group, &len) != 1) {
        ERR_clear_error();
        return "EC-unknown";
      }
      const std::string g(group, len);
      return g == "prime256v1" ? "P-256" : "EC-" + g;
    }
    case EVP_PKEY_RSA: return "RSA-" + std::to_string(EVP_PKEY_get_bits(key));
    default: return "unknown";
  }
}

Result<std::string> make_csr_pem(const EVP_PKEY* key, std::string_view common_name) {
  if (auto ok = check_common_name(common_name); !ok) return fail(ok.error().with_context("CSR"));
  X509ReqPtr req(X509_REQ_new());
  if (!req) return fail(Errc::internal, "X509_REQ_new: " + openssl_error());
  if (X509_REQ_set_version(req.get(), 0) != 1) {
    return fail(Errc::internal, "CSR version: " + openssl_error());
  }
  if (auto ok = add_cn(X509_REQ_get_subject_name(req.get()), std::string(common_name)); !ok) {
    return fail(ok.error().with_context("CSR"));
  }
  if (X509_REQ_set_pubkey(req.get(), const_cast<EVP_PKEY*>(key)) != 1 ||
      X509_REQ_sign(req.get(), const_cast<EVP_PKEY*>(key), signing_digest(key)) <= 0) {
    return fail(Errc::internal, "build CSR: " + openssl_error());
  }
  auto bio = out_bio();
  if (!bio) return fail(bio.error());
  if (PEM_write_bio_X509_REQ(bio->get(), req.get()) != 1) {
    return fail(Errc::internal, "encode CSR: " + openssl_error());
  }
  return bio_string(bio->get());
}

Result<X509ReqPtr> parse_csr_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  if (!bio) return fail(bio.error());
  X509ReqPtr req(PEM_read_bio_X509_REQ(bio->get(), nullptr, nullptr, nullptr));
  if (!req) return fail(Errc::data, "not a PEM certificate request: " + openssl_error());
  return req;
}

Result<X509Ptr> parse_cert_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  if (!bio) return fail(bio.error());
  X509Ptr cert(PEM_read_bio_X509(bio->get(), nullptr, nullptr, nullptr));
  if (!cert) return fail(Errc::data, "not a PEM certificate: " + openssl_error());
  return cert;
}

Result<std::vector<X509Ptr>> parse_cert_chain_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  if (!bio) return fail(bio.error());
  std::vector<X509Ptr> chain;
  while (X509* c = PEM_read_bio_X509(bio->get(), nullptr, nullptr, nullptr)) chain.emplace_back(c);
  ERR_clear_error();  // the loop ends on "no start line", which is not an error
  if (chain.empty()) return fail(Errc::data, "no PEM certificate found");
  return chain;
}

Result<std::string> cert_pem(const X509* cert) {
  auto bio = out_bio();
  if (!bio) return fail(bio.error());
  if (PEM_write_bio_X509(bio->get(), const_cast<X509*>(cert)) != 1) {
    return fail(Errc::internal, "encode certificate: " + openssl_error());
  }
  return bio_string(bio->get());
}

std::string subject_cn(const X509_NAME* name) {
  if (name == nullptr) return {};
  const int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (idx < 0) return {};
  const X509_NAME_ENTRY* entry = X509_NAME_get_entry(name, idx);
  const ASN1_STRING* data = entry == nullptr ? nullptr : X509_NAME_ENTRY_get_data(entry);
  if (data == nullptr || ASN1_STRING_length(data) < 0) return {};
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
                     static_cast<std::size_t>(ASN1_STRING_length(data)));
}

CertInfo cert_info(const X509* cert) {
  CertInfo info;
  info.subject_cn = subject_cn(X509_get_subject_name(cert));
  info.issuer_cn = subject_cn(X509_get_issuer_name(cert));
  BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (bn) {
    if (char* hex = BN_bn2hex(bn.get())) {
      info.serial_hex = hex;
      OPENSSL_free(hex);
    }
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &len) == 1) info.fingerprint_sha256 = hex_encode(md, len);
  info.not_before = asn1_to_time(X509_get0_notBefore(cert));
  info.not_after = asn1_to_time(X509_get0_notAfter(cert));
  ERR_clear_error();
  return info;
}

Result<X509Ptr> issue_certificate(const CertSpec& spec, const EVP_PKEY* subject_key,
                                  const X509* issuer, const EVP_PKEY* issuer_key) {
  if (auto ok = check_common_name(spec.common_name); !ok) {
    return fail(ok.error().with_context("certificate"));
  }
  X509Ptr cert(X509_new());
  if (!cert) return fail(Errc::internal, "X509_new: " + openssl_error());
  if (X509_set_version(cert.get(), 2) != 1) {
    return fail(Errc::internal, "certificate version: " + openssl_error());
  }

  // 159-bit random serial: positive, unique, unpredictable (RFC 5280 4.1.2.2, CA/B BR 7.1).
  unsigned char serial_bytes[20];
  if (RAND_bytes(serial_bytes, sizeof serial_bytes) != 1) {
    return fail(Errc::internal, "RAND_bytes for a certificate serial: " + openssl_error());
  }
  serial_bytes[0] &= 0x7f;
  serial_bytes[0] |= 0x01;  // never all zero, so the serial is positive
  BignumPtr serial_bn(BN_bin2bn(serial_bytes, sizeof serial_bytes, nullptr));
  if (!serial_bn || BN_to_ASN1_INTEGER(serial_bn.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return fail(Errc::internal, "certificate serial: " + openssl_error());
  }

  X509_NAME* name = X509_get_subject_name(cert.get());
  if (auto ok = add_cn(name, spec.common_name); !ok) return fail(ok.error().with_context("certificate"));
  if (X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name) != 1) {
    return fail(Errc::internal, "certificate issuer name: " + openssl_error());
  }
  if (auto ok = set_time(X509_getm_notBefore(cert.get()), spec.not_before, "notBefore"); !ok) return fail(ok.error());
  if (auto ok = set_time(X509_getm_notAfter(cert.get()), spec.not_after, "notAfter"); !ok) return fail(ok.error());
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
  if (!store) return fail(Errc::internal, "X509_STORE_new: " + openssl_error());
  for (auto& a : *anchors) {
    if (X509_STORE_add_cert(store.get(), a.get()) != 1) {
      return fail(Errc::internal, "add a trust anchor: " + openssl_error());
    }
  }
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), const_cast<X509*>(leaf), nullptr) != 1) {
    return fail(Errc::internal, "X509_STORE_CTX_init: " + openssl_error());
  }
  X509_STORE_CTX_set_time(ctx.get(), 0, std::chrono::system_clock::to_time_t(at));
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return fail(Errc::refused,
                std::string("certificate does not verify: ") + X509_verify_cert_error_string(err));
  }
  return {};
}

Result<std::string> sign_hex(const EVP_PKEY* key, std::string_view data) {
  EvpMdCtx ctx(EVP_MD_CTX_new());
  if (!ctx) return fail(Errc::internal, "EVP_MD_CTX_new: " + openssl_error());
  if (EVP_DigestSignInit(ctx.get(), nullptr, signing_digest(key), nullptr,
                         const_cast<EVP_PKEY*>(key)) != 1) {
    return fail(Errc::internal, "signature init: " + openssl_error());
  }
  const auto* msg = reinterpret_cast<const unsigned char*>(data.data());
  std::size_t len = 0;
  if (EVP_DigestSign(ctx.get(), nullptr, &len, msg, data.size()) != 1) {
    return fail(Errc::internal, "signature size: " + openssl_error());
  }
  std::vector<unsigned char> sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, msg, data.size()) != 1) {
    return fail(Errc::internal, "sign: " + openssl_error());
  }
  return hex_encode(sig.data(), len);
}

Status verify_signature_hex(const EVP_PKEY* key, std::string_view data, std::string_view signature_hex) {
  auto sig = hex_decode(signature_hex);
  if (!sig) return fail(Errc::refused, "the signature is not hex: " + sig.error().message);
  EvpMdCtx ctx(EVP_MD_CTX_new());
  if (!ctx) return fail(Errc::internal, "EVP_MD_CTX_new: " + openssl_error());
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, signing_digest(key), nullptr,
                           const_cast<EVP_PKEY*>(key)) != 1) {
    return fail(Errc::internal, "verify init: " + openssl_error());
  }
  const int rc = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig->data()),
                                  sig->size(), reinterpret_cast<const unsigned char*>(data.data()),
                                  data.size());
  ERR_clear_error();
  if (rc != 1) return fail(Errc::refused, "the signature does not verify with this key");
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

Result<std::string> hex_decode(std::string_view hex) {
  if (hex.size() % 2 != 0) return fail(Errc::data, "odd number of hex digits (" + std::to_string(hex.size()) + ")");
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]);
    const int lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return fail(Errc::data, "not a hex digit at offset " + std::to_string(hi < 0 ? i : i + 1));
    out.push_back(static_cast<char>((hi << 4) | lo));
  }
  return out;
}

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) {
    // Only a broken OpenSSL fails a SHA-256 of memory: a bug, not an input error.
    throw std::runtime_error("EVP_Digest(SHA-256) failed: " + openssl_error());
  }
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

Result<std::string> base64_decode(std::string_view text) {
  std::string clean;
  clean.reserve(text.size());
  for (char c : text) {
    if (c != '\n' && c != '\r' && c != ' ' && c != '\t') clean.push_back(c);
  }
  if (clean.size() % 4 != 0 || clean.size() > static_cast<std::size_t>(INT_MAX)) {
    return fail(Errc::data, "base64: length " + std::to_string(clean.size()) + " is not a multiple of 4");
  }
  std::string out(clean.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(clean.data()), static_cast<int>(clean.size()));
  if (n < 0) return fail(Errc::data, "base64: not valid base64");
  std::size_t pad = 0;  // EVP_DecodeBlock counts the padding as zero bytes
  if (!clean.empty() && clean.back() == '=') ++pad;
  if (clean.size() > 1 && clean[clean.size() - 2] == '=') ++pad;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

}  // namespace cairn
