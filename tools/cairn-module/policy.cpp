// `cairn-module policy sign POLICY.json --key KEY [--out FILE]` (h-modpolicy): turns the
// operator's policy into the signed document `cairn-control module policy set` takes
// (common/module/policy.hpp). POLICY.json names keys by file:
//   {"version": 2, "trust": {"web-*": ["keys/web.pub"], "db": ["keys/db.pub", "keys/ops.pub"]}}
// (a relative path is relative to POLICY.json; a PEM string works too). Default FILE:
// POLICY.signed.json beside it. `policy verify FILE --key POLICY_KEY.pub` checks one.
#include <map>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/policy.hpp"
#include "common/module/signature.hpp"
#include "tools/cairn-module/commands.hpp"

namespace cairn::module_tool {
namespace {

constexpr std::size_t kMaxInputBytes = 64 * 1024;

// The policy of the operator's file, its keys read and named by id.
Result<module::ModulePolicy> read_input(const std::filesystem::path& file) {
  auto text = read_file(file, kMaxInputBytes);
  if (!text) return fail(text.error());
  auto j = parse_json(*text, file.string());
  if (!j) return fail(j.error());
  if (!j->is_object()) return fail(Errc::data, file.string() + ": not a JSON object {\"version\", \"trust\"}");
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
    bool json = false;
  };
  auto o = std::make_shared<SignOptions>();
  auto* sign = policy->add_subcommand("sign", "sign POLICY.json with a policy key (the agents pin its public half)");
  sign->add_option("POLICY", o->input, "{\"version\": N, \"trust\": {\"NAME or GLOB\": [\"key.pub\", ...]}}")->required();
  sign->add_option("--key", o->key, "the policy key's private key (cairn-module keygen)")->required();
  sign->add_option("--out", o->out, "signed document to write (default POLICY.signed.json)");
  sign->add_flag("--json", o->json, "one JSON object");
  sign->callback([o, &exit_code] {
    run("policy sign", o->json, exit_code, [&]() -> Result<Outcome> {
      auto p = read_input(o->input);
      if (!p) return fail(p.error());
      auto key = module::load_private_key(o->key);
      if (!key) return fail(key.error());
      auto signed_policy = module::sign_policy(key->get(), module::policy_text(*p));
      if (!signed_policy) return fail(signed_policy.error());
      const std::string out_path = o->out.empty() ? default_out(o->input) : o->out;
      if (auto s = write_file_atomic(out_path, module::serialize_signed_policy(*signed_policy), 0644); !s) return fail(s.error());
      Outcome out;
      out.details = {{"signed_policy", out_path}, {"version", p->version}, {"key_id", signed_policy->signature.key_id},
                     {"rules", p->rules.size()}, {"keys", p->key_pems.size()}};
      out.human = "signed module policy version " + std::to_string(p->version) + " (" + std::to_string(p->rules.size()) +
                  " rules, " + std::to_string(p->key_pems.size()) + " keys) with " + signed_policy->signature.key_id + " -> " +
                  out_path + "\n";
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
      Outcome out;
      Json rules = Json::object();
      for (const auto& r : p->rules) rules[r.pattern] = r.key_ids;
      out.details = {{"version", p->version}, {"key_id", signed_policy->signature.key_id}, {"trust", rules}};
      out.human = "module policy version " + std::to_string(p->version) + " verifies (signed by " + signed_policy->signature.key_id + ")\n";
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
