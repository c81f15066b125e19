// PostgreSQL: the task queue (submit, lease with SKIP LOCKED, extend, complete with fencing,
// expiry, cancel, prune).
#include "control/store/postgres_internal.hpp"

namespace cairn::control::postgres_internal {

namespace {

// Every task column but the output (list_tasks leaves it out; find_task adds it last).
constexpr const char* kTaskColumns =
    "id, seq, kind, args, node_id, selector::text, capabilities::text, min_cpu, min_mem, min_disk, "
    "timeout_s, max_attempts, serial_key, idempotency_key, state, attempts, fence, leased_by, "
    "lease_expires_ms, not_before_ms, cancel_requested, created_at_ms, updated_at_ms, started_at_ms, "
    "finished_at_ms, exit_code, last_reason, last_error, output_truncated, output_bytes";
constexpr int kTaskOutputColumn = 30;

TaskRecord task_from(const Rows& q, int r) {
  TaskRecord t;
  t.id = q.text(r, 0);
  t.seq = q.int64(r, 1);
  t.kind = q.text(r, 2);
  t.args_json = q.text(r, 3);
  t.node_id = q.opt_text(r, 4);
  t.selector = labels_from(q.text(r, 5));
  t.capabilities = strings_from(q.text(r, 6));
  t.min = {q.int64(r, 7), q.int64(r, 8), q.int64(r, 9)};
  t.timeout_s = q.int64(r, 10);
  t.max_attempts = q.int64(r, 11);
  t.serial_key = q.opt_text(r, 12);
  t.idempotency_key = q.opt_text(r, 13);
  t.state = protocol::task_state_from(q.text(r, 14)).value_or(TaskState::queued);
  t.attempts = q.int64(r, 15);
  t.fence = q.int64(r, 16);
  t.leased_by = q.opt_text(r, 17);
  t.lease_expires_ms = q.opt_int64(r, 18);
  t.not_before_ms = q.int64(r, 19);
  t.cancel_requested = q.boolean(r, 20);
  t.created_at_ms = q.int64(r, 21);
  t.updated_at_ms = q.int64(r, 22);
  t.started_at_ms = q.opt_int64(r, 23);
  t.finished_at_ms = q.opt_int64(r, 24);
  if (!q.is_null(r, 25)) t.exit_code = static_cast<int>(q.int64(r, 25));
  if (!q.is_null(r, 26)) t.last_reason = protocol::failure_reason_from(q.text(r, 26));
  t.last_error = q.text(r, 27);
  t.output_truncated = q.boolean(r, 28);
  t.output_bytes = q.int64(r, 29);
  return t;
}

// The placement part of a lease, shared by lease_tasks and has_work. Parameters: $1 node id,
// $2 labels (jsonb object), $3 capabilities (jsonb array), $4 now, $5..$7 the budget (cpu,
// mem, disk). A task is a candidate when queued, due, addressed to the node or matching its
// labels and capabilities, the oldest open task of its serial key, and it fits the budget
// alone (with what the node holds already).
constexpr const char* kHeldSql = R"sql(
held AS (
  SELECT COALESCE(SUM(min_cpu), 0) AS cpu, COALESCE(SUM(min_mem), 0) AS mem,
         COALESCE(SUM(min_disk), 0) AS disk
  FROM tasks WHERE leased_by = $1::text AND state IN ('leased', 'running')))sql";
constexpr const char* kCandidateWhere = R"sql(
  t.state = 'queued' AND t.not_before_ms <= $4::bigint
  AND (t.node_id = $1::text
       OR (t.node_id IS NULL AND t.selector <@ $2::jsonb AND t.capabilities <@ $3::jsonb))
  AND (t.serial_key IS NULL OR NOT EXISTS (
         SELECT 1 FROM tasks o WHERE o.serial_key = t.serial_key AND o.seq < t.seq
         AND o.state IN ('queued', 'leased', 'running')))
  AND h.cpu + t.min_cpu <= $5::bigint AND h.mem + t.min_mem <= $6::bigint
  AND h.disk + t.min_disk <= $7::bigint)sql";

}  // namespace

Result<std::map<std::string, std::int64_t>> PostgresStore::count_tasks() {
  auto rows = run("SELECT state, count(*) FROM tasks GROUP BY state", Params());
  if (!rows) return fail(rows.error());
  std::map<std::string, std::int64_t> out;
  for (auto st : {"queued", "leased", "running", "succeeded", "failed", "dead", "cancelled"}) out[st] = 0;
  for (int r = 0; r < rows->size(); ++r) out[rows->text(r, 0)] = rows->int64(r, 1);
  return out;
}

