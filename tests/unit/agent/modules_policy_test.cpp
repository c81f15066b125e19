// The trust policy control distributes (h-modpolicy), as the agent takes it: accepted only when
// signed by a pinned policy key and not older than the one accepted before (kept atomically
// under the persist root); ignored without pinned keys; the effective trust is the union of
// the agent's own configuration and the accepted policy. A policy holds until its signed
// expiry (h-polexpiry): refused once expired, and no longer widening trust after it.
#include <doctest/doctest.h>

#include <chrono>

#include "agent/modules/attachments.hpp"
#include "agent/modules/policy.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/fsverity.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent;

namespace {

std::string id_of(const EVP_PKEY* k) { return module::key_id(k).value(); }

constexpr const char* kNow = "2026-11-30T12:00:00.000Z";  // the node's clock, unless a test moves it

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

struct Node {
  test::TempDir tmp;
  AgentConfig config;
  EvpPkey policy_key = std::move(generate_key(KeyType::ed25519).value());
  EvpPkey local_key = std::move(generate_key(KeyType::ed25519).value());

  explicit Node(bool pin = true) {
    config.root = Root(tmp.path());
    config.persist_dir = tmp.path() / "persist";
    config.module_config_file = tmp.path() / "etc/cairn/agent.json";
    REQUIRE(write_file_atomic(tmp.path() / "etc/cairn/policy.pub", public_key_pem(policy_key.get()).value()));
    REQUIRE(write_file_atomic(tmp.path() / "etc/cairn/local.pub", public_key_pem(local_key.get()).value()));
    if (pin) config.module_policy_keys = Json::array({"policy.pub"});
    config.module_trust = {{"web", {"local.pub"}}};
  }

  // A policy granting `module_key` for `pattern`, signed with `signer` (default: the pinned key).
  // `expires`: the policy's signed expiry, none when empty.
  Json policy(std::uint64_t version, const EVP_PKEY* module_key, const std::string& pattern, const EVP_PKEY* signer = nullptr,
              const std::string& expires = "") const {
    module::ModulePolicy p;
    p.version = version;
    if (!expires.empty()) p.expires = module::parse_policy_expiry(expires).value();
    if (module_key != nullptr) {
      p.key_pems[id_of(module_key)] = public_key_pem(module_key).value();
      p.rules.push_back({pattern, {id_of(module_key)}});
    }
    auto s = module::sign_policy(signer ? signer : policy_key.get(), module::policy_text(p));
    REQUIRE(s);
    return module::signed_policy_json(*s);
  }

  modules::PolicyReceipt receive(const Json& signed_policy, const std::string& now = kNow) const {
    auto r = modules::receive_policy(config, signed_policy, now);
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message));
    return *r;
  }

  [[nodiscard]] std::string pending_events() const {
    return read_file_if_exists(config.state_dir() / "modules/events.pending", 1 << 20).value().value_or("");
  }

  modules::TrustPolicy trust(const std::string& now = kNow) const {
    auto env = modules::modules_env(config, now);
    REQUIRE_MESSAGE(env, (env ? "" : env.error().message));
    return std::move(env->policy);
  }
};

// A module NAME signed with `key`, checked against `trust` as the agent does before attaching.
Status verify_signed_by(const test::TempDir& tmp, const std::string& name, const EVP_PKEY* key, const modules::TrustPolicy& trust) {
  const auto image = tmp.path() / (name + ".img");
  REQUIRE(write_file_atomic(image, std::string(5000, 'x')));
  auto d = module::digest_file(image).value();
  module::Manifest m{name, "1.0", 10, d.size, d.sha256, d.fsverity, {}};
  const auto sig = module::serialize_signature(module::sign_manifest(key, m).value());
  auto r = modules::verify_module({.manifest_text = module::canonical_bytes(m), .signatures = {sig}, .image = image}, trust);
  if (!r) return fail(r.error());
  return {};
}

}  // namespace

TEST_CASE("without pinned policy keys a distributed policy is ignored: control alone never adds a key") {
  Node node(false);
  auto module_key = generate_key(KeyType::ed25519).value();
  const auto r = node.receive(node.policy(1, module_key.get(), "*"));
  CHECK(r.kind == modules::PolicyReceipt::Kind::ignored);
  CHECK_FALSE(std::filesystem::exists(node.config.state_dir() / "modules/policy.json"));
  const auto trust = node.trust();
  CHECK(trust.distributed.empty());
  auto refused = verify_signed_by(node.tmp, "web", module_key.get(), trust);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message.find("which the trust policy does not allow") != std::string::npos);
  CHECK(node.receive(nullptr).kind == modules::PolicyReceipt::Kind::none);
}

