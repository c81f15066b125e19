// Store: what cairn-control keeps on disk (tokens, nodes, certificates, heartbeats), behind
// one interface so the SQLite default and the PostgreSQL backend are interchangeable.
// SQL dialects stay inside the backends; every multi-row change is one transaction there.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/protocol/messages.hpp"
#include "common/result.hpp"
#include "control/store/task_records.hpp"

namespace cairn::control {

// Times are Unix milliseconds (UTC): one integer type for every backend.
struct TokenRecord {
  std::string id;    // UUID, shown to operators
  std::string hash;  // sha256_hex of the raw token; the token itself is never stored
  std::int64_t created_at_ms = 0;
  std::int64_t expires_at_ms = 0;
  std::int64_t uses = 0;
  std::int64_t max_uses = 1;
  Labels labels;
  std::optional<std::string> expect_id;  // node UUID the token is reserved for
  bool revoked = false;
};

enum class CertStatus {
  active,      // authorizes requests until it expires
  superseded,  // replaced by a re-enrollment: authorizes nothing
  revoked,     // its node was revoked
};
inline std::string_view cert_status_name(CertStatus status) {
  switch (status) {
    case CertStatus::active: return "active";
    case CertStatus::superseded: return "superseded";
    case CertStatus::revoked: return "revoked";
  }
  return "active";
}

struct CertRecord {
  std::string serial_hex;  // as CertInfo::serial_hex
  std::string node_id;
  std::string fingerprint_sha256;
  std::int64_t not_before_ms = 0;
  std::int64_t not_after_ms = 0;
  std::int64_t issued_at_ms = 0;
  std::string reason;  // "enroll" or "rotate"
  CertStatus status = CertStatus::active;
  // A rotation's new certificate that the node has not used yet: until it does (its answer
  // may have been lost, or the node could not store it), this one stays current and may
  // rotate again, which supersedes the unused one.
  std::optional<std::string> replaced_by;
  // Set when the node first used its replacement: this one authorizes requests until then
  // (the grace for requests in flight) and may never rotate again.
  std::optional<std::int64_t> retire_at_ms;
  std::string public_key_pem;  // the certificate's key (empty for certificates from schema 1)
};

// The last heartbeat of a node (events are kept apart, see NodeEventRecord).
struct NodeStatusRecord {
  std::int64_t last_seen_ms = 0;
  protocol::HeartbeatRequest last;  // without events
  std::int64_t heartbeats = 0;
  std::int64_t critical_events_total = 0;
};

struct NodeRecord {
  std::string id;  // UUID, lower case
  // `cairn-control node allow-reenroll`: the next enrollment of this id with any valid token
  // is accepted until then (once).
  std::optional<std::int64_t> reenroll_allowed_until_ms;
  protocol::NodeIdentity identity;
  Labels labels;  // token labels merged with the labels the node asked for at enrollment
  std::int64_t first_enrolled_at_ms = 0;
  std::int64_t enrolled_at_ms = 0;
  std::int64_t enroll_count = 0;
  std::optional<std::int64_t> revoked_at_ms;
  std::optional<std::int64_t> cert_not_after_ms;  // latest active certificate (read only)
  std::optional<NodeStatusRecord> status;         // none before the first heartbeat (read only)
};

// An event of a node: sent by its agent (its idempotency id kept) or recorded by control
// ("node.unreachable", "enroll.node_exists", ...). One row per (node, id): a duplicate id is
// dropped, so an agent's stable id makes one event per episode.
struct NodeEventRecord {
  std::string node_id;
  std::string event_id;
  std::string severity;
  std::string kind;
  std::string message;
  std::string time;
  std::int64_t received_at_ms = 0;
  // Assigned by the store on insert, growing with every stored event: the cursor of
  // `cairn-control events --follow` (EventQuery::after_seq). 0 in records not yet stored.
  std::int64_t seq = 0;
};

struct HeartbeatRecord {
  std::string node_id;
  std::int64_t received_at_ms = 0;
  protocol::HeartbeatRequest request;
};

// Whether an enrollment may replace an existing (unrevoked) node of the same id.
enum class ExistingNode {
  refuse,                  // a plain fleet token: new ids only
  replace,                 // a token bound to the id, or proof of the node's current key
  replace_if_allowed,      // only under a pending `node allow-reenroll`, which it consumes
};

// Everything enrollment changes, committed together or not at all.
struct EnrollmentCommit {
  std::string token_id;
  std::int64_t now_ms = 0;  // the token must still be unexpired at this time
  NodeRecord node;          // id, identity, labels
  CertRecord cert;
  ExistingNode existing = ExistingNode::refuse;
};
enum class EnrollmentOutcome {
  committed,
  token_unavailable,  // revoked, expired or used up between lookup and commit
  node_revoked,
  node_exists,  // the id is enrolled and `existing` did not allow replacing it
};

enum class RotationOutcome {
  committed,
  not_current,  // the old certificate was revoked, superseded or is retiring
};

struct EventQuery {
  std::optional<std::string> node_id;
  std::int64_t since_ms = 0;  // received at or after
  std::int64_t limit = 1000;
  // A cursor: only events with seq > after_seq, the OLDEST `limit` of them (the next page of
  // a follower), in seq order. Without it: the newest `limit`, oldest first.
  std::optional<std::int64_t> after_seq;
};

// An admin credential (CN admin:<name>): known certificates only authorize admin calls.
struct AdminCertRecord {
  std::string serial_hex;
  std::string name;
  std::string fingerprint_sha256;
  std::int64_t issued_at_ms = 0;
  std::int64_t not_after_ms = 0;
  std::optional<std::int64_t> revoked_at_ms;
};

// What authorize_node needs in memory, loaded once at start.
struct AuthSnapshot {
  struct Node {
    std::string id;
    bool revoked = false;
    std::int64_t enrolled_at_ms = 0;
    std::int64_t last_seen_ms = 0;  // 0: never heartbeated
  };
  std::vector<Node> nodes;
  std::vector<CertRecord> certs;  // every certificate not superseded, not expired, not retired
  std::vector<AdminCertRecord> admins;  // every admin certificate (revoked ones too)
};

class Store {
 public:
  virtual ~Store() = default;