Result<SubmitOutcome> PostgresStore::submit_task(const TaskRecord& t) {
  Params p;
  p.add(t.id).add(t.kind).add(t.args_json).add(t.node_id).add(labels_text(t.selector));
  p.add(strings_text(t.capabilities)).add(t.min.cpu_millis).add(t.min.mem_bytes).add(t.min.disk_bytes);
  p.add(t.timeout_s).add(t.max_attempts).add(t.serial_key).add(t.idempotency_key);
  p.add(protocol::task_state_name(t.state)).add(t.not_before_ms).add(t.created_at_ms);
  p.add(t.updated_at_ms == 0 ? t.created_at_ms : t.updated_at_ms);
  auto inserted = run(std::string(R"sql(
INSERT INTO tasks (id, kind, args, node_id, selector, capabilities, min_cpu, min_mem, min_disk,
  timeout_s, max_attempts, serial_key, idempotency_key, state, not_before_ms, created_at_ms,
  updated_at_ms)
VALUES ($1::text, $2::text, $3::text, $4::text, $5::jsonb, $6::jsonb, $7::bigint, $8::bigint, $9::bigint,
  $10::bigint, $11::bigint, $12::text, $13::text, $14::text, $15::bigint, $16::bigint, $17::bigint)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING )sql") + kTaskColumns,
                      p);
  if (!inserted) return fail(inserted.error());
  if (!inserted->empty()) return SubmitOutcome{task_from(*inserted, 0), true};
  // The key is taken: the task it names, unchanged (the other insert has committed: ON
  // CONFLICT waited for it).
  auto existing = run(std::string("SELECT ") + kTaskColumns + " FROM tasks WHERE idempotency_key = $1::text",
                      Params().add(t.idempotency_key));
  if (!existing) return fail(existing.error());
  if (existing->empty()) {
    return fail(Errc::temporary, "task with idempotency key '" + t.idempotency_key.value_or("") +
                                     "' was being submitted concurrently and then vanished",
                "submit again");
  }
  return SubmitOutcome{task_from(*existing, 0), false};
}

// One statement: the batch travels as one jsonb array, inserted in its order (seq follows
// it); an idempotency key already stored (or earlier in the batch) inserts nothing and the
// task it names is read back, as submit_task does.
Result<std::vector<SubmitOutcome>> PostgresStore::submit_tasks(std::span<const TaskRecord> tasks) {
  std::vector<SubmitOutcome> out;
  if (tasks.empty()) return out;
  Json rows = Json::array();
  std::int64_t ord = 0;
  for (const auto& t : tasks) {
    rows.push_back({{"ord", ord++},
                    {"id", no_nul(t.id)},
                    {"kind", no_nul(t.kind)},
                    {"args", no_nul(t.args_json)},
                    {"node_id", t.node_id ? Json(no_nul(*t.node_id)) : Json(nullptr)},
                    {"selector", Json(t.selector)},
                    {"capabilities", Json(t.capabilities)},
                    {"min_cpu", t.min.cpu_millis},
                    {"min_mem", t.min.mem_bytes},
                    {"min_disk", t.min.disk_bytes},
                    {"timeout_s", t.timeout_s},
                    {"max_attempts", t.max_attempts},
                    {"serial_key", t.serial_key ? Json(no_nul(*t.serial_key)) : Json(nullptr)},
                    {"idempotency_key", t.idempotency_key ? Json(no_nul(*t.idempotency_key)) : Json(nullptr)},
                    {"state", protocol::task_state_name(t.state)},
                    {"not_before_ms", t.not_before_ms},
                    {"created_at_ms", t.created_at_ms},
                    {"updated_at_ms", t.updated_at_ms == 0 ? t.created_at_ms : t.updated_at_ms}});
  }
  auto inserted = run_retrying(std::string(R"sql(
INSERT INTO tasks (id, kind, args, node_id, selector, capabilities, min_cpu, min_mem, min_disk,
  timeout_s, max_attempts, serial_key, idempotency_key, state, not_before_ms, created_at_ms,
  updated_at_ms)
SELECT id, kind, args, node_id, COALESCE(selector, '{}'), COALESCE(capabilities, '[]'), min_cpu, min_mem,
  min_disk, timeout_s, max_attempts, serial_key, idempotency_key, state, not_before_ms, created_at_ms,
  updated_at_ms
FROM jsonb_to_recordset($1::jsonb) AS x(ord bigint, id text, kind text, args text, node_id text, selector jsonb,
  capabilities jsonb, min_cpu bigint, min_mem bigint, min_disk bigint, timeout_s bigint, max_attempts bigint,
  serial_key text, idempotency_key text, state text, not_before_ms bigint, created_at_ms bigint,
  updated_at_ms bigint)
ORDER BY ord
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING )sql") + kTaskColumns,
                               Params().add(dump_json(rows)));
  if (!inserted) return fail(inserted.error());
  std::unordered_map<std::string, int> by_id;
  for (int r = 0; r < inserted->size(); ++r) by_id.emplace(inserted->text(r, 0), r);
  // The keys that inserted nothing: the tasks they name, read back in one query.
  Json keys = Json::array();
  for (const auto& t : tasks) {
    if (!by_id.contains(no_nul(t.id)) && t.idempotency_key) keys.push_back(no_nul(*t.idempotency_key));
  }
  std::unordered_map<std::string, TaskRecord> by_key;
  if (!keys.empty()) {
    auto existing = run(std::string("SELECT ") + kTaskColumns +
                            " FROM tasks WHERE idempotency_key IN (SELECT jsonb_array_elements_text($1::jsonb))",
                        Params().add(dump_json(keys)));
    if (!existing) return fail(existing.error());
    for (int r = 0; r < existing->size(); ++r) {
      auto t = task_from(*existing, r);
      const std::string key = t.idempotency_key.value_or("");
      by_key.emplace(key, std::move(t));
    }
  }
  out.reserve(tasks.size());
  for (const auto& t : tasks) {
    if (auto it = by_id.find(no_nul(t.id)); it != by_id.end()) {
      out.push_back(SubmitOutcome{task_from(*inserted, it->second), true});
      by_id.erase(it);  // the same id twice in a batch: the second is the existing task
      if (t.idempotency_key) by_key.emplace(no_nul(*t.idempotency_key), out.back().task);
      continue;
    }
    auto it = t.idempotency_key ? by_key.find(no_nul(*t.idempotency_key)) : by_key.end();
    if (it == by_key.end()) {
      return fail(Errc::temporary, "task " + t.id + " (idempotency key '" + t.idempotency_key.value_or("") +
                                       "') of a batch: neither inserted nor found",
                  "submit the batch again");
    }
    out.push_back(SubmitOutcome{it->second, false});
  }
  return out;
}