TEST_CASE("a policy signed by a pinned key is accepted, stored, and widens trust for the names it matches") {
  Node node;
  auto module_key = generate_key(KeyType::p256).value();
  const auto r = node.receive(node.policy(1, module_key.get(), "web-*"));
  CHECK(r.kind == modules::PolicyReceipt::Kind::accepted);
  CHECK(r.version == 1);
  CHECK(node.pending_events().find("module.policy_accepted") != std::string::npos);
  auto accepted = modules::load_accepted_policy(node.config, kNow);
  REQUIRE(accepted);
  REQUIRE(*accepted);
  CHECK((*accepted)->version == 1);
  // Again with the next heartbeat: nothing changes.
  CHECK(node.receive(node.policy(1, module_key.get(), "web-*")).kind != modules::PolicyReceipt::Kind::accepted);

  const auto trust = node.trust();
  CHECK(trust.distributed_version == 1);
  CHECK(verify_signed_by(node.tmp, "web-api", module_key.get(), trust));    // the glob matches
  CHECK_FALSE(verify_signed_by(node.tmp, "db", module_key.get(), trust));   // it does not
  CHECK_FALSE(verify_signed_by(node.tmp, "web", module_key.get(), trust));  // "web-*" is not "web"
  CHECK(verify_signed_by(node.tmp, "web", node.local_key.get(), trust));    // the configuration's own trust holds
}

TEST_CASE("a policy with a bad signature or by a key that is not pinned is refused with an event") {
  Node node;
  auto module_key = generate_key(KeyType::ed25519).value();
  auto rogue = generate_key(KeyType::ed25519).value();
  const auto unknown = node.receive(node.policy(1, module_key.get(), "*", rogue.get()));
  CHECK(unknown.kind == modules::PolicyReceipt::Kind::refused);
  CHECK(unknown.message.find("not a pinned policy key") != std::string::npos);

  auto altered = node.policy(1, module_key.get(), "web");
  auto text = altered["policy"].get<std::string>();
  text.replace(text.find("\"web\""), 5, "\"*\"");  // widened after signing
  altered["policy"] = text;
  const auto bad = node.receive(altered);
  CHECK(bad.kind == modules::PolicyReceipt::Kind::refused);
  CHECK(bad.message.find("does not verify") != std::string::npos);

  Json garbage = {{"format", "x"}};
  CHECK(node.receive(garbage).kind == modules::PolicyReceipt::Kind::refused);

  CHECK_FALSE(std::filesystem::exists(node.config.state_dir() / "modules/policy.json"));
  const auto events = node.pending_events();
  CHECK(events.find("module.policy_refused") != std::string::npos);
  CHECK(events.find("not a pinned policy key") != std::string::npos);
  CHECK(node.trust().distributed.empty());
  CHECK_FALSE(verify_signed_by(node.tmp, "web", module_key.get(), node.trust()));
}

TEST_CASE("an older policy version is refused as a rollback; the same version with other content too") {
  Node node;
  auto k1 = generate_key(KeyType::ed25519).value();
  auto k2 = generate_key(KeyType::ed25519).value();
  REQUIRE(node.receive(node.policy(2, k1.get(), "web")).kind == modules::PolicyReceipt::Kind::accepted);
  const auto old = node.receive(node.policy(1, k2.get(), "web"));
  CHECK(old.kind == modules::PolicyReceipt::Kind::rollback);
  CHECK(old.message.find("rollback refused") != std::string::npos);
  CHECK(node.pending_events().find("module.policy_rollback") != std::string::npos);
  const auto same = node.receive(node.policy(2, k2.get(), "web"));
  CHECK(same.kind == modules::PolicyReceipt::Kind::refused);
  CHECK(same.message.find("needs a higher version") != std::string::npos);
  auto accepted = modules::load_accepted_policy(node.config, kNow).value();
  REQUIRE(accepted);
  CHECK(accepted->version == 2);
  CHECK(accepted->policy.rules.at(0).key_ids == std::vector<std::string>{id_of(k1.get())});
  // The accepted version is kept under the persist root (a restarted agent reads it back).
  CHECK(read_file(node.config.state_dir() / "modules/policy.json", 1 << 20).value().find("\"accepted_version\": 2") != std::string::npos);
}

