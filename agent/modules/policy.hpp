// The module trust policy control distributes with the desired set (common/module/policy.hpp),
// as the agent takes it: accepted only when its signature verifies with a policy key pinned in
// the agent's own configuration ("modules": {"policy_keys": [PEM files]}) and its version is at
// least the last accepted one (kept in <persist>/cairn/modules/policy.json, written
// atomically). Without pinned policy keys a distributed policy is ignored (logged once per
// process): control alone can never add a key. The effective trust for a module is the union
// of the agent's own "trust" and the accepted policy: the policy widens trust only as far as
// a pinned policy key signed it, and narrows only what an earlier policy granted, never what
// the configuration trusts.
//
// Expiry (h-polexpiry): a policy whose signed "expires" is at or before the node's clock is
// refused (module.policy_expired), and an accepted one that has since expired no longer widens
// trust. A diskless node forgets its accepted version at every boot, so the expiry is what
// bounds how old a policy a compromised control service can replay to it;
// modules.policy_require_expiry makes every distributed policy carry one.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "agent/config.hpp"
#include "agent/modules/verify.hpp"
#include "common/json.hpp"
#include "common/result.hpp"
#include "common/ssl.hpp"

namespace cairn::agent::modules {

// The pinned policy keys of the configuration (key id -> public key); empty when none.
Result<std::map<std::string, EvpPkey>> pinned_policy_keys(const AgentConfig& config);

struct PolicyReceipt {
  enum class Kind { none, ignored, unchanged, accepted, refused, rollback, expired };
  Kind kind = Kind::none;
  std::uint64_t version = 0;  // of the received policy, when it verified
  std::string message;        // why, for ignored / refused / rollback / expired
};
std::string_view receipt_name(PolicyReceipt::Kind kind);

// Takes the signed policy of a heartbeat reply (null: control has none, nothing happens).
// Accepted: stored as the new accepted policy, event module.policy_accepted. Refused (bad
// signature, a key that is not pinned, malformed, the same version with other content):
// event module.policy_refused; so is one without "expires" under modules.policy_require_expiry.
// Expired at `now_rfc3339`: event module.policy_expired. Older than the accepted one: event
// module.policy_rollback. Each event once per document and process; its id is stable per
// document, so control shows it once. Errors are only the store's (the state file cannot be
// written) and a `now` that is not an RFC 3339 time.
Result<PolicyReceipt> receive_policy(const AgentConfig& config, const Json& signed_policy, const std::string& now_rfc3339);

// The accepted policy (verified again with the pinned keys), or nullopt when there is none, no
// key is pinned any more, or it no longer holds at `now_rfc3339`: expired (module.policy_expired,
// once per process) or without the expiry modules.policy_require_expiry asks for.
struct AcceptedPolicy {
  std::uint64_t version = 0;
  module::ModulePolicy policy;
};
Result<std::optional<AcceptedPolicy>> load_accepted_policy(const AgentConfig& config, const std::string& now_rfc3339);

// Adds the accepted policy's rules and keys to `trust` (the agent's own policy), when it holds
// at `now_rfc3339` (load_accepted_policy).
Status merge_accepted_policy(const AgentConfig& config, TrustPolicy& trust, const std::string& now_rfc3339);

}  // namespace cairn::agent::modules
