// The module catalog and its assignments (issue 14): what `cairn-control module add / list /
// assign / unassign` change, and the desired set each node receives in its heartbeat reply
// (the modules assigned to it by id or by a label selector, one version per name, each with
// its OCI reference, priority and trust policy).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "common/result.hpp"
#include "control/store/store.hpp"
#include "control/store/task_records.hpp"

namespace cairn::control {

// The Store calls the catalog needs (SQLite and PostgreSQL bodies live with the stores);
// catalog_store() adapts the real Store, tests use a small double.
class CatalogStore {
 public:
  virtual ~CatalogStore() = default;
  virtual Status upsert_module(const ModuleRecord& module) = 0;
  virtual Result<std::vector<ModuleRecord>> list_modules() = 0;
  virtual Status insert_assignment(const AssignmentRecord& assignment) = 0;
  virtual Result<std::vector<AssignmentRecord>> list_assignments() = 0;
  virtual Result<bool> delete_assignment(std::string_view id) = 0;
};
std::unique_ptr<CatalogStore> catalog_store(Store& store);

struct ModuleAdd {
  std::string name;
  std::string version;
  std::string reference;        // REGISTRY/REPO@sha256:<hex> (a tag alone can move: refused)
  std::string manifest_digest;  // optional: sha256:<hex> of the module manifest
  std::int64_t priority = 0;
  std::vector<std::string> trust_key_pems;  // public keys allowed to sign this module (at least one)
};
// Validates and stores (name, version); the trust policy is {"keys": [{"id", "pem"}]}.
Result<ModuleRecord> add_module(CatalogStore& store, const ModuleAdd& add, std::int64_t now_ms);

struct AssignSpec {
  std::string name;
  std::string version;
  std::optional<std::string> node_id;  // exactly one of node_id and a non-empty selector
  Labels selector;
};
// The module must be in the catalog. `id` is the new assignment's UUID.
Result<AssignmentRecord> assign_module(CatalogStore& store, const AssignSpec& spec, std::string id, std::int64_t now_ms);

struct DesiredModule {
  std::string name;
  std::string version;
  std::string reference;
  std::string manifest_digest;
  std::int64_t priority = 0;
  Json trust = Json::object();
};
// What a node with this id and these labels should run: per module name the assignment naming
// the node wins over selector matches; among equals the newest. Assignments whose module
// left the catalog are skipped.
std::vector<DesiredModule> desired_set(const std::vector<ModuleRecord>& modules,
                                       const std::vector<AssignmentRecord>& assignments, std::string_view node_id,
                                       const Labels& labels);
Json to_json(const DesiredModule& m);

// The catalog as one heartbeat batch sees it (read once per batch). A store without the
// catalog's tables yet answers empty sets.
struct CatalogSnapshot {
  std::vector<ModuleRecord> modules;
  std::vector<AssignmentRecord> assignments;
  // The heartbeat reply's desired set: per module its name and the OCI manifest digest the
  // node fetches (HOST/PREFIX/NAME@digest, with the registry and trust pinned by the agent).
  [[nodiscard]] std::vector<protocol::ModuleRef> desired_refs(std::string_view node_id, const Labels& labels) const;
};
CatalogSnapshot load_catalog(Store& store);
Json to_json(const ModuleRecord& m);
Json to_json(const AssignmentRecord& a);

}  // namespace cairn::control