TEST_CASE("a damaged policy state file is kept aside and reported; the next verified policy starts it again") {
  Node node;
  auto k1 = generate_key(KeyType::ed25519).value();
  REQUIRE(node.receive(node.policy(2, k1.get(), "web")).kind == modules::PolicyReceipt::Kind::accepted);
  const auto state = node.config.state_dir() / "modules/policy.json";
  REQUIRE(write_file_atomic(state, "{\"accepted_version\": 2, \"signed_pol"));  // torn by a disk error
  const auto again = node.receive(node.policy(3, k1.get(), "web"));
  CHECK(again.kind == modules::PolicyReceipt::Kind::accepted);
  CHECK(std::filesystem::exists(state.string() + ".corrupt"));
  CHECK(node.pending_events().find("module.policy_state_corrupt") != std::string::npos);
  auto accepted = modules::load_accepted_policy(node.config, kNow).value();
  REQUIRE(accepted);
  CHECK(accepted->version == 3);
}

TEST_CASE("a newer policy narrows only what a policy granted, never the configuration's own trust") {
  Node node;
  auto granted = generate_key(KeyType::ed25519).value();
  REQUIRE(node.receive(node.policy(1, granted.get(), "*")).kind == modules::PolicyReceipt::Kind::accepted);
  CHECK(verify_signed_by(node.tmp, "web", granted.get(), node.trust()));
  CHECK(verify_signed_by(node.tmp, "db", granted.get(), node.trust()));
  // Version 2 names the key for db only, version 3 names no key at all.
  REQUIRE(node.receive(node.policy(2, granted.get(), "db")).kind == modules::PolicyReceipt::Kind::accepted);
  CHECK_FALSE(verify_signed_by(node.tmp, "web", granted.get(), node.trust()));
  CHECK(verify_signed_by(node.tmp, "db", granted.get(), node.trust()));
  REQUIRE(node.receive(node.policy(3, nullptr, "")).kind == modules::PolicyReceipt::Kind::accepted);
  CHECK_FALSE(verify_signed_by(node.tmp, "db", granted.get(), node.trust()));
  CHECK(verify_signed_by(node.tmp, "web", node.local_key.get(), node.trust()));
  // Unpinning the policy key drops the distributed trust at once (the stored one is verified again).
  node.config.module_policy_keys = nullptr;
  REQUIRE(node.receive(node.policy(4, granted.get(), "*")).kind == modules::PolicyReceipt::Kind::ignored);
  CHECK(node.trust().distributed.empty());
}

// h-polexpiry
TEST_CASE("an expired policy is refused with module.policy_expired naming its version and expiry; a fresh one is accepted") {
  Node node;
  auto module_key = generate_key(KeyType::ed25519).value();
  const auto stale = node.receive(node.policy(3, module_key.get(), "web-*", nullptr, "2026-11-30T12:00:00Z"));  // due now
  CHECK(stale.kind == modules::PolicyReceipt::Kind::expired);
  CHECK(modules::receipt_name(stale.kind) == "expired");
  CHECK(stale.version == 3);
  CHECK(stale.message.find("module trust policy version 3 expired at 2026-11-30T12:00:00Z") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(node.config.state_dir() / "modules/policy.json"));  // nothing accepted
  const auto events = node.pending_events();
  CHECK(count_of(events, "\"module.policy_expired\"") == 1);
  CHECK(events.find("version 3 expired at 2026-11-30T12:00:00Z") != std::string::npos);
  CHECK(events.find("re-sign it with a later --expires") != std::string::npos);
  CHECK(events.find("\"severity\":\"warning\"") != std::string::npos);
  // The same document with every heartbeat: refused each time, reported once.
  CHECK(node.receive(node.policy(3, module_key.get(), "web-*", nullptr, "2026-11-30T12:00:00Z")).kind !=
        modules::PolicyReceipt::Kind::accepted);
  CHECK(node.trust().distributed.empty());
  CHECK_FALSE(verify_signed_by(node.tmp, "web-api", module_key.get(), node.trust()));

  const auto fresh = node.receive(node.policy(3, module_key.get(), "web-*", nullptr, "2026-11-30T12:00:01Z"));
  CHECK(fresh.kind == modules::PolicyReceipt::Kind::accepted);
  CHECK(verify_signed_by(node.tmp, "web-api", module_key.get(), node.trust()));
}