  [[nodiscard]] virtual int schema_version() = 0;

  // tokens
  virtual Status insert_token(const TokenRecord& token) = 0;
  virtual Result<std::optional<TokenRecord>> find_token_by_hash(std::string_view hash) = 0;
  virtual Result<std::vector<TokenRecord>> list_tokens() = 0;
  virtual Result<bool> revoke_token(std::string_view id) = 0;  // false: no such token

  // enrollment: consumes one use of the token, upserts the node, supersedes its active
  // certificates, records the new one and counts the enrollment, in one transaction.
  virtual Result<EnrollmentOutcome> commit_enrollment(const EnrollmentCommit& commit) = 0;
  virtual Result<std::int64_t> enrollments_total() = 0;

  // certificates. Rotation, in one transaction: the old certificate (which must be active
  // and not retiring) is marked replaced_by the new one, a previous unused replacement of it
  // is superseded, and the new one is recorded.
  virtual Result<RotationOutcome> commit_rotation(std::string_view old_serial, const CertRecord& fresh) = 0;
  // The node used `new_serial` for the first time: the certificate it replaced retires then.
  virtual Status confirm_rotation(std::string_view new_serial, std::int64_t retire_at_ms) = 0;
  virtual Result<std::vector<CertRecord>> list_certificates(std::string_view node_id) = 0;

