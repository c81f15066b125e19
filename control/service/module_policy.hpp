// The module trust policy control hands to every node with its desired set (h-modpolicy;
// common/module/policy.hpp has the document). Control does not hold the policy keys: it checks
// the signed document's shape and that its version does not go back, keeps it in
// <state>/module-policy.json (written atomically, outside the SQL store) and serves it as it
// was signed. Only an agent that pins the policy key trusts what it says, so a compromised
// control service can withhold or replay a policy but never widen a node's trust.
//   GET  /v1/admin/modules/policy  -> {"policy": <signed document> | null, "version"}
//   POST /v1/admin/modules/policy  {"policy": <signed document>} -> the same
#pragma once

#include <cstdint>
#include <ctime>
#include <filesystem>
#include <mutex>

#include "common/json.hpp"
#include "common/result.hpp"
#include "control/api_error.hpp"

namespace cairn::control {

class ModulePolicyFile {
 public:
  explicit ModulePolicyFile(std::filesystem::path path) : path_(std::move(path)) {}

  // The signed document for heartbeat replies (null: none set). Re-read when the file changed
  // (another replica sharing the state dir, or a restore); a damaged file serves null and logs.
  Json current();

  // Validates and stores a signed document. Errc::data: malformed; Errc::refused: its version
  // is lower than the stored one's, or equal with other content.
  Result<Json> set(const Json& signed_policy);

  ApiResult<Json> admin_show();
  ApiResult<Json> admin_set(const Json& body);

 private:
  Status reload_locked();

  std::filesystem::path path_;
  std::mutex mutex_;
  Json cached_ = nullptr;
  std::uint64_t version_ = 0;
  std::timespec mtime_{};
  bool loaded_ = false;
};

}  // namespace cairn::control
