// Module signatures on top of common/crypto (which holds sign_hex / verify_signature_hex).
#include "common/module/signature.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/crypto.hpp"
#include "common/fs.hpp"

namespace cairn::module {
namespace {

constexpr std::string_view kSignatureFormat = "cairn.module.signature.v1";

bool is_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

Result<std::string> signature_algorithm(const EVP_PKEY* key) {
  const std::string type = key_type_name(key);
  if (type == "ED25519") return std::string("ed25519");
  if (type == "P-256") return std::string("ecdsa-p256-sha256");
  return fail(Errc::data, "a " + type + " key cannot sign modules", "use an Ed25519 or ECDSA P-256 key (cairn-module keygen)");
}

Result<std::string> key_id(const EVP_PKEY* key) {
  if (auto alg = signature_algorithm(key); !alg) return fail(alg.error());
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(const_cast<EVP_PKEY*>(key), &der);
  if (len <= 0) return fail(Errc::internal, "i2d_PUBKEY: " + openssl_error());
  std::string bytes(reinterpret_cast<const char*>(der), static_cast<std::size_t>(len));
  OPENSSL_free(der);
  return "sha256:" + sha256_hex(bytes);
}

Result<Signature> sign_manifest(const EVP_PKEY* private_key, const Manifest& m) {
  if (auto s = validate(m); !s) return fail(s.error().with_context("sign"));
  auto alg = signature_algorithm(private_key);
  if (!alg) return fail(alg.error());
  auto id = key_id(private_key);
  if (!id) return fail(id.error());
  auto sig = sign_hex(private_key, canonical_bytes(m));
  if (!sig) return fail(sig.error());
  return Signature{*alg, *id, *sig};
}

Status verify_manifest(const Manifest& m, const Signature& sig, const EVP_PKEY* public_key) {
  auto id = key_id(public_key);
  if (!id) return fail(Errc::refused, id.error().message, id.error().hint);
  if (*id != sig.key_id) {
    return fail(Errc::refused, "signature check failed: signed by key " + sig.key_id + ", not by the given key " + *id,
                "verify with the key that signed the module, or re-sign it with a trusted key");
  }
  auto alg = signature_algorithm(public_key);
  if (!alg || *alg != sig.algorithm) {
    return fail(Errc::refused, "signature check failed: algorithm " + sig.algorithm + " does not match the key");
  }
  if (auto s = verify_signature_hex(public_key, canonical_bytes(m), sig.signature_hex); !s) {
    return fail(Errc::refused,
                "signature check failed: the signature by " + sig.key_id + " does not match the manifest " + m.name +
                    "@" + m.version,
                "the manifest or the signature was altered; fetch both again");
  }
  return {};
}

std::string serialize_signature(const Signature& sig) {
  return dump_json(Json{{"format", kSignatureFormat},
                        {"algorithm", sig.algorithm},
                        {"key_id", sig.key_id},
                        {"signature", sig.signature_hex}},
                   2) +
         "\n";
}

Result<Signature> parse_signature(std::string_view text, std::string_view what) {
  const std::string where(what);
  if (text.size() > kMaxSignatureBytes) return fail(Errc::data, where + ": larger than " + std::to_string(kMaxSignatureBytes) + " bytes");
  return decode_json<Signature>(text, what, [&](const Json& j) -> Result<Signature> {
    if (!j.is_object()) return fail(Errc::data, where + ": not a JSON object");
    for (const auto& [k, v] : j.items()) {
      if (k != "format" && k != "algorithm" && k != "key_id" && k != "signature") {
        return fail(Errc::data, where + ": unknown key '" + k + "'");
      }
    }
    if (j.at("format").get<std::string>() != kSignatureFormat) {
      return fail(Errc::data, where + ": not a " + std::string(kSignatureFormat) + " file");
    }
    Signature s{j.at("algorithm").get<std::string>(), j.at("key_id").get<std::string>(),
                j.at("signature").get<std::string>()};
    if (s.algorithm != "ed25519" && s.algorithm != "ecdsa-p256-sha256") {
      return fail(Errc::data, where + ": unknown algorithm '" + s.algorithm.substr(0, 40) + "'");
    }
    if (!s.key_id.starts_with("sha256:") || s.key_id.size() != 71 || !is_hex(s.key_id.substr(7))) {
      return fail(Errc::data, where + ": key_id is not sha256:<64 hex>");
    }
    if (s.signature_hex.empty() || s.signature_hex.size() > 512 || s.signature_hex.size() % 2 != 0 ||
        !is_hex(s.signature_hex)) {
      return fail(Errc::data, where + ": signature is not lower-case hex of at most 256 bytes");
    }
    return s;
  });
}

Result<EvpPkey> load_private_key(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return fail(Errc::config, path.string() + ": " + std::strerror(errno), "pass the key written by cairn-module keygen");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    return fail(Errc::config, path.string() + ": private key is accessible by group or others (mode " + mode + ")",
                "run chmod 600 " + path.string());
  }
  auto pem = read_file(path, 64 * 1024);
  if (!pem) return fail(pem.error());
  auto key = parse_private_key_pem(*pem);
  if (!key) return fail(key.error().with_context(path.string()));
  return key;
}

Result<EvpPkey> load_public_key(const std::filesystem::path& path) {
  auto pem = read_file(path, 64 * 1024);
  if (!pem) return fail(pem.error().with_context("public key"));
  if (pem->find("PRIVATE KEY") != std::string::npos) {
    auto key = parse_private_key_pem(*pem);
    if (!key) return fail(key.error().with_context(path.string()));
    return key;
  }
  auto key = parse_public_key_pem(*pem);
  if (!key) return fail(key.error().with_context(path.string()));
  return key;
}

}  // namespace cairn::module
