// The module catalog and assignments (issue 14) against an in-memory CatalogStore double:
// what `module add` refuses, what `module assign` needs, and the desired set per node.
#include <doctest/doctest.h>

#include <algorithm>

#include "common/crypto.hpp"
#include "common/module/signature.hpp"
#include "control/service/module_catalog.hpp"

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

ModuleAdd web(std::string version = "1.0") {
  auto key = generate_key(KeyType::ed25519).value();
  return {.name = "web", .version = std::move(version), .reference = "127.0.0.1:5000/cairn/web@" + kDigest,
          .manifest_digest = "", .priority = 10, .trust_key_pems = {public_key_pem(key.get()).value()}};
}

}  // namespace

TEST_CASE("module add stores a pinned reference and the trust keys by id") {
  MemoryCatalog store;
  auto add = web();
  auto r = add_module(store, add, 1000);
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message));
  REQUIRE(store.modules.size() == 1);
  auto trust = parse_json(store.modules[0].trust_json, "trust").value();
  REQUIRE(trust["keys"].size() == 1);
  auto key = parse_public_key_pem(add.trust_key_pems[0]).value();
  CHECK(trust["keys"][0]["id"] == module::key_id(key.get()).value());
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
  auto bad_name = web();
  bad_name.name = "Web/../x";
  CHECK_FALSE(add_module(store, bad_name, 0));
  auto absurd = web();
  absurd.priority = 1 << 30;
  CHECK_FALSE(add_module(store, absurd, 0));
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