// One statement per round: the completions travel as one jsonb array; the rows of their
// tasks are locked in id order (two batches never wait on each other in a cycle); each
// completion is decided as complete_task decides one. A task named twice in a batch is
// completed in a second round (its repeat then answers as a repeat does).
// Each table is reached through its key whatever the planner thinks of it: `id =
// ANY (ARRAY(ids))` is an index scan for any size of table (tasks_pkey, or
// task_attempts_by_fence on its first column). Joined to the jsonb rows instead, the planner
// of a young table (no statistics yet, the generic plan of a prepared statement, 100 rows
// guessed for jsonb_to_recordset) chose sequential scans of both tables, or an index scan
// on the fence alone: 15-55 ms and 2,600-8,700 pages per batch of 10 at 20,000 tasks, the
// most of the benchmark's database time.
// The outcome of this node's attempt at this fence as it is now. The completion statement reads
// `prev` with the snapshot it took when it started, before it waited for the task's row lock:
// when another replica held that lock to complete the same attempt (the node's first try, whose
// answer was lost with that replica), `cur` shows the task finished while `prev` still shows the
// attempt open. A statement of its own then sees the committed outcome, so the retry is
// answered as the repeat it is instead of as a stale fence.
std::string PostgresStore::settled_outcome(const TaskCompletion& c, TaskState stored, std::string seen) {
  if (!seen.empty() || stored == TaskState::leased || stored == TaskState::running) return seen;
  auto again = run("SELECT outcome FROM task_attempts WHERE task_id = $1::text AND fence = $2::bigint AND node_id = $3::text",
                   Params().add(c.task_id).add(c.fence).add(c.node_id));
  if (!again || again->empty() || again->is_null(0, 0)) return seen;
  return again->text(0, 0);
}

