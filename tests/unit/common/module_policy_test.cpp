// Signed module trust policies (h-modpolicy): the document round-trips, its signature is
// checked against pinned policy keys only, every altered byte is refused, globs match names
// as fnmatch does, and malformed policies are refused naming the fault.
#include <doctest/doctest.h>

#include <chrono>

#include "common/crypto.hpp"
#include "common/module/policy.hpp"
#include "common/protocol/messages.hpp"

using namespace cairn;

namespace {

std::string pem_of(const EVP_PKEY* k) { return public_key_pem(k).value(); }
std::string id_of(const EVP_PKEY* k) { return module::key_id(k).value(); }

std::map<std::string, EvpPkey> pinned(const EVP_PKEY* k) {
  std::map<std::string, EvpPkey> out;
  out.emplace(id_of(k), parse_public_key_pem(pem_of(k)).value());
  return out;
}

module::ModulePolicy policy_with(std::uint64_t version, const EVP_PKEY* module_key, std::string pattern = "web-*") {
  module::ModulePolicy p;
  p.version = version;
  p.key_pems[id_of(module_key)] = pem_of(module_key);
  p.rules.push_back({std::move(pattern), {id_of(module_key)}});
  return p;
}

}  // namespace

TEST_CASE("a policy signed by a pinned policy key verifies and reads back as written") {
  for (const auto type : {KeyType::ed25519, KeyType::p256}) {
    auto policy_key = generate_key(type).value();
    auto module_key = generate_key(KeyType::ed25519).value();
    auto signed_policy = module::sign_policy(policy_key.get(), module::policy_text(policy_with(3, module_key.get())));
    REQUIRE_MESSAGE(signed_policy, (signed_policy ? "" : signed_policy.error().message));
    auto reread = module::parse_signed_policy(module::serialize_signed_policy(*signed_policy));
    REQUIRE(reread);
    auto p = module::verify_signed_policy(*reread, pinned(policy_key.get()));
    REQUIRE_MESSAGE(p, (p ? "" : p.error().message));
    CHECK(p->version == 3);
    REQUIRE(p->rules.size() == 1);
    CHECK(p->rules[0].pattern == "web-*");
    CHECK(p->rules[0].key_ids == std::vector<std::string>{id_of(module_key.get())});
    CHECK(p->key_pems.at(id_of(module_key.get())) == pem_of(module_key.get()));
  }
}

TEST_CASE("a policy signed by a key that is not pinned, or altered after signing, is refused") {
  auto policy_key = generate_key(KeyType::ed25519).value();
  auto other = generate_key(KeyType::ed25519).value();
  auto module_key = generate_key(KeyType::ed25519).value();
  auto signed_policy = module::sign_policy(policy_key.get(), module::policy_text(policy_with(1, module_key.get()))).value();

  auto unknown = module::verify_signed_policy(signed_policy, pinned(other.get()));
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().code == Errc::refused);
  CHECK(unknown.error().message.find("not a pinned policy key") != std::string::npos);
  CHECK(module::verify_signed_policy(signed_policy, {}).error().code == Errc::refused);

  // The same key id claimed by a signature that another key made.
  auto forged = module::sign_policy(other.get(), signed_policy.policy_text).value();
  forged.signature.key_id = signed_policy.signature.key_id;
  auto bad_sig = module::verify_signed_policy(forged, pinned(policy_key.get()));
  REQUIRE_FALSE(bad_sig);
  CHECK(bad_sig.error().message.find("does not verify") != std::string::npos);

  // Widening by editing the signed text: one more rule, the version raised, one flipped bit.
  for (const auto& edit : {std::pair<std::string, std::string>{"\"web-*\"", "\"*\""}, {"\"version\":1", "\"version\":9"}}) {
    auto altered = signed_policy;
    const auto at = altered.policy_text.find(edit.first);
    REQUIRE(at != std::string::npos);
    altered.policy_text.replace(at, edit.first.size(), edit.second);
    CHECK(module::verify_signed_policy(altered, pinned(policy_key.get())).error().code == Errc::refused);
  }
  auto flipped = signed_policy;
  flipped.signature.signature_hex[10] = flipped.signature.signature_hex[10] == '0' ? '1' : '0';
  CHECK(module::verify_signed_policy(flipped, pinned(policy_key.get())).error().code == Errc::refused);
}

