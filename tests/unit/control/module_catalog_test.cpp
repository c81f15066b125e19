// The module catalog and assignments (issue 14) against an in-memory CatalogStore double:
// what `module add` refuses, what `module assign` needs, and the desired set per node.
#include <doctest/doctest.h>

#include <algorithm>

#include "common/crypto.hpp"
#include "common/module/signature.hpp"
#include "control/service/module_catalog.hpp"
#include "tests/support/skip.hpp"
#include "tests/unit/control/control_fixture.hpp"
#include "tests/unit/control/store_backends.hpp"

using namespace cairn;
using namespace cairn::control;

namespace {

class MemoryCatalog final : public CatalogStore {
 public:
  std::vector<ModuleRecord> modules;
  std::vector<AssignmentRecord> assignments;
  Status upsert_module(const ModuleRecord& m) override {
    std::erase_if(modules, [&](const ModuleRecord& x) { return x.name == m.name && x.version == m.version; });
    modules.push_back(m);
    return {};
  }
  Result<std::vector<ModuleRecord>> list_modules() override { return modules; }
  Status insert_assignment(const AssignmentRecord& a) override {
    assignments.push_back(a);
    return {};
  }
  Result<std::vector<AssignmentRecord>> list_assignments() override { return assignments; }
  Result<bool> delete_assignment(std::string_view id) override {
    return std::erase_if(assignments, [&](const AssignmentRecord& a) { return a.id == id; }) > 0;
  }
};

const std::string kDigest = "sha256:" + std::string(64, 'a');
const std::string kNode = "6f1c2a4e-9b1d-4c3e-8f00-0123456789ab";

// The fleet's signing key and what cairn-module pack + sign leave for a module.
const EvpPkey& fleet_key() {
  static const EvpPkey key = std::move(generate_key(KeyType::ed25519).value());
  return key;
}
std::string fleet_pem() { return public_key_pem(fleet_key().get()).value(); }

module::Manifest manifest_of(const std::string& name, const std::string& version, std::vector<std::string> deps = {}) {
  return module::Manifest{name, version, 10, 4096, std::string(64, 'b'), std::string(64, 'c'), std::move(deps)};
}
std::string manifest_text(const module::Manifest& m) { return module::canonical_bytes(m) + "\n"; }
std::string signature_of(const module::Manifest& m, const EVP_PKEY* key) {
  return module::serialize_signature(module::sign_manifest(key, m).value());
}

ModuleAdd module_add(const module::Manifest& m, const EVP_PKEY* signer = nullptr) {
  return {.reference = "127.0.0.1:5000/cairn/" + m.name + "@" + kDigest, .manifest_text = manifest_text(m),
          .signatures = {signature_of(m, signer ? signer : fleet_key().get())}, .trust_key_pems = {fleet_pem()},
          .required = false};
}

ModuleAdd web(std::string version = "1.0") { return module_add(manifest_of("web", version)); }

}  // namespace

TEST_CASE("module add stores a pinned reference, the verified manifest and the trust keys by id") {
  MemoryCatalog store;
  auto add = module_add(manifest_of("web", "1.0", {"base"}));
  add.required = true;
  auto r = add_module(store, add, 1000);
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message));
  REQUIRE(store.modules.size() == 1);
  const auto& m = store.modules[0];
  CHECK(m.name == "web");
  CHECK(m.version == "1.0");
  CHECK(m.priority == 10);
  CHECK(m.required);
  CHECK(m.manifest_digest == "sha256:" + sha256_hex(add.manifest_text));
  auto trust = parse_json(m.trust_json, "trust").value();
  REQUIRE(trust["keys"].size() == 1);
  CHECK(trust["keys"][0]["id"] == module::key_id(fleet_key().get()).value());
  const auto j = to_json(m);
  CHECK(j["image_digest"] == "sha256:" + std::string(64, 'b'));
  CHECK(j["fsverity_digest"] == "sha256:" + std::string(64, 'c'));
  CHECK(j["dependencies"] == Json::array({"base"}));
  CHECK(j["size"] == 4096);
}

