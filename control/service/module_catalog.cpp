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

constexpr std::size_t kMaxSignatures = 16;

std::vector<std::string> dependencies_of(const ModuleRecord& m) {
  if (m.manifest_json.empty()) return {};
  auto j = parse_json(m.manifest_json, "stored manifest of " + m.name);
  if (!j || !j->is_object() || !j->contains("dependencies") || !(*j)["dependencies"].is_array()) return {};
  std::vector<std::string> out;
  for (const auto& d : (*j)["dependencies"]) {
    if (d.is_string()) out.push_back(d.get<std::string>());
  }
  return out;
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
  auto ref = oci::parse_reference(add.reference);
  if (!ref) return fail(ref.error().with_context("reference"));
  if (ref->digest.empty()) {
    return fail(Errc::data, "reference '" + add.reference + "' names a tag only",
                "pin the module by its OCI manifest digest: REGISTRY/REPO@sha256:... (cairn-module push prints it)");
  }
  if (add.manifest_text.empty()) {
    return fail(Errc::data, "module add " + add.reference + ": no module manifest",
                "give the manifest cairn-module pack wrote (NAME.manifest.json), or a pushed reference");
  }
  if (add.manifest_text.size() > module::kMaxManifestBytes) {
    return fail(Errc::data, "module manifest of " + add.reference + ": larger than " +
                                std::to_string(module::kMaxManifestBytes) + " bytes");
  }
  auto manifest = module::parse_manifest(add.manifest_text, "module manifest of " + add.reference);
  if (!manifest) return fail(manifest.error());
  const std::string label = manifest->name + "@" + manifest->version;
  if (add.trust_key_pems.empty() || add.trust_key_pems.size() > kMaxTrustKeys) {
    return fail(Errc::data, "module " + label + ": " + std::to_string(add.trust_key_pems.size()) + " trust keys",
                "give between 1 and " + std::to_string(kMaxTrustKeys) + " public keys with --trust-key");
  }
  Json keys = Json::array();
  std::vector<std::pair<std::string, EvpPkey>> trusted;
  for (const auto& pem : add.trust_key_pems) {
    auto key = parse_public_key_pem(pem);
    if (!key) return fail(key.error().with_context("trust key"));
    auto id = module::key_id(key->get());
    if (!id) return fail(id.error().with_context("trust key"));
    auto canonical = public_key_pem(key->get());
    if (!canonical) return fail(canonical.error());
    keys.push_back({{"id", *id}, {"pem", *canonical}});
    trusted.emplace_back(*id, std::move(*key));
  }
  if (add.signatures.empty()) {
    return fail(Errc::refused, "module " + label + " is unsigned",
                "sign it with cairn-module sign and push it again (or pass --signature FILE.sig)");
  }
  if (add.signatures.size() > kMaxSignatures) {
    return fail(Errc::data, "module " + label + ": more than " + std::to_string(kMaxSignatures) + " signatures");
  }
  std::string why;
  bool verified = false;
  for (const auto& text : add.signatures) {
    auto sig = module::parse_signature(text, "signature of " + label);
    if (!sig) {
      why += (why.empty() ? "" : "; ") + sig.error().message;
      continue;
    }
    auto it = std::find_if(trusted.begin(), trusted.end(), [&](const auto& k) { return k.first == sig->key_id; });
    if (it == trusted.end()) {
      why += (why.empty() ? "" : "; ") + std::string("signed by key ") + sig->key_id + ", not a trust key";
      continue;
    }
    if (auto ok = module::verify_manifest(*manifest, *sig, it->second.get()); !ok) {
      why += (why.empty() ? "" : "; ") + ok.error().message;
      continue;
    }
    verified = true;
    break;
  }
  if (!verified) {
    return fail(Errc::refused, "module " + label + ": no signature verifies with the trust keys (" + why + ")",
                "pass the public key that signed it with --trust-key, or sign the module with a trusted key");
  }
  ModuleRecord record{.name = manifest->name, .version = manifest->version, .reference = ref->str(),
                      .manifest_digest = "sha256:" + sha256_hex(add.manifest_text), .priority = manifest->priority,
                      .trust_json = dump_json({{"keys", keys}}), .added_at_ms = now_ms,
                      .manifest_json = dump_json(module::manifest_to_json(*manifest)), .required = add.required};
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
  for (const auto& m : *modules) {
    if (m.name != spec.name || m.version != spec.version) continue;
    for (const auto& dep : dependencies_of(m)) {
      const bool present = std::any_of(modules->begin(), modules->end(), [&](const ModuleRecord& x) { return x.name == dep; });
      if (!present) {
        return fail(Errc::data, "module " + spec.name + "@" + spec.version + " depends on " + dep + ", which is not in the catalog",
                    "add " + dep + " first (cairn-control module add) and assign it to the same nodes");
      }
    }
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
                   parse_json(it->trust_json, "trust policy of " + it->name).value_or(Json::object()), it->required});
  }
  return out;
}

