// `cairn-module policy sign POLICY.json --key KEY [--out FILE] [--expires WHEN] [--version N]`
// (h-modpolicy): turns the operator's policy into the signed document `cairn-control module
// policy set` takes (common/module/policy.hpp). POLICY.json names keys by file:
//   {"version": 2, "trust": {"web-*": ["keys/web.pub"], "db": ["keys/db.pub", "keys/ops.pub"]}}
// (a relative path is relative to POLICY.json; a PEM string works too). Default FILE:
// POLICY.signed.json beside it. `policy verify FILE --key POLICY_KEY.pub` checks one.
//
// The expiry (h-polexpiry) is a property of each signing, not of the operator's file: --expires
// 30d counts from now, so a scheduled re-sign of the same file moves it on. POLICY.json may
// therefore not hold "expires" (it would be ignored or contradict the flag). --version
// overrides the file's version for the same reason: every re-signed text needs a higher one.
#include <algorithm>
#include <chrono>
#include <map>

#include "common/clock.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/policy.hpp"
#include "common/module/signature.hpp"
#include "common/time.hpp"
#include "tools/cairn-module/commands.hpp"

namespace cairn::module_tool {
namespace {

constexpr std::size_t kMaxInputBytes = 64 * 1024;
// A duration past ten years buys a diskless node little over no expiry; the cap also keeps the
// arithmetic far from any overflow.
constexpr int kMaxExpiryDays = 3660;

// The policy of the operator's file, its keys read and named by id.
Result<module::ModulePolicy> read_input(const std::filesystem::path& file) {
  auto text = read_file(file, kMaxInputBytes);
  if (!text) return fail(text.error());
  auto j = parse_json(*text, file.string());
  if (!j) return fail(j.error());
  if (!j->is_object()) return fail(Errc::data, file.string() + ": not a JSON object {\"version\", \"trust\"}");
  if (j->contains("expires")) {
    return fail(Errc::data, file.string() + ": \"expires\" is set by the signing, not the policy file",
                "remove it from the file and give cairn-module policy sign --expires WHEN (e.g. 30d)");
  }
  module::ModulePolicy p;
  const auto version = j->find("version");
  if (version == j->end() || !version->is_number_unsigned() || version->get<std::uint64_t>() == 0) {
    return fail(Errc::data, file.string() + ": \"version\" must be a whole number >= 1", "raise it with every change of the policy");
  }
  p.version = version->get<std::uint64_t>();
  const auto trust = j->find("trust");
  if (trust == j->end() || !trust->is_object()) {
    return fail(Errc::data, file.string() + ": \"trust\" must be an object of module name or glob -> [key files]");
  }
  for (const auto& [pattern, keys] : trust->items()) {
    if (auto ok = module::validate_policy_pattern(pattern); !ok) return fail(ok.error().with_context(file.string()));
    if (!keys.is_array()) return fail(Errc::data, file.string() + ": \"" + pattern + "\" is not a list of key files");
    module::PolicyRule rule{pattern, {}};
    for (const auto& k : keys) {
      if (!k.is_string()) return fail(Errc::data, file.string() + ": \"" + pattern + "\": a key is not a string");
      const auto value = k.get<std::string>();
      Result<EvpPkey> key = value.starts_with("-----BEGIN") ? parse_public_key_pem(value)
                            : module::load_public_key(std::filesystem::path(value).is_absolute()
                                                          ? std::filesystem::path(value)
                                                          : file.parent_path() / value);
      if (!key) return fail(key.error().with_context(file.string() + " \"" + pattern + "\""));
      auto id = module::key_id(key->get());
      if (!id) return fail(id.error().with_context(value));
      auto pem = public_key_pem(key->get());
      if (!pem) return fail(pem.error());
      p.key_pems.emplace(*id, *pem);
      rule.key_ids.push_back(*id);
    }
    p.rules.push_back(std::move(rule));
  }
  return p;
}

// WHEN of --expires: a duration from `now` ("30d", "12h") or an RFC 3339 UTC time; never at or
// before now (nodes and control would refuse the policy at once).
Result<std::chrono::sys_seconds> expiry_from(const std::string& when, std::chrono::system_clock::time_point now) {
  using namespace std::chrono;
  const auto from = floor<seconds>(now);
  sys_seconds at;
  const bool duration = when.size() >= 2 && (when.back() == 'd' || when.back() == 'h') &&
                        std::all_of(when.begin(), when.end() - 1, [](char c) { return c >= '0' && c <= '9'; });
  if (duration) {
    const auto digits = when.substr(0, when.size() - 1);
    const long n = digits.size() > 6 ? -1 : std::stol(digits);
    const long max = when.back() == 'd' ? kMaxExpiryDays : 24L * kMaxExpiryDays;
    if (n < 1 || n > max) {
      return fail(Errc::usage, "--expires " + when.substr(0, 40) + ": not between 1" + when.back() + " and " + std::to_string(max) + when.back(),
                  "e.g. --expires 30d, and re-sign well before it passes");
    }
    at = from + hours(when.back() == 'd' ? 24 * n : n);
  } else {
    auto t = module::parse_policy_expiry(when);
    if (!t) {
      return fail(Errc::usage, "--expires: neither a duration (30d, 12h) nor a time: " + t.error().message,
                  "e.g. --expires 30d or --expires 2027-01-31T00:00:00Z");
    }
    at = *t;
  }
  if (at <= from) {
    return fail(Errc::usage, "--expires " + when + ": " + module::format_policy_expiry(at) + " is not after now (" + format_rfc3339(now) + ")",
                "give a later time, or a duration such as 30d");
  }
  return at;
}

std::string default_out(const std::string& input) {
  constexpr std::string_view kSuffix = ".json";
  const std::string stem = input.ends_with(kSuffix) ? input.substr(0, input.size() - kSuffix.size()) : input;
  return stem + ".signed.json";
}

}  // namespace

void add_policy(CLI::App& app, int& exit_code) {
  auto* policy = app.add_subcommand("policy", "module trust policies for control to distribute");
  policy->require_subcommand(1);

  struct SignOptions {
    std::string input;
    std::string key;
    std::string out;
    std::string expires;
    std::uint64_t version = 0;
    bool json = false;
  };
  auto o = std::make_shared<SignOptions>();
  auto* sign = policy->add_subcommand("sign", "sign POLICY.json with a policy key (the agents pin its public half)");
  sign->add_option("POLICY", o->input, "{\"version\": N, \"trust\": {\"NAME or GLOB\": [\"key.pub\", ...]}}")->required();
  sign->add_option("--key", o->key, "the policy key's private key (cairn-module keygen)")->required();
  sign->add_option("--out", o->out, "signed document to write (default POLICY.signed.json)");
  sign->add_option("--expires", o->expires,
                   "WHEN the policy stops being valid: a duration from now (30d, 12h) or a UTC time (2027-01-31T00:00:00Z). "
                   "A diskless node forgets at every boot which policy version it accepted, so without an expiry "
                   "anyone who controls the control service could hand it an old policy that still trusts a revoked "
                   "key; with one, no older than the expiry window. Re-sign on a schedule (a higher --version each time)");
  auto* version_option = sign->add_option("--version", o->version, "the policy version, instead of POLICY.json's (each re-signing needs a higher one)");
  sign->add_flag("--json", o->json, "one JSON object");
  sign->callback([o, version_option, &exit_code] {
    run("policy sign", o->json, exit_code, [&]() -> Result<Outcome> {
      auto p = read_input(o->input);
      if (!p) return fail(p.error());
      if (version_option->count() > 0) {
        if (o->version == 0) return fail(Errc::usage, "--version 0: a policy version is a whole number >= 1");
        p->version = o->version;
      }
      if (!o->expires.empty()) {
        auto expires = expiry_from(o->expires, SystemClock::instance().now());
        if (!expires) return fail(expires.error());
        p->expires = *expires;
      }
      auto key = module::load_private_key(o->key);
      if (!key) return fail(key.error());
      auto signed_policy = module::sign_policy(key->get(), module::policy_text(*p));
      if (!signed_policy) return fail(signed_policy.error());
      const std::string out_path = o->out.empty() ? default_out(o->input) : o->out;
      if (auto s = write_file_atomic(out_path, module::serialize_signed_policy(*signed_policy), 0644); !s) return fail(s.error());
      Outcome out;
      out.details = {{"signed_policy", out_path}, {"version", p->version}, {"key_id", signed_policy->signature.key_id},
                     {"rules", p->rules.size()}, {"keys", p->key_pems.size()},
                     {"expires", p->expires ? Json(module::format_policy_expiry(*p->expires)) : Json(nullptr)}};
      out.human = "signed module policy version " + std::to_string(p->version) + " (" + std::to_string(p->rules.size()) +
                  " rules, " + std::to_string(p->key_pems.size()) + " keys) with " + signed_policy->signature.key_id + " -> " +
                  out_path + "\n" +
                  (p->expires ? "expires " + module::format_policy_expiry(*p->expires) + ": sign and set a newer one before then\n"
                              : "no expiry: a diskless node could be handed this policy again after a newer one (see --expires)\n");
      return out;
    });
  });

  struct VerifyOptions {
    std::string file;
    std::vector<std::string> keys;
    bool json = false;
  };
  auto v = std::make_shared<VerifyOptions>();
  auto* verify = policy->add_subcommand("verify", "check a signed policy against policy public keys");
  verify->add_option("FILE", v->file, "the signed policy")->required();
  verify->add_option("--key", v->keys, "a policy public key (repeatable)")->required();
  verify->add_flag("--json", v->json, "one JSON object");
  verify->callback([v, &exit_code] {
    run("policy verify", v->json, exit_code, [&]() -> Result<Outcome> {
      auto text = read_file(v->file, module::kMaxSignedPolicyBytes);
      if (!text) return fail(text.error());
      auto signed_policy = module::parse_signed_policy(*text);
      if (!signed_policy) return fail(signed_policy.error().with_context(v->file));
      std::map<std::string, EvpPkey> pinned;
      for (const auto& path : v->keys) {
        auto key = module::load_public_key(path);
        if (!key) return fail(key.error());
        auto id = module::key_id(key->get());
        if (!id) return fail(id.error().with_context(path));
        pinned.emplace(*id, std::move(*key));
      }
      auto p = module::verify_signed_policy(*signed_policy, pinned);
      if (!p) return fail(p.error().with_context(v->file));
      const auto now = SystemClock::instance().now();
      if (module::policy_expired(*p, now)) {  // h-polexpiry: what a node would say of it
        return fail(Errc::refused,
                    v->file + ": module policy version " + std::to_string(p->version) + " verifies but expired at " +
                        module::format_policy_expiry(*p->expires) + "; nodes refuse it",
                    "sign it again with a later --expires and a higher --version");
      }
      Outcome out;
      Json rules = Json::object();
      for (const auto& r : p->rules) rules[r.pattern] = r.key_ids;
      const std::string expires = p->expires ? module::format_policy_expiry(*p->expires) : "";
      out.details = {{"version", p->version}, {"key_id", signed_policy->signature.key_id}, {"trust", rules},
                     {"expires", p->expires ? Json(expires) : Json(nullptr)}};
      out.human = "module policy version " + std::to_string(p->version) + " verifies (signed by " + signed_policy->signature.key_id +
                  "; " + (p->expires ? "expires " + expires : std::string("never expires")) + ")\n";
      for (const auto& r : p->rules) {
        out.human += "  " + r.pattern + ":";
        for (const auto& k : r.key_ids) out.human += " " + k;
        out.human += "\n";
      }
      return out;
    });
  });
}

}  // namespace cairn::module_tool