TEST_CASE("module add refuses a module no trust key signed, naming why") {
  MemoryCatalog store;
  auto rogue = generate_key(KeyType::p256).value();
  auto foreign = module_add(manifest_of("web", "1.0"), rogue.get());
  auto r = add_module(store, foreign, 0);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::refused);
  CHECK(r.error().message.find("not a trust key") != std::string::npos);
  auto unsigned_add = web();
  unsigned_add.signatures.clear();
  CHECK(add_module(store, unsigned_add, 0).error().message.find("is unsigned") != std::string::npos);
  // A signature over other bytes: the manifest was changed after signing.
  auto altered = web();
  altered.signatures = {signature_of(manifest_of("web", "1.1"), fleet_key().get())};
  auto bad = add_module(store, altered, 0);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == Errc::refused);
  auto garbled = web();
  garbled.manifest_text = "{\"name\": \"web\"";
  CHECK(add_module(store, garbled, 0).error().code == Errc::data);
  CHECK(store.modules.empty());
}

TEST_CASE("module add refuses what a node could not use safely") {
  MemoryCatalog store;
  auto tag_only = web();
  tag_only.reference = "127.0.0.1:5000/cairn/web:1.0";
  CHECK(add_module(store, tag_only, 0).error().message.find("names a tag only") != std::string::npos);
  auto no_keys = web();
  no_keys.trust_key_pems.clear();
  CHECK_FALSE(add_module(store, no_keys, 0));
  auto bad_key = web();
  bad_key.trust_key_pems = {"not a key"};
  CHECK_FALSE(add_module(store, bad_key, 0));
  auto bad_ref = web();
  bad_ref.reference = "not a reference";
  CHECK(add_module(store, bad_ref, 0).error().message.find("reference") != std::string::npos);
  auto no_manifest = web();
  no_manifest.manifest_text.clear();
  CHECK_FALSE(add_module(store, no_manifest, 0));
  CHECK(store.modules.empty());
}

TEST_CASE("module assign needs a catalogued module and exactly one of node or selector") {
  MemoryCatalog store;
  REQUIRE(add_module(store, web(), 0));
  CHECK(assign_module(store, {"web", "1.0", kNode, {}}, "a1", 1));
  CHECK(assign_module(store, {"web", "1.0", std::nullopt, {{"role", "edge"}}}, "a2", 2));
  CHECK_FALSE(assign_module(store, {"web", "9.9", kNode, {}}, "a3", 3));                     // not catalogued
  CHECK_FALSE(assign_module(store, {"web", "1.0", std::nullopt, {}}, "a4", 4));              // neither
  CHECK_FALSE(assign_module(store, {"web", "1.0", kNode, {{"role", "edge"}}}, "a5", 5));     // both
  CHECK_FALSE(assign_module(store, {"web", "1.0", std::string("node-7"), {}}, "a6", 6));     // not a UUID
  CHECK(store.assignments.size() == 2);
  // A dependency must be in the catalog before a module that needs it is assigned.
  REQUIRE(add_module(store, module_add(manifest_of("app", "1.0", {"base"})), 0));
  auto missing = assign_module(store, {"app", "1.0", kNode, {}}, "a7", 7);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message.find("depends on base, which is not in the catalog") != std::string::npos);
  REQUIRE(add_module(store, module_add(manifest_of("base", "1.0")), 0));
  CHECK(assign_module(store, {"app", "1.0", kNode, {}}, "a8", 8));
}

