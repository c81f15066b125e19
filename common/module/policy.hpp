// Module trust policies distributed by the control service (h-modpolicy): which public keys
// may sign which modules (a module name or a glob over names), with a version that only goes
// up, signed by a *policy key*. Control stores and hands the signed document to every node
// with its desired set; an agent accepts it only when the signature verifies with a policy
// key pinned in its own configuration, so control alone can never widen a node's trust.
//
// The signed document (what `cairn-module policy sign` writes and `cairn-control module
// policy set` takes) carries the policy text exactly as signed:
//   {"format": "cairn.module.policy.signed.v1", "policy": "<policy JSON text>",
//    "signature": {"algorithm", "key_id", "signature"}}
// The signature (Ed25519 or ECDSA P-256, as module signatures) covers
// "cairn-module-policy-v1\n" + the policy text. The policy text:
//   {"format": "cairn.module.policy.v1", "version": N,
//    "keys": {"sha256:<key id>": "<public key PEM>", ...},
//    "trust": {"NAME or GLOB": ["sha256:<key id>", ...], ...},
//    "expires": "2027-01-31T00:00:00Z"}
// A glob is fnmatch(3) syntax over module names ("web-*", "*", "db-[0-9]").
// "expires" (h-polexpiry, optional; none: the policy never expires) is inside the signed text,
// as TUF's metadata expiry is: a node without anti-rollback state (diskless, /persist on
// tmpfs) would take any old policy a pinned key once signed, so the expiry is what bounds how
// old a replayed policy can be. It is checked against the node's clock.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.hpp"
#include "common/module/signature.hpp"
#include "common/result.hpp"
#include "common/ssl.hpp"

namespace cairn::module {

inline constexpr std::size_t kMaxPolicyBytes = 256 * 1024;  // the policy text
// The signed document carries the policy text as a JSON string: escaping (quotes, backslashes,
// the newlines of PEM keys) at most doubles valid policy text, plus the signature's fields.
inline constexpr std::size_t kMaxSignedPolicyBytes = 2 * kMaxPolicyBytes + 4096;
inline constexpr std::size_t kMaxPolicyKeys = 64;
inline constexpr std::size_t kMaxPolicyRules = 256;
inline constexpr std::size_t kMaxKeysPerRule = 16;

struct PolicyRule {
  std::string pattern;                // a module name or a glob over names
  std::vector<std::string> key_ids;   // each one in ModulePolicy::keys
};

struct ModulePolicy {
  std::uint64_t version = 0;
  std::map<std::string, std::string> key_pems;  // key id -> public key PEM
  std::vector<PolicyRule> rules;
  std::optional<std::chrono::sys_seconds> expires;  // none: never expires
};

struct SignedPolicy {
  std::string policy_text;  // exactly the signed bytes
  Signature signature;
};

// Whether `pattern` (a name or an fnmatch glob) matches the module name.
bool policy_pattern_matches(std::string_view pattern, std::string_view name);
// A pattern may hold the characters of module names and * ? [ ] ! only.
Status validate_policy_pattern(std::string_view pattern);

// An expiry as the policy text writes it: exactly "YYYY-MM-DDTHH:MM:SSZ" (RFC 3339, UTC, whole
// seconds; no offset, no fraction), a real date of the years 1970-2199. Errc::data naming it.
Result<std::chrono::sys_seconds> parse_policy_expiry(std::string_view text);
std::string format_policy_expiry(std::chrono::sys_seconds t);
// Whether the policy has an expiry at or before `now`.
bool policy_expired(const ModulePolicy& policy, std::chrono::system_clock::time_point now);

// Parses and checks the policy text: format, version >= 1, every key a supported public key
// whose id is its own, every rule's ids among the keys, the expiry's form (whether it has
// passed is the caller's question), the caps above. Errc::data naming the fault.
Result<ModulePolicy> parse_policy(std::string_view text);
// The policy text of a policy (canonical JSON, sorted keys, one line; "expires" only when set).
std::string policy_text(const ModulePolicy& policy);

// Signs `text` (it must parse) with a policy key.
Result<SignedPolicy> sign_policy(const EVP_PKEY* private_key, std::string policy_text);

Json signed_policy_json(const SignedPolicy& p);
std::string serialize_signed_policy(const SignedPolicy& p);  // JSON, indented, + "\n"
// The signed document's structure only (the signature is not checked here). Errc::data.
Result<SignedPolicy> signed_policy_from_json(const Json& j);
Result<SignedPolicy> parse_signed_policy(std::string_view text);

// Verifies the signature with one of `pinned` (key id -> public key), then parses the policy.
// Errc::refused: signed by a key that is not pinned, or the signature does not verify.
Result<ModulePolicy> verify_signed_policy(const SignedPolicy& p, const std::map<std::string, EvpPkey>& pinned);

}  // namespace cairn::module