  // nodes
  virtual Result<std::optional<NodeRecord>> find_node(std::string_view id) = 0;
  virtual Result<std::vector<NodeRecord>> list_nodes() = 0;
  // Marks the node and all its certificates revoked; false: no such node.
  virtual Result<bool> revoke_node(std::string_view id, std::int64_t now_ms) = 0;
  // Until until_ms, the next enrollment of this existing id needs no bound token; false: no
  // such node (or revoked).
  virtual Result<bool> allow_reenroll(std::string_view id, std::int64_t until_ms) = 0;

  // events: newest first for one node; oldest first (received_at, then arrival) for a query,
  // or in seq order with a cursor (EventQuery::after_seq).
  // insert_events drops ids already stored and prunes the node to kEventsKeptPerNode; it
  // returns how many it stored (the others were duplicates), and gives each a new seq.
  virtual Result<std::vector<NodeEventRecord>> recent_events(std::string_view node_id) = 0;
  virtual Result<std::vector<NodeEventRecord>> list_events(const EventQuery& query) = 0;
  virtual Result<std::int64_t> insert_events(std::span<const NodeEventRecord> events) = 0;

  // admin credentials
  virtual Status insert_admin_cert(const AdminCertRecord& admin) = 0;  // a known serial: no-op
  virtual Result<std::vector<AdminCertRecord>> list_admin_certs() = 0;
  // Revokes every certificate of that admin name; the number revoked (0: none active).
  virtual Result<std::int64_t> revoke_admin(std::string_view name, std::int64_t now_ms) = 0;

  // heartbeats: the whole batch in one transaction. The outer error means nothing was
  // committed; otherwise one Status per record (a record can fail alone, e.g. unknown node).
  virtual Result<std::vector<Status>> write_heartbeats(std::span<const HeartbeatRecord> batch) = 0;

  virtual Result<AuthSnapshot> load_auth_snapshot(std::int64_t now_ms) = 0;