Result<std::vector<CompleteOutcome>> PostgresStore::complete_tasks(std::span<const TaskCompletion> completions) {
  std::vector<CompleteOutcome> out(completions.size());
  std::vector<std::size_t> pending(completions.size());
  for (std::size_t i = 0; i < pending.size(); ++i) pending[i] = i;
  while (!pending.empty()) {
    std::vector<std::size_t> round, later;
    std::unordered_map<std::string, bool> seen;
    for (auto i : pending) (seen.emplace(completions[i].task_id, true).second ? round : later).push_back(i);
    Json rows = Json::array();
    for (auto i : round) {
      const auto& c = completions[i];
      std::optional<FailureReason> reason = c.reason;
      if (c.outcome != "succeeded" && c.outcome != "cancelled" && !reason) reason = FailureReason::internal;
      Json reason_text = nullptr;
      if (reason && c.outcome != "succeeded") reason_text = std::string(protocol::failure_reason_name(*reason));
      rows.push_back({{"ord", static_cast<std::int64_t>(i)},
                      {"id", no_nul(c.task_id)},
                      {"fence", c.fence},
                      {"node", no_nul(c.node_id)},
                      {"now", c.now_ms},
                      {"outcome", no_nul(c.outcome)},
                      {"transient", reason && protocol::failure_transient(*reason)},
                      {"not_before", c.retry_not_before_ms},
                      {"exit_code", c.exit_code ? Json(*c.exit_code) : Json(nullptr)},
                      {"reason", reason_text},
                      {"error", no_nul(c.error)},
                      {"output", hex_encode(c.output)},
                      {"truncated", c.output_truncated},
                      {"bytes", c.output_bytes}});
    }
    auto result = run_retrying(R"sql(
WITH c AS (
  SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(ord bigint, id text, fence bigint, node text, now bigint,
    outcome text, transient boolean, not_before bigint, exit_code integer, reason text, error text, output text,
    truncated boolean, bytes bigint)),
cur AS (
  SELECT t.id, t.state, t.fence, t.leased_by, t.attempts, t.max_attempts, t.cancel_requested FROM tasks t
  WHERE t.id = ANY (ARRAY(SELECT id FROM c)) ORDER BY t.id FOR UPDATE OF t),
prev AS (
  SELECT c.ord, a.outcome, a.node_id FROM c JOIN task_attempts a ON a.task_id = c.id AND a.fence = c.fence
  WHERE a.task_id = ANY (ARRAY(SELECT id FROM c))),
nxt AS (
  SELECT c.ord, c.id, CASE WHEN c.outcome = 'succeeded' THEN 'succeeded'
                           WHEN c.outcome = 'cancelled' OR cur.cancel_requested THEN 'cancelled'
                           WHEN NOT c.transient THEN 'failed'
                           WHEN cur.attempts < cur.max_attempts THEN 'queued'
                           ELSE 'dead' END AS state
  FROM c JOIN cur ON cur.id = c.id JOIN prev ON prev.ord = c.ord
  WHERE cur.fence = c.fence AND cur.leased_by = c.node AND cur.state IN ('leased', 'running')
    AND prev.outcome = '' AND prev.node_id = c.node),
upd AS (
  UPDATE tasks t SET state = nxt.state, updated_at_ms = c.now,
    finished_at_ms = CASE WHEN nxt.state = 'queued' THEN NULL ELSE c.now END,
    leased_by = CASE WHEN nxt.state = 'queued' THEN NULL ELSE t.leased_by END,
    not_before_ms = CASE WHEN nxt.state = 'queued' THEN c.not_before ELSE t.not_before_ms END,
    lease_expires_ms = NULL, exit_code = c.exit_code, last_reason = c.reason, last_error = c.error,
    output = decode(c.output, 'hex'), output_truncated = c.truncated, output_bytes = c.bytes
  FROM nxt JOIN c ON c.ord = nxt.ord WHERE t.id = nxt.id AND t.id = ANY (ARRAY(SELECT id FROM nxt))),
att AS (
  UPDATE task_attempts a SET finished_at_ms = c.now, outcome = c.outcome, reason = c.reason,
    exit_code = c.exit_code, error = c.error
  FROM nxt JOIN c ON c.ord = nxt.ord
  WHERE a.task_id = nxt.id AND a.fence = c.fence AND a.task_id = ANY (ARRAY(SELECT id FROM nxt)))
SELECT c.ord, cur.state, prev.outcome, nxt.state, prev.node_id
FROM c LEFT JOIN cur ON cur.id = c.id LEFT JOIN prev ON prev.ord = c.ord LEFT JOIN nxt ON nxt.ord = c.ord
ORDER BY c.ord)sql",
                               Params().add(dump_json(rows)));
    if (!result) return fail(result.error());
    for (int r = 0; r < result->size(); ++r) {
      const auto i = static_cast<std::size_t>(result->int64(r, 0));
      if (i >= out.size()) continue;
      const auto& c = completions[i];
      if (result->is_null(r, 1)) {
        out[i] = CompleteOutcome{FenceCheck::not_found, TaskState::queued};
        continue;
      }
      const auto stored = protocol::task_state_from(result->text(r, 1)).value_or(TaskState::queued);
      if (!result->is_null(r, 3)) {
        out[i] = CompleteOutcome{FenceCheck::ok, protocol::task_state_from(result->text(r, 3)).value_or(TaskState::queued)};
      } else if (result->is_null(r, 4) || result->text(r, 4) != c.node_id) {
        out[i] = CompleteOutcome{FenceCheck::stale, stored};
      } else {
        const std::string previous = settled_outcome(c, stored, result->text(r, 2));
        if (previous == c.outcome) {
          out[i] = CompleteOutcome{FenceCheck::ok, stored, true};
        } else if (previous.empty() || previous == "lease_lost") {
          out[i] = CompleteOutcome{FenceCheck::stale, stored};
        } else {
          out[i] = CompleteOutcome{FenceCheck::finished, stored};
        }
      }
    }
    pending = std::move(later);
  }
  return out;
}

Result<std::optional<TaskRecord>> PostgresStore::find_task(std::string_view id) {
  auto rows = run(std::string("SELECT ") + kTaskColumns + ", output FROM tasks WHERE id = $1::text", Params().add(id));
  if (!rows) return fail(rows.error());
  if (rows->empty()) return std::optional<TaskRecord>{};
  auto t = task_from(*rows, 0);
  t.output = bytea_value(rows->text(0, kTaskOutputColumn));
  return std::optional<TaskRecord>(std::move(t));
}

