// The signed module trust policy in the store (h-policystore), on both backends: the version
// rule (never lower; equal only with the same signed text) holds under concurrent puts from
// two connections, the service serves a cached copy that follows the store within its refresh
// period, and a state dir's module-policy.json from before is imported through the same rule.
#include <doctest/doctest.h>

#include <atomic>
#include <string>
#include <thread>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/policy.hpp"
#include "control/service/module_policy.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/skip.hpp"
#include "tests/unit/control/control_fixture.hpp"
#include "tests/unit/control/store_backends.hpp"

using namespace cairn;
using namespace cairn::control;

namespace {

// A record as the service stores it; `rule` makes the signed text differ at one version.
ModulePolicyRecord record(std::int64_t version, const std::string& rule = "web-*", const std::string& signer = "k1") {
  const std::string text = R"({"format":"cairn-module-policy/1","version":)" + std::to_string(version) +
                           R"(,"rule":")" + rule + R"("})";
  return {version, text, R"({"policy":)" + text + R"(,"signed_by":")" + signer + R"("})", 1000 + version};
}

// A signed policy document as `cairn-module policy sign` writes it.
struct PolicySigner {
  EvpPkey policy_key = generate_key(KeyType::ed25519).value();
  EvpPkey module_key = generate_key(KeyType::ed25519).value();

  // `expires`: the signed expiry (h-polexpiry), none when empty.
  [[nodiscard]] module::SignedPolicy sign(std::uint64_t version, const std::string& pattern = "web-*",
                                          const std::string& expires = "") const {
    module::ModulePolicy p;
    p.version = version;
    if (!expires.empty()) p.expires = module::parse_policy_expiry(expires).value();
    const auto id = module::key_id(module_key.get()).value();
    p.key_pems[id] = public_key_pem(module_key.get()).value();
    p.rules.push_back({pattern, {id}});
    return module::sign_policy(policy_key.get(), module::policy_text(p)).value();
  }
  [[nodiscard]] Json document(std::uint64_t version, const std::string& pattern = "web-*", const std::string& expires = "") const {
    return module::signed_policy_json(sign(version, pattern, expires));
  }
};

std::uint64_t served_version(const Json& doc) {
  if (doc.is_null()) return 0;
  auto signed_policy = module::signed_policy_from_json(doc);
  REQUIRE(signed_policy);
  auto policy = module::parse_policy(signed_policy->policy_text);
  REQUIRE(policy);
  return policy->version;
}

}  // namespace

TEST_CASE_TEMPLATE("the store keeps the module policy: never a lower version, the same one only unchanged", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto none = store.find_module_policy();
  REQUIRE_MESSAGE(none, (none ? "" : none.error().message));
  CHECK_FALSE(none->has_value());

  auto put = store.put_module_policy(record(2));
  REQUIRE_MESSAGE(put, (put ? "" : put.error().message));
  CHECK(put->stored);
  CHECK(put->stored_version == 2);
  auto found = store.find_module_policy();
  REQUIRE(found);
  REQUIRE(found->has_value());
  CHECK((*found)->version == 2);
  CHECK((*found)->policy_text == record(2).policy_text);
  CHECK((*found)->document == record(2).document);
  CHECK((*found)->set_at_ms == 1002);

  // lower: refused, naming the stored version; nothing changed
  put = store.put_module_policy(record(1));
  REQUIRE(put);
  CHECK_FALSE(put->stored);
  CHECK(put->stored_version == 2);
  // equal with other content: refused
  put = store.put_module_policy(record(2, "db"));
  REQUIRE(put);
  CHECK_FALSE(put->stored);
  CHECK(put->stored_version == 2);
  found = store.find_module_policy();
  REQUIRE(found);
  REQUIRE(found->has_value());
  CHECK((*found)->policy_text == record(2).policy_text);
  CHECK((*found)->document == record(2).document);

  // equal with the same signed text (signed again, by another key): accepted, as signed now
  put = store.put_module_policy(record(2, "web-*", "k2"));
  REQUIRE(put);
  CHECK(put->stored);
  found = store.find_module_policy();
  REQUIRE(found);
  CHECK((*found)->document == record(2, "web-*", "k2").document);

  // higher: accepted
  put = store.put_module_policy(record(7, "db"));
  REQUIRE(put);
  CHECK(put->stored);
  CHECK(put->stored_version == 7);
  found = store.find_module_policy();
  REQUIRE(found);
  CHECK((*found)->version == 7);
  CHECK((*found)->policy_text == record(7, "db").policy_text);
}