TEST_CASE("the desired set: by node over by selector, the newest among equals, one version per name") {
  MemoryCatalog store;
  REQUIRE(add_module(store, web("1.0"), 0));
  REQUIRE(add_module(store, web("2.0"), 0));
  REQUIRE(add_module(store, web("3.0"), 0));
  REQUIRE(assign_module(store, {"web", "2.0", std::nullopt, {{"role", "edge"}}}, "sel-old", 10));
  REQUIRE(assign_module(store, {"web", "3.0", std::nullopt, {{"role", "edge"}}}, "sel-new", 20));
  const Labels edge{{"role", "edge"}, {"rack", "r1"}};
  auto set = desired_set(store.modules, store.assignments, kNode, edge);
  REQUIRE(set.size() == 1);
  CHECK(set[0].version == "3.0");
  CHECK(set[0].reference == "127.0.0.1:5000/cairn/web@" + kDigest);
  CHECK(set[0].trust["keys"].size() == 1);
  // A node-specific assignment wins even when older.
  REQUIRE(assign_module(store, {"web", "1.0", kNode, {}}, "by-node", 5));
  set = desired_set(store.modules, store.assignments, kNode, edge);
  REQUIRE(set.size() == 1);
  CHECK(set[0].version == "1.0");
  // Other nodes: by selector only, and nothing without the label.
  CHECK(desired_set(store.modules, store.assignments, "other", edge)[0].version == "3.0");
  CHECK(desired_set(store.modules, store.assignments, "other", {{"role", "db"}}).empty());
  // Unassigning removes it from the set.
  REQUIRE(store.delete_assignment("by-node").value());
  CHECK(desired_set(store.modules, store.assignments, kNode, edge)[0].version == "3.0");
  CHECK_FALSE(store.delete_assignment("by-node").value());
}

TEST_CASE("the heartbeat reply's desired set names each module and its pinned OCI manifest digest") {
  MemoryCatalog store;
  REQUIRE(add_module(store, web("1.0"), 0));
  REQUIRE(assign_module(store, {"web", "1.0", kNode, {}}, "a1", 1));
  const CatalogSnapshot snap{store.modules, store.assignments};
  auto refs = snap.desired_refs(kNode, {});
  REQUIRE(refs.size() == 1);
  CHECK(refs[0].name == "web");
  CHECK(refs[0].digest == kDigest);
  CHECK(snap.desired_refs("another-node", {}).empty());
  CHECK(CatalogSnapshot{}.desired_refs(kNode, {}).empty());
}

// ---- the admin API on the real service (SQLite store) and the heartbeat's desired set ----

namespace {

Json add_body(const module::Manifest& m) {
  return {{"reference", "127.0.0.1:5000/cairn/" + m.name + "@" + kDigest}, {"manifest", manifest_text(m)},
          {"signatures", {signature_of(m, fleet_key().get())}}, {"trust_keys", {fleet_pem()}}};
}

std::vector<std::string> desired_names(const control::ApiResult<protocol::HeartbeatResponse>& r) {
  std::vector<std::string> out;
  if (!r) return {"<heartbeat refused: " + r.error().body.message + ">"};
  for (const auto& m : r->desired_modules) out.push_back(m.name + " " + m.digest);
  return out;
}

}  // namespace

