#include "control/service/module_catalog.hpp"

#include <algorithm>
#include <map>

#include "common/crypto.hpp"
#include "common/log.hpp"
#include "common/module/manifest.hpp"
#include "common/module/signature.hpp"
#include "common/oci/registry.hpp"
#include "common/uuid.hpp"

namespace cairn::control {
namespace {

constexpr std::size_t kMaxTrustKeys = 16;
constexpr std::size_t kMaxSelectorLabels = 32;

class StoreCatalog final : public CatalogStore {
 public:
  explicit StoreCatalog(Store& store) : store_(store) {}
  Status upsert_module(const ModuleRecord& m) override { return store_.upsert_module(m); }
  Result<std::vector<ModuleRecord>> list_modules() override { return store_.list_modules(); }
  Status insert_assignment(const AssignmentRecord& a) override { return store_.insert_assignment(a); }
  Result<std::vector<AssignmentRecord>> list_assignments() override { return store_.list_assignments(); }
  Result<bool> delete_assignment(std::string_view id) override { return store_.delete_assignment(id); }

 private:
  Store& store_;
};

bool is_digest(std::string_view d) {
  return d.size() == 71 && d.starts_with("sha256:") && d.substr(7).find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

bool matches(const AssignmentRecord& a, std::string_view node_id, const Labels& labels) {
  if (a.node_id) return *a.node_id == node_id;
  if (a.selector.empty()) return false;
  return std::all_of(a.selector.begin(), a.selector.end(), [&](const auto& kv) {
    auto it = labels.find(kv.first);
    return it != labels.end() && it->second == kv.second;
  });
}

}  // namespace

std::unique_ptr<CatalogStore> catalog_store(Store& store) { return std::make_unique<StoreCatalog>(store); }

Result<ModuleRecord> add_module(CatalogStore& store, const ModuleAdd& add, std::int64_t now_ms) {
  if (auto ok = module::validate_name(add.name, "module name"); !ok) return fail(ok.error());
  if (auto ok = module::validate_version(add.version); !ok) return fail(ok.error());
  auto ref = oci::parse_reference(add.reference);
  if (!ref) return fail(ref.error().with_context("--reference"));
  if (ref->digest.empty()) {
    return fail(Errc::data, "reference '" + add.reference + "' names a tag only",
                "pin the module by its OCI manifest digest: REGISTRY/REPO@sha256:... (cairn-module push prints it)");
  }
  if (!add.manifest_digest.empty() && !is_digest(add.manifest_digest)) {
    return fail(Errc::data, "manifest digest '" + add.manifest_digest + "': not sha256:<64 lower-case hex>");
  }
  if (add.priority < module::kMinPriority || add.priority > module::kMaxPriority) {
    return fail(Errc::data, "priority " + std::to_string(add.priority) + " is outside " + std::to_string(module::kMinPriority) +
                                ".." + std::to_string(module::kMaxPriority));
  }
  if (add.trust_key_pems.empty() || add.trust_key_pems.size() > kMaxTrustKeys) {
    return fail(Errc::data, "module " + add.name + ": " + std::to_string(add.trust_key_pems.size()) + " trust keys",
                "give between 1 and " + std::to_string(kMaxTrustKeys) + " public keys with --trust-key");
  }
  Json keys = Json::array();
  for (const auto& pem : add.trust_key_pems) {
    auto key = parse_public_key_pem(pem);
    if (!key) return fail(key.error().with_context("trust key"));
    auto id = module::key_id(key->get());
    if (!id) return fail(id.error().with_context("trust key"));
    auto canonical = public_key_pem(key->get());
    if (!canonical) return fail(canonical.error());
    keys.push_back({{"id", *id}, {"pem", *canonical}});
  }
  ModuleRecord record{.name = add.name, .version = add.version, .reference = ref->str(),
                      .manifest_digest = add.manifest_digest, .priority = add.priority,
                      .trust_json = dump_json({{"keys", keys}}), .added_at_ms = now_ms};
  if (auto ok = store.upsert_module(record); !ok) return fail(ok.error());
  return record;
}

Result<AssignmentRecord> assign_module(CatalogStore& store, const AssignSpec& spec, std::string id, std::int64_t now_ms) {
  if (spec.node_id.has_value() == !spec.selector.empty()) {
    return fail(Errc::usage, "assign " + spec.name + "@" + spec.version + ": give exactly one of --node and --selector");
  }
  if (spec.selector.size() > kMaxSelectorLabels) return fail(Errc::data, "selector with more than 32 labels");
  if (spec.node_id && !parse_uuid(*spec.node_id)) {
    return fail(Errc::data, "node id '" + *spec.node_id + "': not a UUID", "copy it from cairn-control node list");
  }
  auto modules = store.list_modules();
  if (!modules) return fail(modules.error());
  const bool known = std::any_of(modules->begin(), modules->end(), [&](const ModuleRecord& m) {
    return m.name == spec.name && m.version == spec.version;
  });
  if (!known) {
    return fail(Errc::data, "module " + spec.name + "@" + spec.version + " is not in the catalog", "add it first: cairn-control module add");
  }
  AssignmentRecord a{.id = std::move(id), .module_name = spec.name, .module_version = spec.version, .node_id = spec.node_id,
                     .selector = spec.selector, .created_at_ms = now_ms};
  if (auto ok = store.insert_assignment(a); !ok) return fail(ok.error());
  return a;
}

std::vector<DesiredModule> desired_set(const std::vector<ModuleRecord>& modules,
                                       const std::vector<AssignmentRecord>& assignments, std::string_view node_id,
                                       const Labels& labels) {
  // Per name the best assignment: by node id over by selector, then the newest, then the id.
  std::map<std::string, const AssignmentRecord*> best;
  const auto better = [](const AssignmentRecord& a, const AssignmentRecord& b) {
    if (a.node_id.has_value() != b.node_id.has_value()) return a.node_id.has_value();
    if (a.created_at_ms != b.created_at_ms) return a.created_at_ms > b.created_at_ms;
    return a.id > b.id;
  };
  for (const auto& a : assignments) {
    if (!matches(a, node_id, labels)) continue;
    auto& slot = best[a.module_name];
    if (slot == nullptr || better(a, *slot)) slot = &a;
  }
  std::vector<DesiredModule> out;
  for (const auto& [name, a] : best) {
    auto it = std::find_if(modules.begin(), modules.end(), [&](const ModuleRecord& m) {
      return m.name == a->module_name && m.version == a->module_version;
    });
    if (it == modules.end()) continue;
    out.push_back({it->name, it->version, it->reference, it->manifest_digest, it->priority,
                   parse_json(it->trust_json, "trust policy of " + it->name).value_or(Json::object())});
  }
  return out;
}

std::vector<protocol::ModuleRef> CatalogSnapshot::desired_refs(std::string_view node_id, const Labels& labels) const {
  std::vector<protocol::ModuleRef> out;
  for (const auto& m : desired_set(modules, assignments, node_id, labels)) {
    auto ref = oci::parse_reference(m.reference);
    if (!ref || ref->digest.empty()) continue;  // add_module stores pinned references only
    out.push_back({m.name, ref->digest, false});
  }
  return out;
}

CatalogSnapshot load_catalog(Store& store) {
  CatalogSnapshot snap;
  auto modules = store.list_modules();
  auto assignments = store.list_assignments();
  if (!modules || !assignments) {
    log::debug("modules.catalog_unavailable", {{"error", (!modules ? modules.error() : assignments.error()).message}});
    return snap;
  }
  snap.modules = std::move(*modules);
  snap.assignments = std::move(*assignments);
  return snap;
}

Json to_json(const DesiredModule& m) {
  return {{"name", m.name}, {"version", m.version}, {"reference", m.reference}, {"manifest_digest", m.manifest_digest},
          {"priority", m.priority}, {"trust", m.trust}};
}

Json to_json(const ModuleRecord& m) {
  return {{"name", m.name}, {"version", m.version}, {"reference", m.reference}, {"manifest_digest", m.manifest_digest},
          {"priority", m.priority}, {"trust", parse_json(m.trust_json, "trust").value_or(Json::object())},
          {"added_at_ms", m.added_at_ms}};
}

Json to_json(const AssignmentRecord& a) {
  return {{"id", a.id}, {"module", a.module_name + "@" + a.module_version},
          {"node_id", a.node_id ? Json(*a.node_id) : Json(nullptr)}, {"selector", a.selector},
          {"created_at_ms", a.created_at_ms}};
}

}  // namespace cairn::control