TEST_CASE_TEMPLATE("concurrent puts of versions N and N+1 through two connections: N+1 is always the one kept", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto other = B::open_again(opened_store_);
  Store* stores[2] = {&store, other.get()};
  constexpr int kRounds = 150;
  int lower_refused = 0;
  for (int round = 0; round < kRounds; ++round) {
    const std::int64_t n = 2 * round + 1;
    // Which connection puts the higher version alternates; both start at once.
    const int high = round % 2;
    std::atomic<int> ready{0};
    Result<ModulePolicyPut> results[2] = {fail(Errc::internal, "not run"), fail(Errc::internal, "not run")};
    auto put = [&](int which) {
      ++ready;
      while (ready.load() < 2) std::this_thread::yield();
      results[which] = stores[which]->put_module_policy(record(which == high ? n + 1 : n));
    };
    std::thread t0(put, 0);
    std::thread t1(put, 1);
    t0.join();
    t1.join();
    REQUIRE_MESSAGE(results[0], (results[0] ? "" : results[0].error().message));
    REQUIRE_MESSAGE(results[1], (results[1] ? "" : results[1].error().message));
    CHECK_MESSAGE(results[high]->stored, "round " << round << ": version " << n + 1 << " refused");
    if (!results[1 - high]->stored) ++lower_refused;
    for (Store* s : stores) {
      auto found = s->find_module_policy();
      REQUIRE(found);
      REQUIRE(found->has_value());
      CHECK_MESSAGE((*found)->version == n + 1, "round " << round << ": the store kept " << (*found)->version);
      CHECK((*found)->policy_text == record(n + 1).policy_text);
    }
  }
  MESSAGE(std::string(B::kName) << ": the lower version came second and was refused in " << lower_refused << " of " << kRounds
                   << " rounds");
}

TEST_CASE_TEMPLATE("the service refuses a policy that goes back with the message and hint it always gave", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  test::ManualClock clock;
  ModulePolicy policy(store, clock);
  const PolicySigner signer;
  CHECK(policy.current().is_null());
  auto shown = policy.admin_show();
  REQUIRE(shown);
  CHECK((*shown)["policy"].is_null());
  CHECK((*shown)["version"] == 0);

  auto set = policy.set(signer.document(3));
  REQUIRE_MESSAGE(set, (set ? "" : set.error().message));
  CHECK((*set)["version"] == 3);
  CHECK((*set)["policy"] == signer.document(3));
  CHECK(served_version(policy.current()) == 3);

  auto back = policy.set(signer.document(2));
  REQUIRE_FALSE(back);
  CHECK(back.error().code == Errc::refused);
  CHECK(back.error().message == "module policy version 2 does not follow the stored version 3");
  CHECK(back.error().hint == "raise \"version\" above 3 and sign the policy again; nodes refuse older versions anyway");
  auto other = policy.admin_set({{"policy", signer.document(3, "db")}});
  REQUIRE_FALSE(other);
  CHECK(other.error().http_status == 409);
  CHECK(other.error().body.message == "module policy version 3 does not follow the stored version 3");
  // the same document again: accepted
  CHECK(policy.set(signer.document(3)));
  // malformed: 400, nothing stored
  auto bad = policy.admin_set({{"policy", {{"policy", "{}"}}}});
  REQUIRE_FALSE(bad);
  CHECK(bad.error().http_status == 400);
  shown = policy.admin_show();
  REQUIRE(shown);
  CHECK((*shown)["version"] == 3);
}

// h-polexpiry
TEST_CASE_TEMPLATE("the service refuses a policy that has already expired, naming its expiry; show gives the expiry", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  test::ManualClock clock;  // 2030-01-01T00:00:00Z
  ModulePolicy policy(store, clock);
  const PolicySigner signer;
  auto due = policy.set(signer.document(2, "web-*", "2030-01-01T00:00:00Z"));
  REQUIRE_FALSE(due);
  CHECK(due.error().code == Errc::data);
  CHECK(due.error().message ==
        "module policy version 2 expired at 2030-01-01T00:00:00Z (control's clock: 2030-01-01T00:00:00.000Z); nodes refuse it");
  CHECK(due.error().hint.find("--expires 30d") != std::string::npos);
  auto api = policy.admin_set({{"policy", signer.document(2, "web-*", "2029-06-30T00:00:00Z")}});
  REQUIRE_FALSE(api);
  CHECK(api.error().http_status == 400);
  CHECK(api.error().body.message.find("expired at 2029-06-30T00:00:00Z") != std::string::npos);
  CHECK(policy.admin_show().value()["version"] == 0);  // nothing stored
  CHECK(policy.current().is_null());

  auto fresh = policy.set(signer.document(2, "web-*", "2030-01-01T00:00:01Z"));
  REQUIRE_MESSAGE(fresh, (fresh ? "" : fresh.error().message));
  CHECK((*fresh)["expires"] == "2030-01-01T00:00:01Z");
  CHECK(policy.admin_show().value()["expires"] == "2030-01-01T00:00:01Z");
  // Without an expiry: accepted as before, and the answer has no "expires".
  auto forever = policy.set(signer.document(3));
  REQUIRE(forever);
  CHECK_FALSE(forever->contains("expires"));
  CHECK_FALSE(policy.admin_show().value().contains("expires"));
}