Result<std::vector<TaskRecord>> PostgresStore::list_tasks(const TaskQuery& query) {
  std::optional<std::string> state;
  if (query.state) state = std::string(protocol::task_state_name(*query.state));
  auto rows = run(std::string("SELECT ") + kTaskColumns +
                      " FROM tasks WHERE ($1::text IS NULL OR state = $1::text) AND ($2::text IS NULL OR "
                      "node_id = $2::text OR leased_by = $2::text) ORDER BY seq DESC LIMIT $3::bigint",
                  Params().add(state).add(query.node_id).add(query.limit));
  if (!rows) return fail(rows.error());
  return collect(*rows, task_from);
}

Result<std::vector<TaskAttemptRecord>> PostgresStore::list_task_attempts(std::string_view task_id) {
  auto rows = run(std::string("SELECT ") + kAttemptColumns + " FROM task_attempts WHERE task_id = $1::text ORDER BY attempt",
                  Params().add(task_id));
  if (!rows) return fail(rows.error());
  return collect(*rows, attempt_from);
}

// One statement: the candidates (a window of the oldest that may run here) are locked with
// FOR UPDATE SKIP LOCKED, so a task another replica is leasing right now is skipped, never
// waited for nor leased twice; a recursive walk in submission order takes each one whose
// reservation still fits the budget (with what the node holds and what it took before),
// up to max_tasks; those are updated and their attempt rows inserted.
// The candidates come from two walks on tasks_queued_by_node, each in submission order:
// the tasks addressed to this node, and those addressed to none. Tasks waiting for other
// nodes are never read (one scan of the whole queue filtering node ids would read them).
Result<std::vector<TaskRecord>> PostgresStore::lease_tasks(const LeaseQuery& q) {
  if (q.max_tasks <= 0) return std::vector<TaskRecord>{};
  // ORDER BY node_id first (one value in each walk): the planner then walks the index in
  // its order; by seq alone it would scan tasks_queued and filter out other nodes' tasks.
  // The window (each candidate fits the budget alone; the walk then sums them) is kept
  // small: every row locked and not taken is one more row the other leases skip.
  const std::string window = " ORDER BY t.node_id, t.seq LIMIT $8::bigint * 2 + 4 FOR UPDATE OF t SKIP LOCKED)";
  const std::string sql = std::string("WITH RECURSIVE ") + kHeldSql + R"sql(,
mine AS (
  SELECT t.id, t.seq, t.min_cpu, t.min_mem, t.min_disk FROM tasks t, held h
  WHERE t.node_id = $1::text AND )sql" + kCandidateWhere + window + R"sql(,
anyone AS (
  SELECT t.id, t.seq, t.min_cpu, t.min_mem, t.min_disk FROM tasks t, held h
  WHERE t.node_id IS NULL AND )sql" + kCandidateWhere + window + R"sql(,
cand0 AS (SELECT * FROM mine UNION ALL SELECT * FROM anyone),
cand AS (SELECT cand0.*, row_number() OVER (ORDER BY seq) AS rn FROM cand0),
walk AS (
  SELECT 0::bigint AS rn, NULL::text AS id, h.cpu, h.mem, h.disk, false AS taken, 0::bigint AS n FROM held h
  UNION ALL
  SELECT c.rn, c.id,
    w.cpu + CASE WHEN w.cpu + c.min_cpu <= $5::bigint AND w.mem + c.min_mem <= $6::bigint
                      AND w.disk + c.min_disk <= $7::bigint THEN c.min_cpu ELSE 0 END,
    w.mem + CASE WHEN w.cpu + c.min_cpu <= $5::bigint AND w.mem + c.min_mem <= $6::bigint
                      AND w.disk + c.min_disk <= $7::bigint THEN c.min_mem ELSE 0 END,
    w.disk + CASE WHEN w.cpu + c.min_cpu <= $5::bigint AND w.mem + c.min_mem <= $6::bigint
                       AND w.disk + c.min_disk <= $7::bigint THEN c.min_disk ELSE 0 END,
    w.cpu + c.min_cpu <= $5::bigint AND w.mem + c.min_mem <= $6::bigint AND w.disk + c.min_disk <= $7::bigint,
    w.n + CASE WHEN w.cpu + c.min_cpu <= $5::bigint AND w.mem + c.min_mem <= $6::bigint
                    AND w.disk + c.min_disk <= $7::bigint THEN 1 ELSE 0 END
  FROM walk w JOIN cand c ON c.rn = w.rn + 1
  WHERE w.n < $8::bigint),
fit AS (SELECT id FROM walk WHERE taken),
leased AS (
  UPDATE tasks t SET state = 'leased', leased_by = $1::text, fence = t.fence + 1,
    attempts = t.attempts + 1, lease_expires_ms = $4::bigint + $9::bigint, updated_at_ms = $4::bigint,
    started_at_ms = NULL
  FROM fit WHERE t.id = fit.id
  RETURNING t.*),
attempt AS (
  INSERT INTO task_attempts (task_id, attempt, fence, node_id, leased_at_ms)
  SELECT id, attempts, fence, $1::text, $4::bigint FROM leased)
SELECT )sql" + kTaskColumns + " FROM leased ORDER BY seq";
  Params p;
  p.add(q.node_id).add(labels_text(q.labels)).add(strings_text(q.capabilities)).add(q.now_ms);
  p.add(q.budget.cpu_millis).add(q.budget.mem_bytes).add(q.budget.disk_bytes);
  p.add(q.max_tasks).add(q.lease_ms);
  auto rows = run_retrying(sql, p);
  if (!rows) return fail(rows.error());
  return collect(*rows, task_from);
}

Result<std::vector<TaskRecord>> PostgresStore::queued_heads(std::int64_t limit) {
  auto rows = run(std::string("SELECT ") + kTaskColumns +
                      " FROM tasks t WHERE state = 'queued' AND (t.serial_key IS NULL OR NOT EXISTS ("
                      "SELECT 1 FROM tasks o WHERE o.serial_key = t.serial_key AND o.seq < t.seq "
                      "AND o.state IN ('queued', 'leased', 'running'))) ORDER BY seq LIMIT $1::bigint",
                  Params().add(limit));
  if (!rows) return fail(rows.error());
  return collect(*rows, task_from);
}

Result<bool> PostgresStore::has_work(const LeaseQuery& q) {
  const std::string sql = std::string("WITH ") + kHeldSql +
                          "\nSELECT EXISTS (SELECT 1 FROM tasks t, held h WHERE " + kCandidateWhere + ")";
  Params p;
  p.add(q.node_id).add(labels_text(q.labels)).add(strings_text(q.capabilities)).add(q.now_ms);
  p.add(q.budget.cpu_millis).add(q.budget.mem_bytes).add(q.budget.disk_bytes);
  auto rows = run(sql, p);
  if (!rows) return fail(rows.error());
  return !rows->empty() && rows->boolean(0, 0);
}

Result<ExtendOutcome> PostgresStore::extend_lease(std::string_view task_id, std::string_view node_id, std::int64_t fence,
                                   std::int64_t lease_ms, std::int64_t now_ms, bool running) {
  auto rows = run_retrying(R"sql(
WITH ext AS (
  UPDATE tasks SET lease_expires_ms = $5::bigint + $4::bigint, updated_at_ms = $5::bigint,
    state = CASE WHEN $6::boolean AND state = 'leased' THEN 'running' ELSE state END,
    started_at_ms = CASE WHEN $6::boolean AND state = 'leased' THEN $5::bigint ELSE started_at_ms END
  WHERE id = $1::text AND leased_by = $2::text AND fence = $3::bigint AND state IN ('leased', 'running')
    AND lease_expires_ms > $5::bigint
  RETURNING id, fence, started_at_ms, cancel_requested),
att AS (
  UPDATE task_attempts a SET started_at_ms = ext.started_at_ms FROM ext
  WHERE a.task_id = ext.id AND a.fence = ext.fence AND ext.started_at_ms IS NOT NULL
    AND a.started_at_ms IS DISTINCT FROM ext.started_at_ms)
SELECT 'ok', cancel_requested FROM ext
UNION ALL
SELECT CASE WHEN fence <> $3::bigint OR leased_by IS DISTINCT FROM $2::text THEN 'stale'
            WHEN state IN ('succeeded', 'failed', 'dead', 'cancelled') THEN 'finished'
            ELSE 'stale' END, cancel_requested
FROM tasks WHERE id = $1::text AND NOT EXISTS (SELECT 1 FROM ext))sql",
                           Params().add(task_id).add(node_id).add(fence).add(lease_ms).add(now_ms).add(running));
  if (!rows) return fail(rows.error());
  if (rows->empty()) return ExtendOutcome{FenceCheck::not_found, false};
  const std::string check = rows->text(0, 0);
  const FenceCheck fc = check == "ok" ? FenceCheck::ok : check == "finished" ? FenceCheck::finished : FenceCheck::stale;
  return ExtendOutcome{fc, rows->boolean(0, 1)};
}