std::vector<protocol::ModuleRef> CatalogSnapshot::desired_refs(std::string_view node_id, const Labels& labels) const {
  std::vector<protocol::ModuleRef> out;
  for (const auto& m : desired_set(modules, assignments, node_id, labels)) {
    auto ref = oci::parse_reference(m.reference);
    if (!ref || ref->digest.empty()) continue;  // add_module stores pinned references only
    out.push_back({m.name, ref->digest, false, m.required});
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
  Json j = {{"name", m.name}, {"version", m.version}, {"reference", m.reference}, {"manifest_digest", m.manifest_digest},
            {"priority", m.priority}, {"trust", parse_json(m.trust_json, "trust").value_or(Json::object())},
            {"added_at_ms", m.added_at_ms}, {"required", m.required}, {"dependencies", dependencies_of(m)}};
  // The verified manifest's digests: what `cairn-agent modules` and the heartbeat show.
  if (auto manifest = parse_json(m.manifest_json.empty() ? "{}" : m.manifest_json, "stored manifest");
      manifest && manifest->is_object()) {
    if (manifest->contains("sha256") && (*manifest)["sha256"].is_string()) {
      j["image_digest"] = "sha256:" + (*manifest)["sha256"].get<std::string>();
    }
    if (manifest->contains("fsverity") && (*manifest)["fsverity"].is_string()) {
      j["fsverity_digest"] = "sha256:" + (*manifest)["fsverity"].get<std::string>();
    }
    if (manifest->contains("size") && (*manifest)["size"].is_number_unsigned()) j["size"] = (*manifest)["size"];
  }
  return j;
}

Json to_json(const AssignmentRecord& a) {
  return {{"id", a.id}, {"module", a.module_name + "@" + a.module_version},
          {"node_id", a.node_id ? Json(*a.node_id) : Json(nullptr)}, {"selector", a.selector},
          {"created_at_ms", a.created_at_ms}};
}

std::vector<protocol::ModuleRef> desired_for_node(Store& store, const CatalogSnapshot& catalog, std::string_view node_id) {
  Labels labels;
  const bool any_selector = std::any_of(catalog.assignments.begin(), catalog.assignments.end(),
                                        [](const AssignmentRecord& a) { return !a.node_id && !a.selector.empty(); });
  if (any_selector) {
    auto node = store.find_node(node_id);
    if (!node) {
      log::warn("modules.node_labels_unavailable", {{"node", std::string(node_id)}, {"error", node.error().message}});
    } else if (*node) {
      labels = (*node)->labels;
    }
  }
  return catalog.desired_refs(node_id, labels);
}

namespace {

std::unexpected<ApiError> api_refusal(const Error& e) {
  switch (e.code) {
    case Errc::usage:
    case Errc::data:
      return refuse(400, "bad_request", e.message, e.hint);
    case Errc::refused:
      return refuse(403, "module_untrusted", e.message, e.hint);
    default:
      return refuse(500, "store_error", e.message, e.hint);
  }
}

// A string field of a body; absent -> empty. Errc::data when present with another type.
Result<std::string> string_field(const Json& body, std::string_view key) {
  if (!body.contains(key) || body[std::string(key)].is_null()) return std::string();
  const auto& v = body[std::string(key)];
  if (!v.is_string()) return fail(Errc::data, "\"" + std::string(key) + "\" must be a string");
  return v.get<std::string>();
}

Result<std::vector<std::string>> string_list(const Json& body, std::string_view key, std::size_t max) {
  std::vector<std::string> out;
  if (!body.contains(key) || body[std::string(key)].is_null()) return out;
  const auto& v = body[std::string(key)];
  if (!v.is_array()) return fail(Errc::data, "\"" + std::string(key) + "\" must be a list of strings");
  if (v.size() > max) return fail(Errc::data, "\"" + std::string(key) + "\": more than " + std::to_string(max) + " entries");
  for (const auto& e : v) {
    if (!e.is_string()) return fail(Errc::data, "\"" + std::string(key) + "\" must be a list of strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

}  // namespace

ApiResult<Json> admin_list_modules(Store& store) {
  auto modules = store.list_modules();
  if (!modules) return api_refusal(modules.error());
  auto assignments = store.list_assignments();
  if (!assignments) return api_refusal(assignments.error());
  Json out = {{"modules", Json::array()}, {"assignments", Json::array()}};
  for (const auto& m : *modules) out["modules"].push_back(to_json(m));
  for (const auto& a : *assignments) out["assignments"].push_back(to_json(a));
  return out;
}

ApiResult<Json> admin_add_module(Store& store, const Json& body, std::int64_t now_ms) {
  ModuleAdd add;
  auto reference = string_field(body, "reference");
  auto manifest = string_field(body, "manifest");
  auto signatures = string_list(body, "signatures", kMaxSignatures);
  auto keys = string_list(body, "trust_keys", kMaxTrustKeys);
  for (const auto* r : {&reference, &manifest}) {
    if (!*r) return api_refusal(r->error());
  }
  for (const auto* r : {&signatures, &keys}) {
    if (!*r) return api_refusal(r->error());
  }
  if (body.contains("required") && !body["required"].is_boolean()) {
    return refuse(400, "bad_request", "\"required\" must be true or false");
  }
  add.reference = *reference;
  add.manifest_text = *manifest;
  add.signatures = *signatures;
  add.trust_key_pems = *keys;
  add.required = body.value("required", false);
  auto catalog = catalog_store(store);
  auto record = add_module(*catalog, add, now_ms);
  if (!record) return api_refusal(record.error());
  log::info("modules.added", {{"module", record->name + "@" + record->version}, {"reference", record->reference}});
  return to_json(*record);
}

ApiResult<Json> admin_assign_module(Store& store, const Json& body, std::int64_t now_ms) {
  auto module = string_field(body, "module");
  if (!module) return api_refusal(module.error());
  const auto at = module->find('@');
  if (at == std::string::npos || at == 0 || at + 1 == module->size()) {
    return refuse(400, "bad_request", "module '" + *module + "': expected NAME@VERSION", "e.g. {\"module\": \"web@1.2\"}");
  }
  AssignSpec spec{.name = module->substr(0, at), .version = module->substr(at + 1), .node_id = std::nullopt, .selector = {}};
  auto node = string_field(body, "node");
  if (!node) return api_refusal(node.error());
  if (!node->empty()) spec.node_id = *node;
  if (body.contains("selector") && !body["selector"].is_null()) {
    const auto& sel = body["selector"];
    if (!sel.is_object()) return refuse(400, "bad_request", "\"selector\" must be an object of labels");
    for (const auto& [k, v] : sel.items()) {
      if (!v.is_string()) return refuse(400, "bad_request", "selector label " + k + ": the value must be a string");
      if (k.empty() || k.size() > 63 || v.get<std::string>().size() > 253) {
        return refuse(400, "bad_request", "selector label '" + k.substr(0, 80) + "': key 1-63 bytes, value at most 253");
      }
      spec.selector[k] = v.get<std::string>();
    }
  }
  auto catalog = catalog_store(store);
  auto a = assign_module(*catalog, spec, random_uuid().str(), now_ms);
  if (!a) return api_refusal(a.error());
  log::info("modules.assigned", {{"module", *module}, {"assignment", a->id}});
  return to_json(*a);
}

ApiResult<Json> admin_unassign_module(Store& store, std::string_view id) {
  if (!parse_uuid(id)) {
    return refuse(400, "bad_request", "assignment id '" + std::string(id.substr(0, 80)) + "': not a UUID",
                  "copy it from cairn-control module list");
  }
  auto deleted = store.delete_assignment(id);
  if (!deleted) return api_refusal(deleted.error());
  if (!*deleted) {
    return refuse(404, "not_found", "no module assignment " + std::string(id), "see cairn-control module list");
  }
  log::info("modules.unassigned", {{"assignment", std::string(id)}});
  return Json{{"id", std::string(id)}, {"deleted", true}};
}

}  // namespace cairn::control
