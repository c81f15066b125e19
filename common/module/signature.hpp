// Detached module signatures: Ed25519 (RFC 8032) or ECDSA P-256 over SHA-256, over the
// manifest's canonical bytes (manifest.hpp). A key is named by its id: "sha256:" + hex of
// SHA-256 over the public key's SubjectPublicKeyInfo DER, so a policy can list ids.
// The .sig file is JSON: {"format","algorithm","key_id","signature"(hex)}.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "common/module/manifest.hpp"
#include "common/result.hpp"
#include "common/ssl.hpp"

namespace cairn::module {

inline constexpr std::size_t kMaxSignatureBytes = 16 * 1024;

struct Signature {
  std::string algorithm;      // "ed25519" or "ecdsa-p256-sha256"
  std::string key_id;         // "sha256:<hex>"
  std::string signature_hex;  // raw Ed25519 (64 bytes) or DER ECDSA-Sig-Value, as hex
};

// The id of a public (or private: its public half) key. Errc::data for an unsupported key type.
Result<std::string> key_id(const EVP_PKEY* key);
// "ed25519" / "ecdsa-p256-sha256"; Errc::data for any other key (RSA, other curves).
Result<std::string> signature_algorithm(const EVP_PKEY* key);

Result<Signature> sign_manifest(const EVP_PKEY* private_key, const Manifest& m);
// Errc::refused: the key id differs from the signature's, the algorithm does not match the
// key, or the signature does not verify over the canonical bytes. Messages say which.
Status verify_manifest(const Manifest& m, const Signature& sig, const EVP_PKEY* public_key);

std::string serialize_signature(const Signature& sig);  // JSON + "\n"
Result<Signature> parse_signature(std::string_view text, std::string_view what = "module signature");

// PEM key files: a private key file must not be readable by group or others (Errc::config).
Result<EvpPkey> load_private_key(const std::filesystem::path& path);
Result<EvpPkey> load_public_key(const std::filesystem::path& path);  // a private key PEM also works

}  // namespace cairn::module