// One statement: the task row is locked, the attempt of this fence read; only the current
// leaseholder with the current fence changes anything. The next state is decided here: a
// transient failure with attempts left goes back to the queue (not before the backoff the
// service chose), a permanent one fails, the last transient one is dead.
Result<CompleteOutcome> PostgresStore::complete_task(const TaskCompletion& c) {
  std::optional<FailureReason> reason = c.reason;
  if (c.outcome != "succeeded" && c.outcome != "cancelled" && !reason) reason = FailureReason::internal;
  std::optional<std::string> reason_text;
  if (reason && c.outcome != "succeeded") reason_text = std::string(protocol::failure_reason_name(*reason));
  const bool transient = reason && protocol::failure_transient(*reason);
  Params p;
  p.add(c.task_id).add(c.fence).add(c.node_id).add(c.now_ms).add(c.outcome).add(transient);
  p.add(c.retry_not_before_ms).add(c.exit_code ? std::optional<std::int64_t>(*c.exit_code) : std::nullopt);
  p.add(reason_text).add(c.error).raw(bytea_param(c.output)).add(c.output_truncated).add(c.output_bytes);
  auto rows = run_retrying(R"sql(
WITH cur AS (
  SELECT id, state, fence, leased_by, attempts, max_attempts, cancel_requested FROM tasks
  WHERE id = $1::text FOR UPDATE),
prev AS (
  SELECT outcome, node_id FROM task_attempts WHERE task_id = $1::text AND fence = $2::bigint),
nxt AS (
  SELECT id, CASE WHEN $5::text = 'succeeded' THEN 'succeeded'
                  WHEN $5::text = 'cancelled' OR cancel_requested THEN 'cancelled'
                  WHEN NOT $6::boolean THEN 'failed'
                  WHEN attempts < max_attempts THEN 'queued'
                  ELSE 'dead' END AS state
  FROM cur
  WHERE fence = $2::bigint AND leased_by = $3::text AND state IN ('leased', 'running')
    AND EXISTS (SELECT 1 FROM prev WHERE outcome = '' AND node_id = $3::text)),
upd AS (
  UPDATE tasks t SET state = nxt.state, updated_at_ms = $4::bigint,
    finished_at_ms = CASE WHEN nxt.state = 'queued' THEN NULL ELSE $4::bigint END,
    leased_by = CASE WHEN nxt.state = 'queued' THEN NULL ELSE t.leased_by END,
    not_before_ms = CASE WHEN nxt.state = 'queued' THEN $7::bigint ELSE t.not_before_ms END,
    lease_expires_ms = NULL, exit_code = $8::integer, last_reason = $9::text, last_error = $10::text,
    output = $11::bytea, output_truncated = $12::boolean, output_bytes = $13::bigint
  FROM nxt WHERE t.id = nxt.id),
att AS (
  UPDATE task_attempts a SET finished_at_ms = $4::bigint, outcome = $5::text, reason = $9::text,
    exit_code = $8::integer, error = $10::text
  FROM nxt WHERE a.task_id = nxt.id AND a.fence = $2::bigint)
SELECT (SELECT state FROM cur), (SELECT outcome FROM prev), (SELECT state FROM nxt),
  (SELECT node_id FROM prev))sql",
                           p);
  if (!rows) return fail(rows.error());
  if (rows->empty() || rows->is_null(0, 0)) return CompleteOutcome{FenceCheck::not_found, TaskState::queued};
  const auto stored = protocol::task_state_from(rows->text(0, 0)).value_or(TaskState::queued);
  if (!rows->is_null(0, 2)) {
    return CompleteOutcome{FenceCheck::ok, protocol::task_state_from(rows->text(0, 2)).value_or(TaskState::queued)};
  }
  // No attempt of this fence by this node: someone else's lease.
  if (rows->is_null(0, 3) || rows->text(0, 3) != c.node_id) return CompleteOutcome{FenceCheck::stale, stored};
  // This fence's attempt already ended: the same outcome again is answered as before.
  const std::string previous = settled_outcome(c, stored, rows->text(0, 1));
  if (previous == c.outcome) return CompleteOutcome{FenceCheck::ok, stored, true};
  if (previous.empty() || previous == "lease_lost") return CompleteOutcome{FenceCheck::stale, stored};
  return CompleteOutcome{FenceCheck::finished, stored};
}

