// The module trust policy control hands to every node with its desired set (h-modpolicy;
// common/module/policy.hpp has the document). Control does not hold the policy keys: it checks
// the signed document's shape and that its version does not go back, keeps it in the store
// (h-policystore: one policy for every replica on the database) and serves it as it was
// signed. Only an agent that pins the policy key trusts what it says, so a compromised control
// service can withhold or replay a policy but never widen a node's trust.
// A policy whose signed expiry has passed (h-polexpiry) is refused when set: nodes would refuse it.
//   GET  /v1/admin/modules/policy  -> {"policy": <signed document> | null, "version", "expires" (when it has one)}
//   POST /v1/admin/modules/policy  {"policy": <signed document>} -> the same
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>

#include "common/clock.hpp"
#include "common/json.hpp"
#include "common/result.hpp"
#include "control/api_error.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

class ModulePolicy {
 public:
  // How old the document current() serves may get. A policy set through another replica
  // reaches this one's heartbeat replies within it; the heartbeat path costs the database one
  // read per period, not one per heartbeat (or per batch).
  static constexpr std::chrono::milliseconds kRefreshPeriod{1000};

  ModulePolicy(Store& store, const Clock& clock, std::chrono::milliseconds refresh_period = kRefreshPeriod)
      : store_(store), clock_(clock), refresh_period_(refresh_period) {}

  // The signed document for heartbeat replies (null: none set), from a cache read again from
  // the store at most once per refresh period. A failed read keeps serving the cached document
  // (and logs); so does a stored document that does not parse.
  Json current();

  // Validates and stores a signed document. Errc::data: malformed, or expired at clock.now();
  // Errc::refused: its version
  // is lower than the stored one's, or equal with other content (decided by the store in one
  // conditional statement: replicas setting at once cannot let a lower version win).
  Result<Json> set(const Json& signed_policy);

  // Migration of a deployment from before h-policystore, which kept the policy in
  // <state>/module-policy.json: a policy found there is put through the same rule as set()
  // (the store keeps the newer one) and logged once when imported. The file is left in place
  // and never read again otherwise. No file: nothing to do.
  Status import_file(const std::filesystem::path& file);

  ApiResult<Json> admin_show();  // what the store holds now (not the cache)
  ApiResult<Json> admin_set(const Json& body);

 private:
  struct Loaded {
    Json document = nullptr;
    std::uint64_t version = 0;
  };
  Result<Loaded> load();

  Store& store_;
  const Clock& clock_;
  const std::chrono::milliseconds refresh_period_;
  std::mutex mutex_;  // the cache; held across its refresh so a set() in between is not undone
  Loaded cached_;
  std::optional<Clock::MonoTime> loaded_at_;  // none: read the store at the next current()
};

}  // namespace cairn::control
