// What the Store keeps about tasks (issue 13), module assignments (issue 14) and escrowed
// volume keys (issue 15): plain records, shared by both backends. Semantics are on the Store
// methods in store.hpp; tests/unit/control/store_tasks_test.cpp runs the same cases against
// SQLite and PostgreSQL.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/protocol/tasks.hpp"

namespace cairn::control {

using Labels = std::map<std::string, std::string>;

// Resources a task reserves on the node that leases it (from --min-cpu/--min-mem/--min-disk).
struct TaskResources {
  std::int64_t cpu_millis = 0;  // 1000 = one CPU
  std::int64_t mem_bytes = 0;
  std::int64_t disk_bytes = 0;
};

struct TaskRecord {
  std::string id;        // UUID
  std::int64_t seq = 0;  // submission order, assigned by the store (serial keys follow it)
  std::string kind;
  std::string args_json = "{}";
  // Placement: a node id, or a selector over the node's labels plus required capabilities
  // (neither: any node).
  std::optional<std::string> node_id;
  Labels selector;
  std::vector<std::string> capabilities;
  TaskResources min;
  std::int64_t timeout_s = 3600;
  std::int64_t max_attempts = 3;
  std::optional<std::string> serial_key;
  std::optional<std::string> idempotency_key;

  protocol::TaskState state = protocol::TaskState::queued;
  std::int64_t attempts = 0;  // leases so far
  std::int64_t fence = 0;     // grows with each lease
  std::optional<std::string> leased_by;
  std::optional<std::int64_t> lease_expires_ms;
  std::int64_t not_before_ms = 0;  // backoff: not leased before this time
  bool cancel_requested = false;
  std::int64_t created_at_ms = 0;
  std::int64_t updated_at_ms = 0;
  std::optional<std::int64_t> started_at_ms;   // last attempt's process start
  std::optional<std::int64_t> finished_at_ms;  // final state reached

  // The last attempt's outcome.
  std::optional<int> exit_code;
  std::optional<protocol::FailureReason> last_reason;
  std::string last_error;
  std::string output;  // empty in list_tasks (only find_task loads it)
  bool output_truncated = false;
  std::int64_t output_bytes = 0;
};

struct TaskAttemptRecord {
  std::string task_id;
  std::int64_t attempt = 0;
  std::int64_t fence = 0;
  std::string node_id;
  std::int64_t leased_at_ms = 0;
  std::optional<std::int64_t> started_at_ms;
  std::optional<std::int64_t> finished_at_ms;
  std::string outcome;  // "", "succeeded", "failed", "cancelled", "lease_lost"
  std::optional<protocol::FailureReason> reason;
  std::optional<int> exit_code;
  std::string error;
};

struct TaskQuery {
  std::optional<protocol::TaskState> state;
  std::optional<std::string> node_id;  // addressed to, or leased by, this node
  std::int64_t limit = 1000;
};

struct SubmitOutcome {
  TaskRecord task;
  bool created = false;  // false: the idempotency key named an existing task, returned as is
};

// A node asking for work. The store checks placement and admission in the same transaction
// that leases (on PostgreSQL: FOR UPDATE SKIP LOCKED, so replicas never lease one task twice).
struct LeaseQuery {
  std::string node_id;
  Labels labels;                          // the node's labels (enrollment)
  std::vector<std::string> capabilities;  // from its latest heartbeat
  // What the node may still take under its headroom, before the reservations of the tasks it
  // holds now (the store subtracts those): a task fits when the sum stays within.
  TaskResources budget;
  std::int64_t max_tasks = 1;
  std::int64_t lease_ms = 60'000;
  std::int64_t now_ms = 0;
};

enum class FenceCheck {
  ok,
  not_found,
  stale,     // another lease (newer fence) or another node holds the task, or it expired
  finished,  // already final (complete: a different outcome than the one stored)
};

struct ExtendOutcome {
  FenceCheck check = FenceCheck::ok;
  bool cancel_requested = false;
};

struct TaskCompletion {
  std::string task_id;
  std::string node_id;
  std::int64_t fence = 0;
  std::int64_t now_ms = 0;
  std::string outcome;  // "succeeded", "failed", "cancelled"
  std::optional<protocol::FailureReason> reason;
  std::optional<int> exit_code;
  std::string error;
  std::string output;
  bool output_truncated = false;
  std::int64_t output_bytes = 0;
  // A transient failure with attempts left goes back to queued, not leased before this (the
  // service computes the backoff with its jitter); otherwise the task ends failed or dead.
  std::int64_t retry_not_before_ms = 0;
};

struct CompleteOutcome {
  FenceCheck check = FenceCheck::ok;
  protocol::TaskState state = protocol::TaskState::queued;  // after the completion
  bool repeat = false;  // ok, but the same completion was stored before: nothing changed now
};

enum class CancelOutcome { not_found, already_final, cancelled, stop_requested };

// A module in the catalog (cairn-control module add): where it lives and who may sign it.
struct ModuleRecord {
  std::string name;
  std::string version;
  std::string reference;        // registry/repo@sha256:... of its OCI manifest
  std::string manifest_digest;  // sha256:<hex> of the module manifest
  std::int64_t priority = 0;
  std::string trust_json = "{}";  // trust policy: allowed public keys for this name
  std::int64_t added_at_ms = 0;
  // modules (h-modctl): the module manifest as added (verified against trust_json when added:
  // name, version, size, sha256, fs-verity digest, dependencies) and the required flag.
  std::string manifest_json{};
  bool required = false;
};

// An assignment: a module version for one node or for every node whose labels match.
struct AssignmentRecord {
  std::string id;  // UUID
  std::string module_name;
  std::string module_version;
  std::optional<std::string> node_id;
  Labels selector;
  std::int64_t created_at_ms = 0;
};

// modules (h-policystore): the signed module trust policy, one per cluster (every replica serves
// the same). `document` is the signed document as served (JSON text); `policy_text` is the
// signed text inside it, which "identical content" compares (a re-signature of the same text
// by another policy key is the same policy).
struct ModulePolicyRecord {
  std::int64_t version = 0;  // >= 1
  std::string policy_text;
  std::string document;
  std::int64_t set_at_ms = 0;
};

// What put_module_policy did. refused: the stored policy has a higher version, or the same
// version with other policy_text; stored_version is then the one that refused it (else the
// version just stored).
struct ModulePolicyPut {
  bool stored = false;
  std::int64_t stored_version = 0;
};

}  // namespace cairn::control