TEST_CASE("policy patterns match module names as fnmatch globs") {
  CHECK(module::policy_pattern_matches("web", "web"));
  CHECK_FALSE(module::policy_pattern_matches("web", "web-api"));
  CHECK(module::policy_pattern_matches("web-*", "web-api"));
  CHECK_FALSE(module::policy_pattern_matches("web-*", "web"));
  CHECK(module::policy_pattern_matches("*", "anything"));
  CHECK(module::policy_pattern_matches("db-[0-9]", "db-7"));
  CHECK_FALSE(module::policy_pattern_matches("db-[0-9]", "db-x"));
  CHECK(module::policy_pattern_matches("db-[!0-9]", "db-x"));
  CHECK(module::policy_pattern_matches("v?", "v2"));
  CHECK(module::validate_policy_pattern("web-*"));
  for (const auto* bad : {"", "Web", "a/b", "a\\*", "x y", "../x"}) {
    CAPTURE(bad);
    CHECK_FALSE(module::validate_policy_pattern(bad));
  }
}

TEST_CASE("malformed policies are refused, naming the fault") {
  auto k = generate_key(KeyType::ed25519).value();
  auto other = generate_key(KeyType::ed25519).value();
  const std::string id = id_of(k.get());
  const std::string pem = pem_of(k.get());
  const auto text = [&](Json j) { return dump_json(j); };
  const Json good = {{"format", "cairn.module.policy.v1"}, {"version", 2}, {"keys", {{id, pem}}}, {"trust", {{"web", {id}}}}};
  REQUIRE(module::parse_policy(text(good)));
  struct Case {
    const char* what;
    Json j;
    const char* message;
  };
  std::vector<Case> cases;
  auto with = [&](const char* key, Json v) {
    Json j = good;
    j[key] = std::move(v);
    return j;
  };
  cases.push_back({"version 0", with("version", 0), "version must be a whole number >= 1"});
  cases.push_back({"negative version", with("version", -1), "version must be a whole number >= 1"});
  cases.push_back({"other format", with("format", "x"), "format is not"});
  cases.push_back({"unknown key", with("extra", 1), "unknown key 'extra'"});
  cases.push_back({"id of another key", with("keys", {{id_of(other.get()), pem}}), "the PEM is key"});
  cases.push_back({"not a key", with("keys", {{id, "not a pem"}}), "module policy key"});
  cases.push_back({"rule naming a missing key", with("trust", {{"web", {id_of(other.get())}}}), "is not under \"keys\""});
  cases.push_back({"bad pattern", with("trust", {{"Web/x", {id}}}), "is not allowed"});
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto r = module::parse_policy(text(c.j));
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::data);
    CHECK(r.error().message.find(c.message) != std::string::npos);
  }
  CHECK_FALSE(module::parse_policy(std::string(module::kMaxPolicyBytes + 1, ' ')));
  // Signing refuses what would not parse.
  CHECK_FALSE(module::sign_policy(k.get(), text(with("version", 0))));
  // The signed document's structure.
  CHECK_FALSE(module::parse_signed_policy("{}"));
  CHECK_FALSE(module::parse_signed_policy(R"({"format":"cairn.module.policy.signed.v1","policy":"{}","signature":{"algorithm":"rsa","key_id":"x","signature":"00"}})"));
}