TEST_CASE("selectors match the labels stored for the node at enrollment, not the labels its heartbeat claims") {
  test::ControlFixture f;
  const auto edge = test::make_node();
  const auto plain = test::make_node();
  auto enrolled = f.enroll(edge, f.token({{"labels", {{"role", "edge"}}}}));
  REQUIRE_MESSAGE(enrolled, (enrolled ? "" : enrolled.error().body.message));
  const auto edge_peer = test::peer_of(enrolled->certificate_pem);
  const auto plain_peer = f.enrolled(plain);

  auto added = f.service->admin_add_module(add_body(manifest_of("web", "1.0")));
  REQUIRE_MESSAGE(added, (added ? "" : added.error().body.message));
  auto assigned = f.service->admin_assign_module({{"module", "web@1.0"}, {"selector", {{"role", "edge"}}}});
  REQUIRE_MESSAGE(assigned, (assigned ? "" : assigned.error().body.message));

  auto claims_edge = test::sample_heartbeat();
  claims_edge.labels = {{"role", "edge"}};
  CHECK(desired_names(f.beat(plain_peer, claims_edge)).empty());  // claiming the label gets nothing
  auto claims_nothing = test::sample_heartbeat();
  claims_nothing.labels.clear();
  CHECK(desired_names(f.beat(edge_peer, claims_nothing)) == std::vector<std::string>{"web " + kDigest});

  auto listed = f.service->admin_list_modules();
  REQUIRE(listed);
  REQUIRE((*listed)["modules"].size() == 1);
  CHECK((*listed)["modules"][0]["name"] == "web");
  REQUIRE((*listed)["assignments"].size() == 1);
  CHECK((*listed)["assignments"][0]["module"] == "web@1.0");

  // Survives a restart (the SQLite store), then unassigning empties the set.
  f.reopen();
  const auto id = (*assigned)["id"].get<std::string>();
  REQUIRE(f.service->admin_unassign_module(id));
  CHECK(desired_names(f.beat(edge_peer, claims_nothing)).empty());
  auto again = f.service->admin_unassign_module(id);
  REQUIRE_FALSE(again);
  CHECK(again.error().http_status == 404);
}

TEST_CASE("the module admin API refuses bad input with the input named") {
  test::ControlFixture f;
  auto rogue = generate_key(KeyType::ed25519).value();
  auto body = add_body(manifest_of("web", "1.0"));
  body["signatures"] = {signature_of(manifest_of("web", "1.0"), rogue.get())};
  auto untrusted = f.service->admin_add_module(body);
  REQUIRE_FALSE(untrusted);
  CHECK(untrusted.error().http_status == 403);
  CHECK(untrusted.error().body.message.find("web@1.0") != std::string::npos);

  auto tag = add_body(manifest_of("web", "1.0"));
  tag["reference"] = "127.0.0.1:5000/cairn/web:1.0";
  auto tagged = f.service->admin_add_module(tag);
  REQUIRE_FALSE(tagged);
  CHECK(tagged.error().http_status == 400);
  CHECK(tagged.error().body.message.find("names a tag only") != std::string::npos);

  auto wrong_type = add_body(manifest_of("web", "1.0"));
  wrong_type["signatures"] = "not a list";
  CHECK(f.service->admin_add_module(wrong_type).error().body.message.find("\"signatures\"") != std::string::npos);

  auto unknown = f.service->admin_assign_module({{"module", "nope@1.0"}, {"node", kNode}});
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().body.message.find("nope@1.0 is not in the catalog") != std::string::npos);
  auto no_version = f.service->admin_assign_module({{"module", "web"}, {"node", kNode}});
  REQUIRE_FALSE(no_version);
  CHECK(no_version.error().body.message.find("expected NAME@VERSION") != std::string::npos);
  CHECK(f.service->admin_unassign_module("x").error().http_status == 400);
}

TEST_CASE_TEMPLATE("the store keeps a module's verified manifest and required flag", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto catalog = catalog_store(store);
  auto add = module_add(manifest_of("web", "1.0", {"base"}));
  add.required = true;
  REQUIRE(add_module(*catalog, add, 1000));
  auto listed = store.list_modules();
  REQUIRE(listed);
  REQUIRE(listed->size() == 1);
  CHECK((*listed)[0].required);
  const auto j = to_json((*listed)[0]);
  CHECK(j["dependencies"] == Json::array({"base"}));
  CHECK(j["image_digest"] == "sha256:" + std::string(64, 'b'));
  // Added again without the flag: updated in place.
  add.required = false;
  REQUIRE(add_module(*catalog, add, 2000));
  listed = store.list_modules();
  REQUIRE(listed);
  REQUIRE(listed->size() == 1);
  CHECK_FALSE((*listed)[0].required);
}
