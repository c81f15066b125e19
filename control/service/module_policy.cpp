#include "control/service/module_policy.hpp"

#include <sys/stat.h>

#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/module/policy.hpp"

namespace cairn::control {
namespace {

Json show(const Json& policy, std::uint64_t version) { return {{"policy", policy}, {"version", version}}; }

}  // namespace

Status ModulePolicyFile::reload_locked() {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) {
    cached_ = nullptr;
    version_ = 0;
    mtime_ = {};
    loaded_ = true;
    return {};
  }
  if (loaded_ && st.st_mtim.tv_sec == mtime_.tv_sec && st.st_mtim.tv_nsec == mtime_.tv_nsec) return {};
  mtime_ = st.st_mtim;
  loaded_ = true;
  cached_ = nullptr;
  version_ = 0;
  auto text = read_file(path_, module::kMaxSignedPolicyBytes);
  if (!text) return fail(text.error());
  auto signed_policy = module::parse_signed_policy(*text);
  if (!signed_policy) return fail(signed_policy.error().with_context(path_.string()));
  auto policy = module::parse_policy(signed_policy->policy_text);
  if (!policy) return fail(policy.error().with_context(path_.string()));
  cached_ = module::signed_policy_json(*signed_policy);
  version_ = policy->version;
  return {};
}

Json ModulePolicyFile::current() {
  std::lock_guard lock(mutex_);
  if (auto ok = reload_locked(); !ok) {
    log::error("modules.policy_unreadable", {{"path", path_.string()}, {"error", ok.error().message}});
    return nullptr;
  }
  return cached_;
}

Result<Json> ModulePolicyFile::set(const Json& signed_json) {
  auto signed_policy = module::signed_policy_from_json(signed_json);
  if (!signed_policy) return fail(signed_policy.error());
  auto policy = module::parse_policy(signed_policy->policy_text);
  if (!policy) return fail(policy.error());
  std::lock_guard lock(mutex_);
  if (auto ok = reload_locked(); !ok) {
    log::warn("modules.policy_replaced_unreadable", {{"path", path_.string()}, {"error", ok.error().message}});
  }
  if (!cached_.is_null()) {
    const auto before = module::signed_policy_from_json(cached_);
    const bool same = before && before->policy_text == signed_policy->policy_text;
    if (policy->version < version_ || (policy->version == version_ && !same)) {
      return fail(Errc::refused,
                  "module policy version " + std::to_string(policy->version) + " does not follow the stored version " +
                      std::to_string(version_),
                  "raise \"version\" above " + std::to_string(version_) + " and sign the policy again; nodes refuse older versions anyway");
    }
  }
  const Json doc = module::signed_policy_json(*signed_policy);
  if (auto ok = write_file_atomic(path_, dump_json(doc, 2) + "\n"); !ok) return fail(ok.error());
  loaded_ = false;  // the next read takes the file's new mtime
  cached_ = doc;
  version_ = policy->version;
  log::info("modules.policy_set", {{"version", policy->version}, {"signed_by", signed_policy->signature.key_id}});
  return show(doc, version_);
}

ApiResult<Json> ModulePolicyFile::admin_show() {
  auto doc = current();
  std::lock_guard lock(mutex_);
  return show(doc, doc.is_null() ? 0 : version_);
}

ApiResult<Json> ModulePolicyFile::admin_set(const Json& body) {
  if (!body.is_object() || !body.contains("policy")) {
    return refuse(400, "bad_request", "module policy body: expected {\"policy\": <signed policy document>}",
                  "sign the policy with cairn-module policy sign and pass the file it wrote");
  }
  auto r = set(body["policy"]);
  if (!r) {
    if (r.error().code == Errc::refused) return refuse(409, "policy_version", r.error().message, r.error().hint);
    if (r.error().code == Errc::data) return refuse(400, "bad_request", r.error().message, r.error().hint);
    return refuse(500, "store_error", r.error().message, r.error().hint);
  }
  return *r;
}

}  // namespace cairn::control