// h-polexpiry
TEST_CASE("a policy's expiry is read in one strict UTC form, signed with the policy, and due at its second") {
  using namespace std::chrono;
  auto good = module::parse_policy_expiry("2027-01-31T00:00:00Z");
  REQUIRE_MESSAGE(good, (good ? "" : good.error().message));
  CHECK(*good == sys_days(2027y / January / 31));
  CHECK(module::format_policy_expiry(*good) == "2027-01-31T00:00:00Z");
  for (const auto* text : {"2028-02-29T23:59:59Z", "1970-01-01T00:00:00Z", "2199-12-31T23:59:59Z"}) {
    CAPTURE(text);
    auto t = module::parse_policy_expiry(text);
    REQUIRE_MESSAGE(t, (t ? "" : t.error().message));
    CHECK(module::format_policy_expiry(*t) == text);
  }

  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"2027-01-31T00:00:00+02:00", "not UTC"},
      {"2027-01-31T00:00:00-00:00", "not UTC"},
      {"2027-01-31T00:00:00.5Z", "not UTC"},
      {"2027-01-31T00:00:00", "not UTC"},
      {"2027-01-31T00:00:00z", "not UTC"},
      {"2027-01-31t00:00:00Z", "not of the form"},
      {"2027-01-31 00:00:00Z", "not of the form"},
      {"2027-1-31T00:00:00Z", "not of the form"},
      {"2027-01-31", "not of the form"},
      {"+027-01-31T00:00:00Z", "not of the form"},
      {"", "not of the form"},
      {"2027-02-29T00:00:00Z", "no such date"},
      {"2027-13-01T00:00:00Z", "no such date"},
      {"2027-00-10T00:00:00Z", "no such date"},
      {"2027-04-31T00:00:00Z", "no such date"},
      {"2027-01-31T24:00:00Z", "or time of day"},
      {"2027-01-31T23:60:00Z", "or time of day"},
      {"2027-12-31T23:59:60Z", "or time of day"},
      {"2300-01-01T00:00:00Z", "outside 1970-2199"},
      {"1969-12-31T23:59:59Z", "outside 1970-2199"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    auto r = module::parse_policy_expiry(c.text);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::data);
    CHECK(r.error().message.find(c.message) != std::string::npos);
    CHECK(r.error().hint.find("YYYY-MM-DDTHH:MM:SSZ") != std::string::npos);
  }
  // A long value is named, but not echoed whole.
  auto long_value = module::parse_policy_expiry(std::string(10000, '9'));
  REQUIRE_FALSE(long_value);
  CHECK(long_value.error().message.size() < 200);

  // In the policy: inside the signed text, so altering it breaks the signature.
  auto policy_key = generate_key(KeyType::ed25519).value();
  auto module_key = generate_key(KeyType::ed25519).value();
  auto p = policy_with(4, module_key.get());
  p.expires = *good;
  const auto text = module::policy_text(p);
  CHECK(text.find(R"("expires":"2027-01-31T00:00:00Z")") != std::string::npos);
  CHECK(module::policy_text(policy_with(4, module_key.get())).find("expires") == std::string::npos);  // unset: as before
  auto signed_policy = module::sign_policy(policy_key.get(), text).value();
  auto back = module::verify_signed_policy(signed_policy, pinned(policy_key.get()));
  REQUIRE_MESSAGE(back, (back ? "" : back.error().message));
  REQUIRE(back->expires);
  CHECK(*back->expires == *good);
  auto later = signed_policy;
  later.policy_text.replace(later.policy_text.find("2027-01-31"), 10, "2099-01-31");
  CHECK(module::verify_signed_policy(later, pinned(policy_key.get())).error().code == Errc::refused);

  // Due at its second: valid until just before, expired at it and after; never without one.
  const system_clock::time_point at(*good);
  CHECK_FALSE(module::policy_expired(*back, at - milliseconds(1)));
  CHECK(module::policy_expired(*back, at));
  CHECK(module::policy_expired(*back, at + hours(1)));
  CHECK_FALSE(module::policy_expired(policy_with(4, module_key.get()), at + hours(24 * 365 * 100)));

  // A malformed expiry in the policy text is refused by parse_policy and by sign_policy.
  const std::string id = id_of(module_key.get());
  const Json base = {{"format", "cairn.module.policy.v1"}, {"version", 2}, {"keys", {{id, pem_of(module_key.get())}}}, {"trust", {{"web", {id}}}}};
  for (const auto& [value, message] : std::vector<std::pair<Json, std::string>>{
           {Json(20270131), "\"expires\" is not a string"},
           {Json("2027-01-31T00:00:00+01:00"), "module policy: expiry '2027-01-31T00:00:00+01:00': not UTC"},
           {Json("2027-02-30T00:00:00Z"), "no such date"}}) {
    CAPTURE(message);
    Json j = base;
    j["expires"] = value;
    auto r = module::parse_policy(dump_json(j));
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::data);
    CHECK(r.error().message.find(message) != std::string::npos);
    CHECK_FALSE(module::sign_policy(policy_key.get(), dump_json(j)));
  }
}

TEST_CASE("the heartbeat reply carries the required flag and the signed policy, both optional on the wire") {
  auto policy_key = generate_key(KeyType::ed25519).value();
  auto module_key = generate_key(KeyType::ed25519).value();
  protocol::HeartbeatResponse reply;
  reply.desired_modules = {{"web", "sha256:" + std::string(64, 'a'), false, true}, {"db", "sha256:" + std::string(64, 'b'), false, false}};
  const auto signed_policy = module::sign_policy(policy_key.get(), module::policy_text(policy_with(5, module_key.get()))).value();
  reply.module_policy = module::signed_policy_json(signed_policy);
  const auto text = dump_json(protocol::to_json(reply));
  CHECK(text.find("\"required\":false") == std::string::npos);  // absent means false: old agents read the same set
  auto back = protocol::decode_heartbeat_response(text);
  REQUIRE(back);
  REQUIRE(back->desired_modules.size() == 2);
  CHECK(back->desired_modules[0].required);
  CHECK_FALSE(back->desired_modules[1].required);
  auto carried = module::signed_policy_from_json(back->module_policy);
  REQUIRE(carried);
  CHECK(module::verify_signed_policy(*carried, pinned(policy_key.get()))->version == 5);

  // What an older control service sends: neither field.
  auto old = protocol::decode_heartbeat_response(
      R"({"desired_modules":[{"name":"web","digest":"sha256:00","mounted":false}],"server_time":"x","next_interval_s":30})");
  REQUIRE(old);
  CHECK_FALSE(old->desired_modules.at(0).required);
  CHECK(old->module_policy.is_null());
  CHECK(dump_json(protocol::to_json(*old)).find("module_policy") == std::string::npos);
}
