// Signed module trust policies (policy.hpp), on top of common/crypto and module signatures.
#include "common/module/policy.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <set>

#include "common/crypto.hpp"
#include "common/module/manifest.hpp"
#include "common/time.hpp"

namespace cairn::module {
namespace {

constexpr std::string_view kPolicyFormat = "cairn.module.policy.v1";
constexpr std::string_view kSignedFormat = "cairn.module.policy.signed.v1";
constexpr std::string_view kSignedPrefix = "cairn-module-policy-v1\n";

std::string signed_message(std::string_view text) { return std::string(kSignedPrefix) + std::string(text); }

Json signature_json(const Signature& s) {
  return {{"algorithm", s.algorithm}, {"key_id", s.key_id}, {"signature", s.signature_hex}};
}

}  // namespace

Result<std::chrono::sys_seconds> parse_policy_expiry(std::string_view text) {
  using namespace std::chrono;
  const std::string shown(text.substr(0, 40));
  const auto bad = [&](const std::string& why) {
    return fail(Errc::data, "expiry '" + shown + "': " + why, "write a UTC time as YYYY-MM-DDTHH:MM:SSZ, e.g. 2027-01-31T00:00:00Z");
  };
  // One form only, so the signed text says one thing to every reader: no offset but Z (a node
  // compares it with its UTC clock), no fraction, upper-case T and Z.
  constexpr std::string_view kForm = "dddd-dd-ddTdd:dd:dd";
  if (text.size() < kForm.size()) return bad("not of the form YYYY-MM-DDTHH:MM:SSZ");
  for (std::size_t i = 0; i < kForm.size(); ++i) {
    const bool ok = kForm[i] == 'd' ? (text[i] >= '0' && text[i] <= '9') : text[i] == kForm[i];
    if (!ok) return bad("not of the form YYYY-MM-DDTHH:MM:SSZ");
  }
  if (text.substr(kForm.size()) != "Z") return bad("not UTC: end it with Z (no offset, no fraction of a second)");
  // The cap keeps every comparison with system_clock (nanoseconds, good until 2262) exact; a
  // policy meant to outlive it should simply carry no expiry.
  if (text.substr(0, 4) < "1970" || text.substr(0, 4) > "2199") return bad("the year is outside 1970-2199");
  auto t = parse_rfc3339(text);
  if (!t) return bad("no such date or time of day");
  return floor<seconds>(*t);
}

std::string format_policy_expiry(std::chrono::sys_seconds t) { return format_rfc3339_seconds(t); }

bool policy_expired(const ModulePolicy& policy, std::chrono::system_clock::time_point now) {
  return policy.expires && std::chrono::time_point_cast<std::chrono::system_clock::duration>(*policy.expires) <= now;
}

Status validate_policy_pattern(std::string_view pattern) {
  if (pattern.empty() || pattern.size() > 64) {
    return fail(Errc::data, "policy pattern '" + std::string(pattern.substr(0, 80)) + "': empty or longer than 64 characters");
  }
  for (const char c : pattern) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' || c == '*' ||
                    c == '?' || c == '[' || c == ']' || c == '!';
    if (!ok) {
      return fail(Errc::data, "policy pattern '" + std::string(pattern) + "': character '" + std::string(1, c) + "' is not allowed",
                  "use module names ([a-z0-9._-]) and the glob characters * ? [ ] !");
    }
  }
  return {};
}

bool policy_pattern_matches(std::string_view pattern, std::string_view name) {
  // Module names hold no '/' and no leading '.', so fnmatch's flags do not matter beyond
  // FNM_NOESCAPE ('\\' is refused by validate_policy_pattern anyway).
  return ::fnmatch(std::string(pattern).c_str(), std::string(name).c_str(), FNM_NOESCAPE) == 0;
}

Result<ModulePolicy> parse_policy(std::string_view text) {
  if (text.size() > kMaxPolicyBytes) return fail(Errc::data, "module policy: larger than " + std::to_string(kMaxPolicyBytes) + " bytes");
  return decode_json<ModulePolicy>(text, "module policy", [](const Json& j) -> Result<ModulePolicy> {
    if (!j.is_object()) return fail(Errc::data, "module policy: not a JSON object");
    for (const auto& [k, v] : j.items()) {
      if (k != "format" && k != "version" && k != "keys" && k != "trust" && k != "expires") {
        return fail(Errc::data, "module policy: unknown key '" + k + "'");
      }
    }
    if (j.at("format").get<std::string>() != kPolicyFormat) {
      return fail(Errc::data, "module policy: format is not " + std::string(kPolicyFormat));
    }
    const auto& version = j.at("version");
    if (!version.is_number_unsigned() || version.get<std::uint64_t>() == 0) {
      return fail(Errc::data, "module policy: version must be a whole number >= 1", "raise it with every change of the policy");
    }
    ModulePolicy p;
    p.version = version.get<std::uint64_t>();
    const auto& keys = j.at("keys");
    if (!keys.is_object() || keys.size() > kMaxPolicyKeys) {
      return fail(Errc::data, "module policy: \"keys\" must be an object of at most " + std::to_string(kMaxPolicyKeys) + " key id -> PEM");
    }
    for (const auto& [id, pem] : keys.items()) {
      auto key = parse_public_key_pem(pem.get<std::string>());
      if (!key) return fail(Errc::data, "module policy key " + id + ": " + key.error().message);
      auto real = key_id(key->get());
      if (!real) return fail(Errc::data, "module policy key " + id + ": " + real.error().message, real.error().hint);
      if (*real != id) return fail(Errc::data, "module policy key " + id + ": the PEM is key " + *real);
      p.key_pems.emplace(id, pem.get<std::string>());
    }
    const auto& trust = j.at("trust");
    if (!trust.is_object() || trust.size() > kMaxPolicyRules) {
      return fail(Errc::data, "module policy: \"trust\" must be an object of at most " + std::to_string(kMaxPolicyRules) + " patterns");
    }
    for (const auto& [pattern, ids] : trust.items()) {
      if (auto ok = validate_policy_pattern(pattern); !ok) return fail(ok.error());
      if (!ids.is_array() || ids.size() > kMaxKeysPerRule) {
        return fail(Errc::data, "module policy \"" + pattern + "\": not a list of at most " + std::to_string(kMaxKeysPerRule) + " key ids");
      }
      PolicyRule rule{pattern, {}};
      for (const auto& id : ids) {
        const auto s = id.get<std::string>();
        if (!p.key_pems.contains(s)) return fail(Errc::data, "module policy \"" + pattern + "\": key " + s + " is not under \"keys\"");
        rule.key_ids.push_back(s);
      }
      p.rules.push_back(std::move(rule));
    }
    if (auto e = j.find("expires"); e != j.end()) {
      if (!e->is_string()) return fail(Errc::data, "module policy: \"expires\" is not a string", "e.g. \"2027-01-31T00:00:00Z\"");
      auto expires = parse_policy_expiry(e->get<std::string>());
      if (!expires) return fail(expires.error().with_context("module policy"));
      p.expires = *expires;
    }
    return p;
  });
}