TEST_CASE("an accepted policy that has since expired no longer widens trust, reported once; its version still holds") {
  Node node;
  auto module_key = generate_key(KeyType::ed25519).value();
  const auto doc = node.policy(5, module_key.get(), "*", nullptr, "2026-12-01T00:00:00Z");
  REQUIRE(node.receive(doc).kind == modules::PolicyReceipt::Kind::accepted);
  CHECK(verify_signed_by(node.tmp, "db", module_key.get(), node.trust()));
  CHECK(node.trust("2026-11-30T23:59:59.999Z").distributed_version == 5);

  // Its second: the trust it granted is gone, the configuration's own trust stays.
  constexpr const char* kLater = "2026-12-01T00:00:00.000Z";
  auto accepted = modules::load_accepted_policy(node.config, kLater);
  REQUIRE(accepted);
  CHECK_FALSE(accepted->has_value());
  const auto trust = node.trust(kLater);
  CHECK(trust.distributed.empty());
  CHECK(trust.distributed_version == 0);
  CHECK_FALSE(verify_signed_by(node.tmp, "db", module_key.get(), trust));
  CHECK(verify_signed_by(node.tmp, "web", node.local_key.get(), trust));
  // The same document arriving again, and later uses: the one event this process already raised.
  CHECK(node.receive(doc, kLater).kind == modules::PolicyReceipt::Kind::expired);
  CHECK(node.trust("2027-06-01T00:00:00.000Z").distributed.empty());
  const auto events = node.pending_events();
  CHECK(count_of(events, "\"module.policy_expired\"") == 1);
  CHECK(events.find("version 5 expired at 2026-12-01T00:00:00Z") != std::string::npos);

  // Expiry does not reopen the door to older versions (a node with a disk keeps the version).
  const auto older = node.receive(node.policy(4, module_key.get(), "*", nullptr, "2027-01-01T00:00:00Z"), kLater);
  CHECK(older.kind == modules::PolicyReceipt::Kind::rollback);
  // A newer one, signed again with a later expiry, restores the grant.
  const auto renewed = node.receive(node.policy(6, module_key.get(), "*", nullptr, "2027-01-01T00:00:00Z"), kLater);
  CHECK(renewed.kind == modules::PolicyReceipt::Kind::accepted);
  CHECK(verify_signed_by(node.tmp, "db", module_key.get(), node.trust(kLater)));
}

TEST_CASE("modules.policy_require_expiry refuses a policy without an expiry; one with an expiry is accepted") {
  Node node;
  auto module_key = generate_key(KeyType::ed25519).value();
  // Accepted before the fleet asked for expiries: it stops widening trust once they are asked for.
  REQUIRE(node.receive(node.policy(1, module_key.get(), "web-*")).kind == modules::PolicyReceipt::Kind::accepted);
  CHECK(verify_signed_by(node.tmp, "web-api", module_key.get(), node.trust()));
  node.config.module_policy_require_expiry = true;
  CHECK(node.trust().distributed.empty());
  CHECK_FALSE(verify_signed_by(node.tmp, "web-api", module_key.get(), node.trust()));

  const auto forever = node.receive(node.policy(2, module_key.get(), "web-*"));
  CHECK(forever.kind == modules::PolicyReceipt::Kind::refused);
  CHECK(forever.version == 2);
  CHECK(forever.message.find("version 2 carries no expiry, and modules.policy_require_expiry is set") != std::string::npos);
  const auto events = node.pending_events();
  CHECK(events.find("\"module.policy_refused\"") != std::string::npos);
  CHECK(events.find("re-sign it with --expires") != std::string::npos);

  const auto dated = node.receive(node.policy(2, module_key.get(), "web-*", nullptr, "2026-12-30T12:00:00Z"));
  CHECK(dated.kind == modules::PolicyReceipt::Kind::accepted);
  CHECK(verify_signed_by(node.tmp, "web-api", module_key.get(), node.trust()));
}