Result<std::vector<TaskRecord>> PostgresStore::expire_leases(std::int64_t now_ms,
                                              const std::function<std::int64_t(std::int64_t)>& backoff_ms) {
  return in_tx([&](Conn& conn) -> Result<std::vector<TaskRecord>> {
    // Replicas sweeping at once split the expired leases between them (SKIP LOCKED).
    auto expired = exec(conn,
                        "SELECT id, fence, attempts, max_attempts, cancel_requested FROM tasks "
                        "WHERE state IN ('leased', 'running') AND lease_expires_ms <= $1::bigint "
                        "ORDER BY seq LIMIT 1000 FOR UPDATE SKIP LOCKED",
                        Params().add(now_ms));
    if (!expired) return fail(expired.error());
    if (expired->empty()) return rollback(conn, std::vector<TaskRecord>{});
    Json changes = Json::array();
    for (int r = 0; r < expired->size(); ++r) {
      const std::int64_t attempts = expired->int64(r, 2);
      const bool cancelled = expired->boolean(r, 4);
      const bool dead = attempts >= expired->int64(r, 3);
      const TaskState next = cancelled ? TaskState::cancelled : dead ? TaskState::dead : TaskState::queued;
      changes.push_back({{"id", expired->text(r, 0)},
                         {"fence", expired->int64(r, 1)},
                         {"state", protocol::task_state_name(next)},
                         {"final", protocol::task_state_final(next)},
                         {"not_before", next == TaskState::queued ? now_ms + backoff_ms(attempts) : 0}});
    }
    Params p;
    p.add(dump_json(changes)).add(now_ms).add(protocol::failure_reason_name(FailureReason::lease_lost));
    auto rows = exec(conn, std::string(R"sql(
WITH ch AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id text, fence bigint, state text, final boolean,
                                                            not_before bigint)),
att AS (
  UPDATE task_attempts a SET finished_at_ms = $2::bigint, outcome = 'lease_lost', reason = $3::text,
    error = 'the lease of node ' || a.node_id || ' expired'
  FROM ch WHERE a.task_id = ch.id AND a.fence = ch.fence AND a.outcome = ''),
upd AS (
  UPDATE tasks t SET state = ch.state, updated_at_ms = $2::bigint, lease_expires_ms = NULL,
    leased_by = CASE WHEN ch.final THEN t.leased_by ELSE NULL END,
    finished_at_ms = CASE WHEN ch.final THEN $2::bigint ELSE NULL END,
    not_before_ms = CASE WHEN ch.final THEN t.not_before_ms ELSE ch.not_before END,
    last_reason = $3::text, exit_code = NULL,
    last_error = 'attempt ' || t.attempts || ': the lease of node ' || COALESCE(t.leased_by, '?') ||
                 ' expired before it completed'
  FROM ch WHERE t.id = ch.id
  RETURNING t.*)
SELECT )sql") + kTaskColumns + " FROM upd ORDER BY seq",
                     p);
    if (!rows) return fail(rows.error());
    return collect(*rows, task_from);
  });
}