TEST_CASE_TEMPLATE("a replica serves a policy set through another from its cache, read again once a second", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto other_store = B::open_again(opened_store_);
  test::ManualClock clock;
  ModulePolicy a(store, clock);
  ModulePolicy b(*other_store, clock);
  const PolicySigner signer;
  CHECK(b.current().is_null());  // b has read the store (nothing) and caches that

  REQUIRE(a.set(signer.document(1)));
  CHECK(served_version(a.current()) == 1);  // the replica that set it serves it at once
  CHECK(b.admin_show().value()["version"] == 1);  // the admin view reads the store
  // Heartbeat replies come from the cache: no store read until the refresh period is over.
  clock.advance(ModulePolicy::kRefreshPeriod - std::chrono::milliseconds(1));
  CHECK(b.current().is_null());
  clock.advance(std::chrono::milliseconds(1));
  CHECK(served_version(b.current()) == 1);
  CHECK(served_version(a.current()) == 1);  // a's period is over too: read again now

  // b's own set refuses to go back even though a's cache is older
  REQUIRE(b.set(signer.document(2)));
  auto back = a.set(signer.document(1, "db"));
  REQUIRE_FALSE(back);
  CHECK(back.error().message == "module policy version 1 does not follow the stored version 2");
  CHECK(served_version(a.current()) == 1);
  clock.advance(ModulePolicy::kRefreshPeriod);
  CHECK(served_version(a.current()) == 2);
}

TEST_CASE_TEMPLATE("a state dir's module-policy.json is imported through the version rule and then left alone", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  test::TempDir dir;
  const auto file = dir.path() / "module-policy.json";
  test::ManualClock clock;
  ModulePolicy policy(store, clock);
  const PolicySigner signer;

  REQUIRE(policy.import_file(file));  // no file: nothing to do
  CHECK(policy.admin_show().value()["version"] == 0);

  REQUIRE(write_file_atomic(file, module::serialize_signed_policy(signer.sign(4))));
  auto imported = policy.import_file(file);
  REQUIRE_MESSAGE(imported, (imported ? "" : imported.error().message));
  CHECK(policy.admin_show().value()["policy"] == signer.document(4));
  CHECK(served_version(policy.current()) == 4);
  CHECK(std::filesystem::exists(file));  // left in place
  REQUIRE(policy.import_file(file));     // again (the next start): nothing changes

  // The store moved on (set through a replica): an older file does not take it back.
  REQUIRE(policy.set(signer.document(5)));
  REQUIRE(policy.import_file(file));
  CHECK(policy.admin_show().value()["version"] == 5);
  // Another replica's state dir holds a newer one: imported.
  REQUIRE(write_file_atomic(file, module::serialize_signed_policy(signer.sign(6))));
  REQUIRE(policy.import_file(file));
  CHECK(policy.admin_show().value()["version"] == 6);

  // The store is what is served: the file changing afterwards changes nothing.
  REQUIRE(write_file_atomic(file, module::serialize_signed_policy(signer.sign(9))));
  clock.advance(ModulePolicy::kRefreshPeriod);
  CHECK(served_version(policy.current()) == 6);

  REQUIRE(write_file_atomic(file, "{not json"));
  auto damaged = policy.import_file(file);
  REQUIRE_FALSE(damaged);
  CHECK(damaged.error().message.find(file.string()) != std::string::npos);
  CHECK(policy.admin_show().value()["version"] == 6);
}

TEST_CASE("the service imports its state dir's module-policy.json at start and serves it in heartbeat replies") {
  test::ControlFixture f;
  const PolicySigner signer;
  const auto file = f.state.dir / "module-policy.json";
  const auto peer = f.enrolled(test::make_node());
  auto beat = f.beat(peer);
  REQUIRE(beat);
  CHECK(beat->module_policy.is_null());

  // A file an older release wrote: imported at the next start.
  REQUIRE(write_file_atomic(file, module::serialize_signed_policy(signer.sign(4))));
  f.reopen();
  auto shown = f.service->admin_show_module_policy();
  REQUIRE(shown);
  CHECK((*shown)["version"] == 4);
  beat = f.beat(peer);
  REQUIRE(beat);
  CHECK(served_version(beat->module_policy) == 4);

  // Set through the API, then an older file at a later start: the store's version stays.
  REQUIRE(f.service->admin_set_module_policy({{"policy", signer.document(5)}}));
  REQUIRE(write_file_atomic(file, module::serialize_signed_policy(signer.sign(3))));
  f.reopen();
  beat = f.beat(peer);
  REQUIRE(beat);
  CHECK(served_version(beat->module_policy) == 5);
  // A damaged file does not stop the service.
  REQUIRE(write_file_atomic(file, "{not json"));
  f.reopen();
  CHECK(f.service->admin_show_module_policy().value()["version"] == 5);
}
