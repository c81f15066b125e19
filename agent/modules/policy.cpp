#include "agent/modules/policy.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <set>

#include "agent/modules/attachments.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/module/policy.hpp"
#include "common/time.hpp"

namespace cairn::agent::modules {
namespace {

constexpr std::size_t kMaxStateBytes = module::kMaxSignedPolicyBytes + 64 * 1024;

std::filesystem::path state_path(const AgentConfig& config) { return config.state_dir() / "modules/policy.json"; }

// What this process already reported, so a refused document arriving with every heartbeat
// leaves one event, not one per heartbeat (control keeps one row per id anyway).
bool first_report(const std::string& id) {
  static std::mutex mutex;
  static std::set<std::string> seen;
  std::lock_guard lock(mutex);
  if (seen.size() > 1024) seen.clear();
  return seen.insert(id).second;
}

void report(const AgentConfig& config, const std::string& id, const std::string& severity, const std::string& kind,
            const std::string& message, const std::string& now) {
  if (!first_report(id)) return;
  log::event(severity == "info" ? log::Level::info : log::Level::warning, kind, {{"message", message}});
  ModuleStore store(config.state_dir() / "modules");
  if (auto ok = record_event(store, {id, severity, kind, message, now}); !ok) {
    log::warn("modules.event_not_recorded", {{"kind", kind}, {"error", ok.error().message}});
  }
}

struct StoredState {
  std::uint64_t accepted_version = 0;
  Json signed_policy = nullptr;
};

Result<StoredState> load_state(const AgentConfig& config) {
  const auto path = state_path(config);
  auto text = read_file_if_exists(path, kMaxStateBytes);
  if (!text) return fail(text.error());
  if (!*text) return StoredState{};
  return decode_json<StoredState>(**text, path.string(), [&](const Json& j) -> Result<StoredState> {
    StoredState s;
    s.accepted_version = j.at("accepted_version").get<std::uint64_t>();
    s.signed_policy = j.at("signed_policy");
    return s;
  });
}

Result<std::chrono::system_clock::time_point> parse_now(const std::string& now) {
  auto t = parse_rfc3339(now);
  if (!t) return fail(Errc::internal, "module policy: the current time '" + now + "' is not an RFC 3339 time");
  return *t;
}

std::string document_id(const Json& signed_policy) { return sha256_hex(dump_json(signed_policy)).substr(0, 32); }

// h-polexpiry: why a verified policy does not hold at `now`, as the receipt that says so
// (expired, or refused for want of the expiry the configuration asks for); nullopt: it holds.
std::optional<PolicyReceipt> not_in_force(const AgentConfig& config, const module::ModulePolicy& p,
                                          std::chrono::system_clock::time_point now) {
  const auto version = std::to_string(p.version);
  if (module::policy_expired(p, now)) {
    return PolicyReceipt{PolicyReceipt::Kind::expired, p.version,
                         "module trust policy version " + version + " expired at " + module::format_policy_expiry(*p.expires) +
                             " (node clock " + format_rfc3339(now) + ")"};
  }
  if (config.module_policy_require_expiry && !p.expires) {
    return PolicyReceipt{PolicyReceipt::Kind::refused, p.version,
                         "module trust policy version " + version +
                             " carries no expiry, and modules.policy_require_expiry is set in the agent's configuration"};
  }
  return std::nullopt;
}

// Its event: the same id whether the policy arrived so or became so after it was accepted, so
// this process reports a document once.
void report_not_in_force(const AgentConfig& config, const std::string& doc_id, const PolicyReceipt& r,
                         const std::string& consequence, const std::string& now) {
  const bool expired = r.kind == PolicyReceipt::Kind::expired;
  const std::string kind = expired ? "module.policy_expired" : "module.policy_refused";
  report(config, kind + "." + doc_id, "warning", kind,
         r.message + ": " + consequence + "; re-sign it with " +
             (expired ? "a later --expires" : "--expires") +
             " (cairn-module policy sign --expires 30d, with a higher version) and set it on control",
         now);
}

}  // namespace

std::string_view receipt_name(PolicyReceipt::Kind kind) {
  switch (kind) {
    case PolicyReceipt::Kind::none: return "none";
    case PolicyReceipt::Kind::ignored: return "ignored";
    case PolicyReceipt::Kind::unchanged: return "unchanged";
    case PolicyReceipt::Kind::accepted: return "accepted";
    case PolicyReceipt::Kind::refused: return "refused";
    case PolicyReceipt::Kind::rollback: return "rollback";
    case PolicyReceipt::Kind::expired: return "expired";
  }
  return "?";
}

Result<std::map<std::string, EvpPkey>> pinned_policy_keys(const AgentConfig& config) {
  std::map<std::string, EvpPkey> out;
  const Json& j = config.module_policy_keys;
  if (j.is_null()) return out;
  if (!j.is_array()) return fail(Errc::config, "modules.policy_keys: not a list of public key files");
  for (const auto& f : j) {
    if (!f.is_string()) return fail(Errc::config, "modules.policy_keys: a key file is not a string");
    const auto path = config_file_path(config.root, config.module_config_file, f.get<std::string>());
    auto key = module::load_public_key(path);
    if (!key) return fail(Error{Errc::config, "policy key " + path.string() + ": " + key.error().message, key.error().hint});
    auto id = module::key_id(key->get());
    if (!id) return fail(Error{Errc::config, "policy key " + path.string() + ": " + id.error().message, ""});
    out.emplace(*id, std::move(*key));
  }
  return out;
}

Result<PolicyReceipt> receive_policy(const AgentConfig& config, const Json& signed_policy, const std::string& now) {
  PolicyReceipt out;
  if (signed_policy.is_null()) return out;
  auto now_time = parse_now(now);
  if (!now_time) return fail(now_time.error());
  auto pinned = pinned_policy_keys(config);
  if (!pinned) return fail(pinned.error());
  if (pinned->empty()) {
    static std::atomic<bool> logged{false};
    if (!logged.exchange(true)) {
      log::info("modules.policy_ignored", {{"reason", "no modules.policy_keys pinned in the agent's configuration"}});
    }
    out.kind = PolicyReceipt::Kind::ignored;
    out.message = "no policy key is pinned (modules.policy_keys): the distributed policy is ignored";
    return out;
  }
  const std::string doc_id = document_id(signed_policy);
  const auto refuse = [&](const Error& e) {
    out.kind = PolicyReceipt::Kind::refused;
    out.message = e.message;
    report(config, "module.policy_refused." + doc_id, "warning", "module.policy_refused",
           "module trust policy from control refused: " + e.message + "; the node keeps the policy it accepted before", now);
    return out;
  };
  auto parsed = module::signed_policy_from_json(signed_policy);
  if (!parsed) return refuse(parsed.error());
  auto policy = module::verify_signed_policy(*parsed, *pinned);
  if (!policy) return refuse(policy.error());
  out.version = policy->version;
  // Before the version rule: an expired policy is refused whatever the state says (a diskless
  // node has none), and refusing it leaves the accepted version as it was.
  if (auto no = not_in_force(config, *policy, *now_time)) {
    out = *no;
    report_not_in_force(config, doc_id, out, "refused, the node keeps the policy it accepted before (if any, and still in force)", now);
    return out;
  }
  auto state = load_state(config);
  if (!state && state.error().code == Errc::data) {
    // A damaged state file (a disk error, a hand edit) must not lock the node out of every
    // later policy: it is kept aside for a look, reported, and this verified policy starts over.
    const auto path = state_path(config);
    std::error_code ec;
    std::filesystem::rename(path, path.string() + ".corrupt", ec);
    report(config, "module.policy_state_corrupt." + doc_id, "warning", "module.policy_state_corrupt",
           "the accepted module policy state " + path.string() + " was unreadable (" + state.error().message +
               "); kept as policy.json.corrupt, and the verified policy from control starts it again",
           now);
    state = load_state(config);
  }
  if (!state) return fail(state.error());
  if (policy->version < state->accepted_version) {
    out.kind = PolicyReceipt::Kind::rollback;
    out.message = "module trust policy version " + std::to_string(policy->version) + " is older than the accepted version " +
                  std::to_string(state->accepted_version) + ": rollback refused";
    report(config, "module.policy_rollback." + doc_id, "warning", "module.policy_rollback", out.message, now);
    return out;
  }
  if (policy->version == state->accepted_version) {
    auto before = module::signed_policy_from_json(state->signed_policy);
    if (before && before->policy_text == parsed->policy_text) {
      out.kind = PolicyReceipt::Kind::unchanged;
      return out;
    }
    return refuse(Error{Errc::refused, "version " + std::to_string(policy->version) +
                                           " was accepted before with other content; a changed policy needs a higher version", ""});
  }
  const Json state_json = {{"accepted_version", policy->version}, {"signed_policy", module::signed_policy_json(*parsed)}};
  if (auto ok = make_dirs(state_path(config).parent_path(), 0700); !ok) return fail(ok.error());
  if (auto ok = write_file_atomic(state_path(config), dump_json(state_json, 2) + "\n"); !ok) return fail(ok.error());
  out.kind = PolicyReceipt::Kind::accepted;
  report(config, "module.policy_accepted.v" + std::to_string(policy->version) + "." + doc_id.substr(0, 16), "info",
         "module.policy_accepted",
         "module trust policy version " + std::to_string(policy->version) + " accepted (signed by policy key " +
             parsed->signature.key_id + ")",
         now);
  return out;
}

Result<std::optional<AcceptedPolicy>> load_accepted_policy(const AgentConfig& config, const std::string& now) {
  auto state = load_state(config);
  if (!state) return fail(state.error());
  if (state->accepted_version == 0) return std::optional<AcceptedPolicy>{};
  auto pinned = pinned_policy_keys(config);
  if (!pinned) return fail(pinned.error());
  if (pinned->empty()) return std::optional<AcceptedPolicy>{};  // no key pinned any more: local trust only
  auto parsed = module::signed_policy_from_json(state->signed_policy);
  if (!parsed) return fail(parsed.error().with_context(state_path(config).string()));
  // Verified again: the file is ours, but the pinned keys may have changed since.
  auto policy = module::verify_signed_policy(*parsed, *pinned);
  if (!policy) {
    log::warn("modules.policy_not_trusted", {{"path", state_path(config).string()}, {"error", policy.error().message}});
    return std::optional<AcceptedPolicy>{};
  }
  // Checked again at every use: a policy accepted while in force widens trust only until it
  // expires (fail closed), and only while the configuration does not ask for an expiry it lacks.
  auto now_time = parse_now(now);
  if (!now_time) return fail(now_time.error());
  if (auto no = not_in_force(config, *policy, *now_time)) {
    report_not_in_force(config, document_id(state->signed_policy), *no, "the accepted policy no longer widens trust", now);
    return std::optional<AcceptedPolicy>{};
  }
  return std::optional<AcceptedPolicy>(AcceptedPolicy{policy->version, std::move(*policy)});
}

Status merge_accepted_policy(const AgentConfig& config, TrustPolicy& trust, const std::string& now) {
  auto accepted = load_accepted_policy(config, now);
  if (!accepted) return fail(accepted.error());
  if (!*accepted) return {};
  for (const auto& [id, pem] : (*accepted)->policy.key_pems) {
    if (trust.keys.contains(id)) continue;
    auto key = parse_public_key_pem(pem);
    if (!key) return fail(key.error().with_context("accepted module policy key " + id));
    trust.keys.emplace(id, std::move(*key));
  }
  trust.distributed = (*accepted)->policy.rules;
  trust.distributed_version = (*accepted)->version;
  return {};
}

}  // namespace cairn::agent::modules
