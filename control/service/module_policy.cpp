#include "control/service/module_policy.hpp"

#include <chrono>
#include <limits>
#include <optional>
#include <string>

#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/module/policy.hpp"
#include "common/time.hpp"

namespace cairn::control {
namespace {

// "expires" (h-polexpiry) is the signed policy's own, repeated for a reader of the answer.
Json show(const Json& policy, std::uint64_t version, const std::optional<std::chrono::sys_seconds>& expires) {
  Json j = {{"policy", policy}, {"version", version}};
  if (expires) j["expires"] = module::format_policy_expiry(*expires);
  return j;
}

std::optional<std::chrono::sys_seconds> expiry_of(const Json& document) {
  if (document.is_null()) return std::nullopt;
  auto signed_policy = module::signed_policy_from_json(document);
  auto policy = signed_policy ? module::parse_policy(signed_policy->policy_text) : Result<module::ModulePolicy>(fail(signed_policy.error()));
  return policy ? policy->expires : std::nullopt;
}

}  // namespace

Result<ModulePolicy::Loaded> ModulePolicy::load() {
  auto stored = store_.find_module_policy();
  if (!stored) return fail(stored.error().with_context("read the module policy"));
  if (!*stored) return Loaded{};
  auto doc = parse_json((*stored)->document, "the stored module policy");
  if (!doc) return fail(doc.error());
  if (auto shape = module::signed_policy_from_json(*doc); !shape) {
    return fail(shape.error().with_context("the stored module policy"));
  }
  return Loaded{std::move(*doc), static_cast<std::uint64_t>((*stored)->version)};
}

Json ModulePolicy::current() {
  std::lock_guard lock(mutex_);
  const auto now = clock_.monotonic();
  if (loaded_at_ && now - *loaded_at_ < refresh_period_) return cached_.document;
  // Read again after a failure only one period later too: a database that is down costs one
  // failed read (and one log line) per period, not one per heartbeat batch.
  loaded_at_ = now;
  auto loaded = load();
  if (!loaded) {
    log::error("modules.policy_unreadable", {{"error", loaded.error().message}});
    return cached_.document;
  }
  cached_ = std::move(*loaded);
  return cached_.document;
}

Result<Json> ModulePolicy::set(const Json& signed_json) {
  auto signed_policy = module::signed_policy_from_json(signed_json);
  if (!signed_policy) return fail(signed_policy.error());
  auto policy = module::parse_policy(signed_policy->policy_text);
  if (!policy) return fail(policy.error());
  // h-polexpiry: nodes refuse it anyway; refusing it here says so to the operator at once,
  // instead of as a warning from every node.
  if (module::policy_expired(*policy, clock_.now())) {
    return fail(Errc::data,
                "module policy version " + std::to_string(policy->version) + " expired at " +
                    module::format_policy_expiry(*policy->expires) + " (control's clock: " + format_rfc3339(clock_.now()) +
                    "); nodes refuse it",
                "sign it again with a later expiry and a higher version: cairn-module policy sign POLICY.json --key KEY "
                "--expires 30d --version N");
  }
  constexpr auto kMaxVersion = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (policy->version > kMaxVersion) {
    return fail(Errc::data,
                "module policy version " + std::to_string(policy->version) + " is above " +
                    std::to_string(kMaxVersion) + ", the highest the store keeps",
                "give the policy a smaller \"version\" and sign it again");
  }
  const Json doc = module::signed_policy_json(*signed_policy);
  const ModulePolicyRecord record{static_cast<std::int64_t>(policy->version), signed_policy->policy_text,
                                  dump_json(doc), to_unix_ms(clock_.now())};
  auto put = store_.put_module_policy(record);
  if (!put) return fail(put.error().with_context("store the module policy"));
  if (!put->stored) {
    const auto stored = std::to_string(put->stored_version);
    return fail(Errc::refused,
                "module policy version " + std::to_string(policy->version) + " does not follow the stored version " +
                    stored,
                "raise \"version\" above " + stored + " and sign the policy again; nodes refuse older versions anyway");
  }
  {
    // This replica serves it from the next heartbeat on; the others within their refresh period.
    std::lock_guard lock(mutex_);
    if (policy->version >= cached_.version) cached_ = Loaded{doc, policy->version};
    loaded_at_ = clock_.monotonic();
  }
  log::info("modules.policy_set", {{"version", policy->version}, {"signed_by", signed_policy->signature.key_id}});
  return show(doc, policy->version, policy->expires);
}

Status ModulePolicy::import_file(const std::filesystem::path& file) {
  auto text = read_file_if_exists(file, module::kMaxSignedPolicyBytes);
  if (!text) return fail(text.error());
  if (!*text) return {};
  auto signed_policy = module::parse_signed_policy(**text);
  if (!signed_policy) return fail(signed_policy.error().with_context(file.string()));
  auto stored = store_.find_module_policy();
  if (!stored) return fail(stored.error().with_context("import " + file.string()));
  if (*stored && (*stored)->policy_text == signed_policy->policy_text) return {};  // imported before
  auto r = set(module::signed_policy_json(*signed_policy));
  if (!r && r.error().code == Errc::refused) {
    // The store holds a newer policy (set through a replica, or imported from another state
    // dir): it stays.
    log::info("modules.policy_file_superseded", {{"path", file.string()}, {"reason", r.error().message}});
    return {};
  }
  if (!r) return fail(r.error().with_context("import " + file.string()));
  log::info("modules.policy_imported",
            {{"path", file.string()},
             {"version", (*r)["version"].get<std::uint64_t>()},
             {"note", "the policy now lives in the store, shared by every replica; this file is no longer read"}});
  return {};
}

ApiResult<Json> ModulePolicy::admin_show() {
  auto loaded = load();
  if (!loaded) return refuse(500, "store_error", loaded.error().message, loaded.error().hint);
  return show(loaded->document, loaded->version, expiry_of(loaded->document));
}

ApiResult<Json> ModulePolicy::admin_set(const Json& body) {
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