  // tasks (issue 13). Every method is one transaction; on PostgreSQL several replicas call
  // them concurrently on one database and each task is leased by one node at a time.
  // Inserts the task (seq assigned), or, when its idempotency key is already stored, returns
  // that task unchanged with created=false.
  virtual Result<SubmitOutcome> submit_task(const TaskRecord& task) = 0;
  virtual Result<std::optional<TaskRecord>> find_task(std::string_view id) = 0;  // with output
  virtual Result<std::vector<TaskRecord>> list_tasks(const TaskQuery& query) = 0;  // newest first, no output
  virtual Result<std::vector<TaskAttemptRecord>> list_task_attempts(std::string_view task_id) = 0;
  // Leases up to max_tasks queued tasks this node may run, in submission order: addressed to
  // it or matching selector and capabilities; not_before passed; the oldest unfinished task
  // of its serial key; reservations (with those it holds) within the budget. Each leased
  // task: state leased, leased_by, fence + 1, attempts + 1, lease expiry now + lease_ms, and
  // an attempt row. Returns the leased tasks (with their new fence).
  virtual Result<std::vector<TaskRecord>> lease_tasks(const LeaseQuery& query) = 0;
  // Whether lease_tasks would find work for this node now (read only; max_tasks ignored).
  virtual Result<bool> has_work(const LeaseQuery& query) = 0;
  // Queued tasks that are the oldest unfinished task of their serial key (or have none),
  // oldest first, at most `limit`, without args and output (placement fields, min,
  // not_before). The service keeps them in memory to answer the heartbeat's work_waiting hint
  // without a query per heartbeat.
  virtual Result<std::vector<TaskRecord>> queued_heads(std::int64_t limit) = 0;
  // Only the leaseholder with the current fence, before expiry: moves the lease expiry to
  // now + lease_ms (and leased -> running when `running`).
  virtual Result<ExtendOutcome> extend_lease(std::string_view task_id, std::string_view node_id,
                                             std::int64_t fence, std::int64_t lease_ms, std::int64_t now_ms,
                                             bool running) = 0;
  // Only the leaseholder with the current fence. Idempotent: the same fence completing again
  // with the same outcome answers ok with the stored state.
  virtual Result<CompleteOutcome> complete_task(const TaskCompletion& completion) = 0;
  // Leases past their expiry: the attempt ends as lease_lost; the task goes back to queued
  // with not_before = now + backoff_ms(attempts), or ends dead when attempts reached
  // max_attempts. Returns the tasks changed (their new state).
  virtual Result<std::vector<TaskRecord>> expire_leases(std::int64_t now_ms,
                                                        const std::function<std::int64_t(std::int64_t)>& backoff_ms) = 0;
  // queued -> cancelled at once; leased/running -> cancel_requested (the node is told).
  virtual Result<CancelOutcome> cancel_task(std::string_view task_id, std::int64_t now_ms) = 0;
  // Of these task ids held by the node, those with cancel_requested.
  virtual Result<std::vector<std::string>> cancelled_among(std::string_view node_id,
                                                           std::span<const std::string> task_ids) = 0;
  // Deletes final tasks (and their attempts) finished before older_than_ms, and beyond the
  // newest keep_per_node final tasks of each node. Returns how many were deleted.
  virtual Result<std::int64_t> prune_tasks(std::int64_t older_than_ms, std::int64_t keep_per_node) = 0;
  // Batches (h-taskbatch): what a queue service or a node does with several tasks at once, in
  // ONE transaction (SQLite: one BEGIN IMMEDIATE..COMMIT; PostgreSQL: one statement), so a
  // batch costs one commit. Each item keeps the semantics of its one-task method: one answer
  // per item, in the batch's order (an idempotency key already stored, or repeated earlier
  // in the same batch, answers the existing task with created=false; one stale fence refuses
  // that completion only). The outer error means nothing of the batch was committed.
  virtual Result<std::vector<SubmitOutcome>> submit_tasks(std::span<const TaskRecord> tasks) = 0;
  virtual Result<std::vector<CompleteOutcome>> complete_tasks(std::span<const TaskCompletion> completions) = 0;
  // A number that moves whenever authorisation may have changed (enrollment, revocation of a
  // node or admin, rotation and its confirmation, a new admin certificate): a replica reloads
  // load_auth_snapshot only when it differs from the one it saw last.
  virtual Result<std::int64_t> auth_generation() = 0;
  // Stored tasks by state name (every state present, 0 when none): for /metrics, read at most
  // every few seconds.
  virtual Result<std::map<std::string, std::int64_t>> count_tasks() = 0;

  // module catalog and assignments (issue 14)
  virtual Status upsert_module(const ModuleRecord& module) = 0;  // key: (name, version)
  virtual Result<std::vector<ModuleRecord>> list_modules() = 0;
  virtual Status insert_assignment(const AssignmentRecord& assignment) = 0;
  virtual Result<std::vector<AssignmentRecord>> list_assignments() = 0;
  virtual Result<bool> delete_assignment(std::string_view id) = 0;  // false: no such id

  // modules (h-policystore): the signed module trust policy. The version rule (never lower;
  // equal only with identical policy_text) is decided by the store in one conditional
  // statement, so concurrent puts from several replicas can never let a lower version win.
  virtual Result<ModulePolicyPut> put_module_policy(const ModulePolicyRecord& policy) = 0;
  virtual Result<std::optional<ModulePolicyRecord>> find_module_policy() = 0;  // none set: nullopt

  // escrowed volume keys (issue 15): opaque (already encrypted by the service). Stores `key`
  // for the node unless one is stored; returns the stored one either way.
  virtual Result<std::string> put_escrow_key_if_absent(std::string_view node_id, std::string_view key) = 0;
  virtual Result<std::optional<std::string>> find_escrow_key(std::string_view node_id) = 0;
};

// How many events (of any severity) are kept per node, newest first; the count of critical
// ones ever received is kept too.
inline constexpr int kEventsKeptPerNode = 100;

}  // namespace cairn::control