std::string policy_text(const ModulePolicy& p) {
  Json keys = Json::object();
  for (const auto& [id, pem] : p.key_pems) keys[id] = pem;
  Json trust = Json::object();
  for (const auto& r : p.rules) trust[r.pattern] = r.key_ids;
  Json j = {{"format", kPolicyFormat}, {"version", p.version}, {"keys", keys}, {"trust", trust}};
  // Absent when unset, so a policy without expiry has the text it had before h-polexpiry.
  if (p.expires) j["expires"] = format_policy_expiry(*p.expires);
  return dump_json(j);
}

Result<SignedPolicy> sign_policy(const EVP_PKEY* private_key, std::string text) {
  if (auto parsed = parse_policy(text); !parsed) return fail(parsed.error().with_context("sign"));
  auto alg = signature_algorithm(private_key);
  if (!alg) return fail(alg.error());
  auto id = key_id(private_key);
  if (!id) return fail(id.error());
  auto sig = sign_hex(private_key, signed_message(text));
  if (!sig) return fail(sig.error());
  return SignedPolicy{std::move(text), Signature{*alg, *id, *sig}};
}

Json signed_policy_json(const SignedPolicy& p) {
  return {{"format", kSignedFormat}, {"policy", p.policy_text}, {"signature", signature_json(p.signature)}};
}

std::string serialize_signed_policy(const SignedPolicy& p) { return dump_json(signed_policy_json(p), 2) + "\n"; }

Result<SignedPolicy> signed_policy_from_json(const Json& j) {
  if (!j.is_object()) return fail(Errc::data, "signed module policy: not a JSON object");
  try {
    for (const auto& [k, v] : j.items()) {
      if (k != "format" && k != "policy" && k != "signature") return fail(Errc::data, "signed module policy: unknown key '" + k + "'");
    }
    if (j.at("format").get<std::string>() != kSignedFormat) {
      return fail(Errc::data, "signed module policy: format is not " + std::string(kSignedFormat),
                  "sign the policy with cairn-module policy sign");
    }
    SignedPolicy p;
    p.policy_text = j.at("policy").get<std::string>();
    if (p.policy_text.size() > kMaxPolicyBytes) return fail(Errc::data, "signed module policy: the policy is too large");
    // The signature object has the fields of a module signature file, without its format.
    Json sig = j.at("signature");
    if (!sig.is_object()) return fail(Errc::data, "signed module policy: \"signature\" is not an object");
    sig["format"] = "cairn.module.signature.v1";
    auto parsed = parse_signature(dump_json(sig), "signed module policy signature");
    if (!parsed) return fail(parsed.error());
    p.signature = std::move(*parsed);
    return p;
  } catch (const nlohmann::json::exception& e) {
    return fail(Errc::data, std::string("signed module policy: ") + e.what());
  }
}

Result<SignedPolicy> parse_signed_policy(std::string_view text) {
  if (text.size() > kMaxSignedPolicyBytes) return fail(Errc::data, "signed module policy: larger than the cap");
  auto j = parse_json(text, "signed module policy");
  if (!j) return fail(j.error());
  return signed_policy_from_json(*j);
}

Result<ModulePolicy> verify_signed_policy(const SignedPolicy& p, const std::map<std::string, EvpPkey>& pinned) {
  auto key = pinned.find(p.signature.key_id);
  if (key == pinned.end()) {
    return fail(Errc::refused, "module policy signed by key " + p.signature.key_id + ", which is not a pinned policy key",
                "sign the policy with a key listed under modules.policy_keys in the agent's configuration");
  }
  auto alg = signature_algorithm(key->second.get());
  if (!alg || *alg != p.signature.algorithm) {
    return fail(Errc::refused, "module policy: signature algorithm " + p.signature.algorithm + " does not match policy key " + key->first);
  }
  if (auto ok = verify_signature_hex(key->second.get(), signed_message(p.policy_text), p.signature.signature_hex); !ok) {
    return fail(Errc::refused, "module policy: the signature by " + p.signature.key_id + " does not verify",
                "the policy or its signature was altered; sign it again");
  }
  return parse_policy(p.policy_text);
}

}  // namespace cairn::module