Result<CancelOutcome> PostgresStore::cancel_task(std::string_view task_id, std::int64_t now_ms) {
  auto rows = run_retrying(R"sql(
WITH cur AS (SELECT id, state FROM tasks WHERE id = $1::text FOR UPDATE),
upd AS (
  UPDATE tasks t SET
    state = CASE WHEN cur.state = 'queued' THEN 'cancelled' ELSE t.state END,
    finished_at_ms = CASE WHEN cur.state = 'queued' THEN $2::bigint ELSE t.finished_at_ms END,
    last_error = CASE WHEN cur.state = 'queued' THEN 'cancelled by an operator before it ran' ELSE t.last_error END,
    cancel_requested = true, updated_at_ms = $2::bigint
  FROM cur WHERE t.id = cur.id AND cur.state IN ('queued', 'leased', 'running'))
SELECT state FROM cur)sql",
                           Params().add(task_id).add(now_ms));
  if (!rows) return fail(rows.error());
  if (rows->empty()) return CancelOutcome::not_found;
  const auto state = protocol::task_state_from(rows->text(0, 0)).value_or(TaskState::queued);
  if (state == TaskState::queued) return CancelOutcome::cancelled;
  if (state == TaskState::leased || state == TaskState::running) return CancelOutcome::stop_requested;
  return CancelOutcome::already_final;
}

Result<std::vector<std::string>> PostgresStore::cancelled_among(std::string_view node_id,
                                                 std::span<const std::string> task_ids) {
  if (task_ids.empty()) return std::vector<std::string>{};
  Json ids = Json::array();
  for (const auto& id : task_ids) ids.push_back(id);
  auto rows = run(
      "SELECT t.id FROM jsonb_array_elements_text($2::jsonb) WITH ORDINALITY AS x(id, ord) "
      "JOIN tasks t ON t.id = x.id WHERE t.leased_by = $1::text AND t.cancel_requested ORDER BY x.ord",
      Params().add(node_id).add(dump_json(ids)));
  if (!rows) return fail(rows.error());
  return collect(*rows, [](const Rows& q, int r) { return q.text(r, 0); });
}

Result<std::int64_t> PostgresStore::prune_tasks(std::int64_t older_than_ms, std::int64_t keep_per_node) {
  auto rows = run_retrying(R"sql(
WITH ranked AS (
  SELECT id, finished_at_ms,
         row_number() OVER (PARTITION BY COALESCE(leased_by, node_id, '')
                            ORDER BY finished_at_ms DESC, seq DESC) AS rank
  FROM tasks WHERE state IN ('succeeded', 'failed', 'dead', 'cancelled')),
gone AS (
  DELETE FROM tasks t USING ranked r
  WHERE t.id = r.id AND (r.finished_at_ms < $1::bigint OR r.rank > $2::bigint)
  RETURNING t.id)
SELECT count(*) FROM gone)sql",
                           Params().add(older_than_ms).add(keep_per_node));
  if (!rows) return fail(rows.error());
  return rows->int64(0, 0);
}

}  // namespace cairn::control::postgres_internal
