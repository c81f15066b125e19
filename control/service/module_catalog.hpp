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
#include "control/api_error.hpp"
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

// `cairn-control module add`: what the operator has after `cairn-module pack/sign/push`. The
// module manifest (exactly the bytes pushed: its sha256 is the stored manifest digest) gives
// name, version, priority, size, sha256, fs-verity digest and dependencies; one of the
// signatures must verify with one of the trust keys, so the catalog only lists modules its
// trust policy accepts.
struct ModuleAdd {
  std::string reference;                   // REGISTRY/REPO@sha256:<hex> (a tag alone can move: refused)
  std::string manifest_text;               // the module manifest file
  std::vector<std::string> signatures;     // .sig files (JSON); at least one must verify
  std::vector<std::string> trust_key_pems; // public keys allowed to sign this module (1..16)
  bool required = false;                   // nodes refuse a change that would leave it out
};
// Validates, verifies and stores (name, version); the trust policy is {"keys": [{"id", "pem"}]}.
// Errc::data for malformed input, Errc::refused when no signature verifies with a trust key.
Result<ModuleRecord> add_module(CatalogStore& store, const ModuleAdd& add, std::int64_t now_ms);

struct AssignSpec {
  std::string name;
  std::string version;
  std::optional<std::string> node_id;  // exactly one of node_id and a non-empty selector
  Labels selector;
};
// The module must be in the catalog, and so must each module it depends on (some version).
// `id` is the new assignment's UUID.
Result<AssignmentRecord> assign_module(CatalogStore& store, const AssignSpec& spec, std::string id, std::int64_t now_ms);

struct DesiredModule {
  std::string name;
  std::string version;
  std::string reference;
  std::string manifest_digest;
  std::int64_t priority = 0;
  Json trust = Json::object();
  bool required = false;  // carried to the node in the desired set (h-modpolicy)
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
// The desired set of one node, matched against the labels STORED for it (token labels merged
// with those it asked for at enrollment), never the labels of its heartbeat: a node cannot
// pull modules by claiming labels. Reads the node only when a selector assignment exists.
std::vector<protocol::ModuleRef> desired_for_node(Store& store, const CatalogSnapshot& catalog,
                                                  std::string_view node_id);

// The admin API (/v1/admin/modules..., see control/service.hpp), over the Store:
//   GET  /v1/admin/modules                      -> {"modules": [...], "assignments": [...]}
//   POST /v1/admin/modules                      {"reference", "manifest", "signatures": [..],
//                                                "trust_keys": [PEM..], "required"} -> the module
//   POST /v1/admin/modules/assignments          {"module": "NAME@VERSION", "node" | "selector"} -> the assignment
//   POST /v1/admin/modules/assignments/{id}/delete -> {"id", "deleted": true}
ApiResult<Json> admin_list_modules(Store& store);
ApiResult<Json> admin_add_module(Store& store, const Json& body, std::int64_t now_ms);
ApiResult<Json> admin_assign_module(Store& store, const Json& body, std::int64_t now_ms);
ApiResult<Json> admin_unassign_module(Store& store, std::string_view id);
Json to_json(const ModuleRecord& m);
Json to_json(const AssignmentRecord& a);

}  // namespace cairn::control
