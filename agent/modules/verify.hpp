// Verification of a module before it is attached, and again before it is mounted: the
// signature against the trust policy (allowed keys per module name), the manifest against
// what was asked for (name, version), the image's size, sha256 and fs-verity digest against
// the manifest. Where the store's filesystem supports fs-verity the image gets it enabled
// (FS_IOC_ENABLE_VERITY) and the kernel's measurement (FS_IOC_MEASURE_VERITY) must equal the
// manifest, so every later read is checked by the kernel; where it does not, the state says
// "unavailable" with the reason.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/modules/store.hpp"
#include "common/json.hpp"
#include "common/module/manifest.hpp"
#include "common/module/policy.hpp"
#include "common/module/signature.hpp"
#include "common/result.hpp"
#include "common/root.hpp"
#include "common/ssl.hpp"

namespace cairn::agent::modules {

// Which keys may sign which module, pinned by the agent's configuration:
//   "trust": {"NAME": ["keys/a.pub", ...], "*": ["keys/fleet.pub"]}
// "*" applies to every name. Keys are public key PEM files; they are named by key id.
// The effective trust is the union of that and the policy distributed by control once the
// agent accepted it (agent/modules/policy.hpp): its rules match names by glob.
struct TrustPolicy {
  std::map<std::string, std::vector<std::string>> allowed;  // module name or "*" -> key ids
  std::map<std::string, EvpPkey> keys;                      // key id -> public key
  std::vector<module::PolicyRule> distributed{};            // the accepted distributed policy's rules
  std::uint64_t distributed_version = 0;                    // 0: none accepted
};
// `resolve` turns a key file value of the config into a host path.
Result<TrustPolicy> trust_policy_from_json(const Json& j,
                                           const std::function<std::filesystem::path(const std::string&)>& resolve);
// Key ids allowed for a module name (its own list plus "*", plus every distributed rule
// whose pattern matches it).
std::vector<std::string> allowed_keys(const TrustPolicy& policy, const std::string& name);

struct VerifyRequest {
  std::string manifest_text;
  std::vector<std::string> signatures;      // every .sig found; one trusted valid one suffices
  std::filesystem::path image;
  std::optional<std::string> expect_name{};     // from the assignment / the command line
  std::optional<std::string> expect_version{};
  bool enable_verity = false;  // only for store files (read-only commands never change files)
};

struct VerifiedModule {
  module::Manifest manifest;
  std::string key_id;
  std::size_t signature_index = 0;  // which of VerifyRequest::signatures verified
  std::string verity;               // "enabled", "unavailable: <why>" or "not enabled (read-only check)"
};

// Every check, in order: manifest parse, name/version, signature by an allowed key, image
// size, sha256 and fs-verity digest (one pass), kernel fs-verity. Errc::data for damaged
// input, Errc::refused for a signature or policy refusal, Errc::io for unreadable files.
Result<VerifiedModule> verify_module(const VerifyRequest& request, const TrustPolicy& policy);

// Before mounting an attached module: its manifest and signature blobs re-read (they must
// still hash to their digests) and re-verified, and the image checked again: measured by the
// kernel when fs-verity is on, else hashed again.
Status reverify_attached(const ModuleStore& store, const AttachedModule& module, const TrustPolicy& policy);

// The kernel side of fs-verity, on one file.
struct VerityResult {
  bool enabled = false;
  std::string measured_hex;  // when enabled
  std::string unavailable;   // why not, when not enabled
};
// enable: FS_IOC_ENABLE_VERITY first (EEXIST: already on); then FS_IOC_MEASURE_VERITY.
// ENOTTY/EOPNOTSUPP (no fs-verity in the kernel or filesystem) is `unavailable`, not an error.
Result<VerityResult> kernel_verity(const std::filesystem::path& file, bool enable);

}  // namespace cairn::agent::modules
