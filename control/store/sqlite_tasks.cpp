// SQLite: the task queue (submit, lease, extend, complete with fencing, expiry, cancel, prune).
#include "control/store/sqlite_internal.hpp"

namespace cairn::control::sqlite_internal {

namespace {

std::optional<std::int64_t> opt_wide(const std::optional<int>& v) {
  if (!v) return std::nullopt;
  return std::int64_t{*v};
}

constexpr const char* kFinal = "('succeeded', 'failed', 'dead', 'cancelled')";
// A task (aliased t) that is the oldest unfinished one of its serial key, or has none.
constexpr const char* kSerialHead =
    "(t.serial_key IS NULL OR NOT EXISTS (SELECT 1 FROM tasks o WHERE o.serial_key = t.serial_key "
    "AND o.seq < t.seq AND o.state IN ('queued', 'leased', 'running')))";

// Column 30 is the output: the real one for find_task, '' for lists.
constexpr const char* kTaskColumns =
    "seq, id, kind, args, node_id, selector, capabilities, min_cpu_millis, min_mem_bytes, "
    "min_disk_bytes, timeout_s, max_attempts, serial_key, idempotency_key, state, attempts, fence, "
    "leased_by, lease_expires_ms, not_before_ms, cancel_requested, created_at_ms, updated_at_ms, "
    "started_at_ms, finished_at_ms, exit_code, last_reason, last_error, output_truncated, output_bytes";

TaskRecord task_from(const Query& q) {
  TaskRecord t;
  t.seq = q.int64(0);
  t.id = q.text(1);
  t.kind = q.text(2);
  t.args_json = q.text(3);
  if (!q.is_null(4)) t.node_id = q.text(4);
  t.selector = labels_from(q.text(5));
  t.capabilities = strings_from(q.text(6));
  t.min = {q.int64(7), q.int64(8), q.int64(9)};
  t.timeout_s = q.int64(10);
  t.max_attempts = q.int64(11);
  if (!q.is_null(12)) t.serial_key = q.text(12);
  if (!q.is_null(13)) t.idempotency_key = q.text(13);
  t.state = protocol::task_state_from(q.text(14)).value_or(protocol::TaskState::failed);
  t.attempts = q.int64(15);
  t.fence = q.int64(16);
  if (!q.is_null(17)) t.leased_by = q.text(17);
  t.lease_expires_ms = q.opt_int64(18);
  t.not_before_ms = q.int64(19);
  t.cancel_requested = q.int64(20) != 0;
  t.created_at_ms = q.int64(21);
  t.updated_at_ms = q.int64(22);
  t.started_at_ms = q.opt_int64(23);
  t.finished_at_ms = q.opt_int64(24);
  if (!q.is_null(25)) t.exit_code = static_cast<int>(q.int64(25));
  if (!q.is_null(26)) t.last_reason = protocol::failure_reason_from(q.text(26));
  t.last_error = q.text(27);
  t.output_truncated = q.int64(28) != 0;
  t.output_bytes = q.int64(29);
  t.output = q.text(30);
  return t;
}

// Placement checked in memory after SQL narrowed the rows (node id, state, serial key):
// the selector against the node's labels, and the capabilities the task needs.
bool placement_matches(const TaskRecord& t, const LeaseQuery& node) {
  for (const auto& [key, value] : t.selector) {
    auto it = node.labels.find(key);
    if (it == node.labels.end() || it->second != value) return false;
  }
  for (const auto& cap : t.capabilities) {
    if (std::find(node.capabilities.begin(), node.capabilities.end(), cap) == node.capabilities.end()) {
      return false;
    }
  }
  return true;
}

bool fits(const TaskResources& used, const TaskResources& want, const TaskResources& budget) {
  return used.cpu_millis + want.cpu_millis <= budget.cpu_millis &&
         used.mem_bytes + want.mem_bytes <= budget.mem_bytes &&
         used.disk_bytes + want.disk_bytes <= budget.disk_bytes;
}

void add(TaskResources& sum, const TaskResources& more) {
  sum.cpu_millis += more.cpu_millis;
  sum.mem_bytes += more.mem_bytes;
  sum.disk_bytes += more.disk_bytes;
}

}  // namespace

Result<std::map<std::string, std::int64_t>> SqliteStore::count_tasks() {
  std::lock_guard lock(mutex_);
  auto q = query("SELECT state, COUNT(*) FROM tasks GROUP BY state");
  if (!q) return fail(q.error());
  std::map<std::string, std::int64_t> out;
  for (auto s : {"queued", "leased", "running", "succeeded", "failed", "dead", "cancelled"}) out[s] = 0;
  for (;;) {
    auto row = q->step();
    if (!row) return fail(row.error());
    if (!*row) break;
    out[q->text(0)] = q->int64(1);
  }
  return out;
}

Result<SubmitOutcome> SqliteStore::submit_task(const TaskRecord& t) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  auto out = submit_locked(t);
  if (!out) return fail(out.error());
  if (out->created) {
    if (auto ok = tx->commit(); !ok) return fail(ok.error());
  }
  return out;
}

Result<std::vector<SubmitOutcome>> SqliteStore::submit_tasks(std::span<const TaskRecord> tasks) {
  std::lock_guard lock(mutex_);
  std::vector<SubmitOutcome> out;
  if (tasks.empty()) return out;
  out.reserve(tasks.size());
  auto tx = begin();
  if (!tx) return fail(tx.error());
  for (const auto& t : tasks) {
    auto one = submit_locked(t);
    if (!one) return fail(one.error().with_context("task " + t.id + " of a batch of " + std::to_string(tasks.size())));
    out.push_back(std::move(*one));
  }
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return out;
}

// Inside the caller's transaction.
Result<SubmitOutcome> SqliteStore::submit_locked(const TaskRecord& t) {
  if (t.idempotency_key) {
    auto existing = select_task_locked("idempotency_key = ?1", *t.idempotency_key, true);
    if (!existing) return fail(existing.error());
    if (*existing) return SubmitOutcome{std::move(**existing), false};
  }
  auto q = query(
      "INSERT INTO tasks (id, kind, args, node_id, selector, capabilities, min_cpu_millis, "
      "min_mem_bytes, min_disk_bytes, timeout_s, max_attempts, serial_key, idempotency_key, state, "
      "not_before_ms, created_at_ms, updated_at_ms) "
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'queued', ?14, ?15, ?15)");
  if (!q) return fail(q.error());
  q->bind(1, std::string_view(t.id)).bind(2, std::string_view(t.kind)).bind(3, std::string_view(t.args_json));
  q->bind(4, t.node_id).bind(5, std::string_view(labels_text(t.selector)));
  q->bind(6, std::string_view(strings_text(t.capabilities)));
  q->bind(7, t.min.cpu_millis).bind(8, t.min.mem_bytes).bind(9, t.min.disk_bytes);
  q->bind(10, t.timeout_s).bind(11, t.max_attempts).bind(12, t.serial_key).bind(13, t.idempotency_key);
  q->bind(14, t.not_before_ms).bind(15, t.created_at_ms);
  if (auto ok = q->run(); !ok) return fail(ok.error());
  // What was stored: the given fields, the new seq (the rowid) and every other column's default.
  TaskRecord stored;
  stored.id = t.id;
  stored.seq = sqlite3_last_insert_rowid(db_.get());
  stored.kind = t.kind;
  stored.args_json = t.args_json;
  stored.node_id = t.node_id;
  stored.selector = t.selector;
  stored.capabilities = t.capabilities;
  stored.min = t.min;
  stored.timeout_s = t.timeout_s;
  stored.max_attempts = t.max_attempts;
  stored.serial_key = t.serial_key;
  stored.idempotency_key = t.idempotency_key;
  stored.state = protocol::TaskState::queued;
  stored.not_before_ms = t.not_before_ms;
  stored.created_at_ms = t.created_at_ms;
  stored.updated_at_ms = t.created_at_ms;
  return SubmitOutcome{std::move(stored), true};
}

Result<std::optional<TaskRecord>> SqliteStore::find_task(std::string_view id) {
  std::lock_guard lock(mutex_);
  return select_task_locked("id = ?1", id, true);
}

Result<std::vector<TaskRecord>> SqliteStore::list_tasks(const TaskQuery& spec) {
  std::lock_guard lock(mutex_);
  // Two forms: `node_id = ?2 OR leased_by = ?2` alone lets SQLite search both indexes.
  auto q = query(std::string("SELECT ") + kTaskColumns + ", '' FROM tasks WHERE (?1 IS NULL OR state = ?1) AND " +
                 (spec.node_id ? "(node_id = ?2 OR leased_by = ?2)" : "?2 IS NULL") + " ORDER BY seq DESC LIMIT ?3");
  if (!q) return fail(q.error());
  std::optional<std::string> state;
  if (spec.state) state = std::string(protocol::task_state_name(*spec.state));
  q->bind(1, state).bind(2, spec.node_id).bind(3, spec.limit);
  return collect(*q, task_from);
}

Result<std::vector<TaskAttemptRecord>> SqliteStore::list_task_attempts(std::string_view task_id) {
  std::lock_guard lock(mutex_);
  auto q = query(std::string("SELECT ") + kAttemptColumns + " FROM task_attempts WHERE task_id = ?1 ORDER BY attempt");
  if (!q) return fail(q.error());
  q->bind(1, task_id);
  return collect(*q, attempt_from);
}

Result<std::vector<TaskRecord>> SqliteStore::lease_tasks(const LeaseQuery& lq) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  auto picked = pick_locked(lq, lq.max_tasks);
  if (!picked) return fail(picked.error());
  std::vector<TaskRecord> out;
  for (const auto& id : *picked) {
    {
      auto q = query(
          "UPDATE tasks SET state = 'leased', leased_by = ?2, fence = fence + 1, attempts = attempts + 1, "
          "lease_expires_ms = ?3, updated_at_ms = ?4, started_at_ms = NULL WHERE id = ?1 AND state = 'queued'");
      if (!q) return fail(q.error());
      q->bind(1, std::string_view(id)).bind(2, std::string_view(lq.node_id)).bind(3, lq.now_ms + lq.lease_ms);
      q->bind(4, lq.now_ms);
      if (auto ok = q->run(); !ok) return fail(ok.error());
    }
    {
      auto q = query(
          "INSERT INTO task_attempts (task_id, attempt, fence, node_id, leased_at_ms) "
          "SELECT id, attempts, fence, leased_by, ?2 FROM tasks WHERE id = ?1");
      if (!q) return fail(q.error());
      q->bind(1, std::string_view(id)).bind(2, lq.now_ms);
      if (auto ok = q->run(); !ok) return fail(ok.error());
    }
    auto task = select_task_locked("id = ?1", id, false);
    if (!task) return fail(task.error());
    if (*task) out.push_back(std::move(**task));
  }
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return out;
}

Result<bool> SqliteStore::has_work(const LeaseQuery& lq) {
  std::lock_guard lock(mutex_);
  auto picked = pick_locked(lq, 1);
  if (!picked) return fail(picked.error());
  return !picked->empty();
}

Result<std::vector<TaskRecord>> SqliteStore::queued_heads(std::int64_t limit) {
  std::lock_guard lock(mutex_);
  auto q = query(std::string("SELECT ") + kTaskColumns + ", '' FROM tasks t WHERE state = 'queued' AND " +
                 kSerialHead + " ORDER BY seq LIMIT ?1");
  if (!q) return fail(q.error());
  q->bind(1, limit);
  return collect(*q, task_from);
}

Result<ExtendOutcome> SqliteStore::extend_lease(std::string_view task_id, std::string_view node_id, std::int64_t fence,
                                   std::int64_t lease_ms, std::int64_t now_ms, bool running) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  auto t = select_task_locked("id = ?1", task_id, false);
  if (!t) return fail(t.error());
  if (!*t) return ExtendOutcome{FenceCheck::not_found, false};
  const TaskRecord& task = **t;
  if (task.fence != fence || task.leased_by != std::optional<std::string>(node_id)) {
    return ExtendOutcome{FenceCheck::stale, task.cancel_requested};
  }
  if (protocol::task_state_final(task.state)) return ExtendOutcome{FenceCheck::finished, task.cancel_requested};
  if (task.state == protocol::TaskState::queued || task.lease_expires_ms.value_or(0) <= now_ms) {
    return ExtendOutcome{FenceCheck::stale, task.cancel_requested};
  }
  const bool starts = running && task.state == protocol::TaskState::leased;
  {
    auto q = query(
        "UPDATE tasks SET lease_expires_ms = ?2, updated_at_ms = ?3, "
        "state = CASE WHEN ?4 THEN 'running' ELSE state END, "
        "started_at_ms = CASE WHEN ?4 THEN ?3 ELSE started_at_ms END WHERE id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, task_id).bind(2, now_ms + lease_ms).bind(3, now_ms).bind(4, std::int64_t{starts ? 1 : 0});
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  if (starts) {
    auto q = query("UPDATE task_attempts SET started_at_ms = ?3 WHERE task_id = ?1 AND fence = ?2");
    if (!q) return fail(q.error());
    q->bind(1, task_id).bind(2, fence).bind(3, now_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return ExtendOutcome{FenceCheck::ok, task.cancel_requested};
}

Result<CompleteOutcome> SqliteStore::complete_task(const TaskCompletion& c) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  auto out = complete_locked(c);
  if (!out) return fail(out.error());
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return out;
}

Result<std::vector<CompleteOutcome>> SqliteStore::complete_tasks(std::span<const TaskCompletion> completions) {
  std::lock_guard lock(mutex_);
  std::vector<CompleteOutcome> out;
  if (completions.empty()) return out;
  out.reserve(completions.size());
  auto tx = begin();
  if (!tx) return fail(tx.error());
  for (const auto& c : completions) {
    auto one = complete_locked(c);
    if (!one) {
      return fail(one.error().with_context("completion of task " + c.task_id + " in a batch of " +
                                           std::to_string(completions.size())));
    }
    out.push_back(*one);
  }
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return out;
}

// Inside the caller's transaction: an outcome other than ok changes nothing.
Result<CompleteOutcome> SqliteStore::complete_locked(const TaskCompletion& c) {
  using protocol::TaskState;
  auto t = select_task_locked("id = ?1", c.task_id, false);
  if (!t) return fail(t.error());
  if (!*t) return CompleteOutcome{FenceCheck::not_found, TaskState::queued};
  const TaskRecord& task = **t;
  // The attempt this fence names: its outcome, if already reported, decides a repeat.
  std::optional<TaskAttemptRecord> attempt;
  {
    auto q = query(std::string("SELECT ") + kAttemptColumns + " FROM task_attempts WHERE task_id = ?1 AND fence = ?2");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(c.task_id)).bind(2, c.fence);
    auto row = q->step();
    if (!row) return fail(row.error());
    if (*row) attempt = attempt_from(*q);
  }
  if (!attempt || attempt->node_id != c.node_id) return CompleteOutcome{FenceCheck::stale, task.state};
  if (!attempt->outcome.empty()) {
    if (attempt->outcome == c.outcome) return CompleteOutcome{FenceCheck::ok, task.state, true};  // a repeat
    if (attempt->outcome == "lease_lost") return CompleteOutcome{FenceCheck::stale, task.state};
    return CompleteOutcome{FenceCheck::finished, task.state};
  }
  if (task.fence != c.fence || task.leased_by != c.node_id ||
      (task.state != TaskState::leased && task.state != TaskState::running)) {
    return CompleteOutcome{FenceCheck::stale, task.state};
  }
  // The lease may have run out without the sweep noticing yet: the fence is still current
  // and nobody else holds the task, so the result is taken rather than run again.
  TaskState next = TaskState::failed;
  std::optional<protocol::FailureReason> reason = c.reason;
  if (c.outcome == "succeeded") {
    next = TaskState::succeeded;
    reason.reset();
  } else if (c.outcome == "cancelled" || task.cancel_requested) {
    next = TaskState::cancelled;
  } else {
    if (!reason) reason = protocol::FailureReason::internal;
    if (!protocol::failure_transient(*reason)) {
      next = TaskState::failed;
    } else {
      next = task.attempts < task.max_attempts ? TaskState::queued : TaskState::dead;
    }
  }
  std::optional<std::string> reason_text;
  if (reason) reason_text = std::string(protocol::failure_reason_name(*reason));
  {
    auto q = query(
        "UPDATE task_attempts SET finished_at_ms = ?3, outcome = ?4, reason = ?5, exit_code = ?6, error = ?7 "
        "WHERE task_id = ?1 AND fence = ?2");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(c.task_id)).bind(2, c.fence).bind(3, c.now_ms).bind(4, std::string_view(c.outcome));
    q->bind(5, reason_text).bind(6, opt_wide(c.exit_code)).bind(7, std::string_view(c.error));
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  {
    const bool requeue = next == TaskState::queued;
    auto q = query(
        "UPDATE tasks SET state = ?2, updated_at_ms = ?3, exit_code = ?4, last_reason = ?5, last_error = ?6, "
        "output = ?7, output_truncated = ?8, output_bytes = ?9, "
        "leased_by = CASE WHEN ?10 THEN NULL ELSE leased_by END, lease_expires_ms = NULL, "
        "not_before_ms = CASE WHEN ?10 THEN ?11 ELSE not_before_ms END, "
        "finished_at_ms = CASE WHEN ?10 THEN NULL ELSE ?3 END WHERE id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(c.task_id)).bind(2, protocol::task_state_name(next)).bind(3, c.now_ms);
    q->bind(4, opt_wide(c.exit_code)).bind(5, reason_text).bind(6, std::string_view(c.error));
    q->bind(7, std::string_view(c.output)).bind(8, std::int64_t{c.output_truncated ? 1 : 0});
    q->bind(9, c.output_bytes).bind(10, std::int64_t{requeue ? 1 : 0}).bind(11, c.retry_not_before_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
  }
  return CompleteOutcome{FenceCheck::ok, next};
}

Result<std::vector<TaskRecord>> SqliteStore::expire_leases(std::int64_t now_ms,
                                              const std::function<std::int64_t(std::int64_t)>& backoff_ms) {
  using protocol::TaskState;
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  std::vector<TaskRecord> expired;
  {
    auto q = query(std::string("SELECT ") + kTaskColumns +
                   ", '' FROM tasks INDEXED BY tasks_open WHERE lease_expires_ms <= ?1 "
                   "AND state IN ('leased', 'running') ORDER BY seq");
    if (!q) return fail(q.error());
    q->bind(1, now_ms);
    auto rows = collect(*q, task_from);
    if (!rows) return fail(rows.error());
    expired = std::move(*rows);
  }
  for (auto& t : expired) {
    {
      auto q = query(
          "UPDATE task_attempts SET finished_at_ms = ?3, outcome = 'lease_lost', reason = 'lease_lost', "
          "error = ?4 WHERE task_id = ?1 AND fence = ?2 AND outcome = ''");
      if (!q) return fail(q.error());
      q->bind(1, std::string_view(t.id)).bind(2, t.fence).bind(3, now_ms);
      q->bind(4, std::string_view("the lease of node " + t.leased_by.value_or("?") + " expired"));
      if (auto ok = q->run(); !ok) return fail(ok.error());
    }
    const std::string error = "attempt " + std::to_string(t.attempts) + ": the lease of node " +
                              t.leased_by.value_or("?") + " expired before it completed";
    if (t.cancel_requested) {
      t.state = TaskState::cancelled;
    } else if (t.attempts >= t.max_attempts) {
      t.state = TaskState::dead;
    } else {
      t.state = TaskState::queued;
      t.not_before_ms = now_ms + backoff_ms(t.attempts);
    }
    const bool requeue = t.state == TaskState::queued;
    auto q = query(
        "UPDATE tasks SET state = ?2, updated_at_ms = ?3, last_reason = 'lease_lost', last_error = ?4, "
        "exit_code = NULL, lease_expires_ms = NULL, leased_by = CASE WHEN ?5 THEN NULL ELSE leased_by END, "
        "not_before_ms = ?6, finished_at_ms = CASE WHEN ?5 THEN NULL ELSE ?3 END WHERE id = ?1");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(t.id)).bind(2, protocol::task_state_name(t.state)).bind(3, now_ms);
    q->bind(4, std::string_view(error)).bind(5, std::int64_t{requeue ? 1 : 0}).bind(6, t.not_before_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    t.updated_at_ms = now_ms;
    t.last_reason = protocol::FailureReason::lease_lost;
    t.last_error = error;
    t.exit_code.reset();
    t.lease_expires_ms.reset();
    if (requeue) {
      t.leased_by.reset();
    } else {
      t.finished_at_ms = now_ms;
    }
  }
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return expired;
}

Result<CancelOutcome> SqliteStore::cancel_task(std::string_view task_id, std::int64_t now_ms) {
  using protocol::TaskState;
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  auto t = select_task_locked("id = ?1", task_id, false);
  if (!t) return fail(t.error());
  if (!*t) return CancelOutcome::not_found;
  if (protocol::task_state_final((*t)->state)) return CancelOutcome::already_final;
  const bool queued = (*t)->state == TaskState::queued;
  auto q = query(
      queued ? "UPDATE tasks SET state = 'cancelled', cancel_requested = 1, updated_at_ms = ?2, "
               "finished_at_ms = ?2, last_error = 'cancelled by an operator before it ran' WHERE id = ?1"
             : "UPDATE tasks SET cancel_requested = 1, updated_at_ms = ?2 WHERE id = ?1");
  if (!q) return fail(q.error());
  q->bind(1, task_id).bind(2, now_ms);
  if (auto ok = q->run(); !ok) return fail(ok.error());
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return queued ? CancelOutcome::cancelled : CancelOutcome::stop_requested;
}

Result<std::vector<std::string>> SqliteStore::cancelled_among(std::string_view node_id,
                                                 std::span<const std::string> task_ids) {
  std::lock_guard lock(mutex_);
  std::vector<std::string> out;
  for (const auto& id : task_ids) {
    auto q = query("SELECT 1 FROM tasks WHERE id = ?1 AND leased_by = ?2 AND cancel_requested = 1");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(id)).bind(2, node_id);
    auto row = q->step();
    if (!row) return fail(row.error());
    if (*row) out.push_back(id);
  }
  return out;
}

Result<std::int64_t> SqliteStore::prune_tasks(std::int64_t older_than_ms, std::int64_t keep_per_node) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  std::int64_t deleted = 0;
  {
    auto q = query(std::string("DELETE FROM tasks WHERE state IN ") + kFinal + " AND finished_at_ms < ?1");
    if (!q) return fail(q.error());
    q->bind(1, older_than_ms);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    deleted += sqlite3_changes(db_.get());
  }
  {
    // A final task belongs to the node that ran it last, or the one it was addressed to.
    auto q = query(std::string(
                       "DELETE FROM tasks WHERE seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER "
                       "(PARTITION BY COALESCE(leased_by, node_id, '') ORDER BY finished_at_ms DESC, seq DESC) "
                       "AS rank FROM tasks WHERE state IN ") +
                   kFinal + ") WHERE rank > ?1)");
    if (!q) return fail(q.error());
    q->bind(1, keep_per_node);
    if (auto ok = q->run(); !ok) return fail(ok.error());
    deleted += sqlite3_changes(db_.get());
  }
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return deleted;
}

Result<std::optional<TaskRecord>> SqliteStore::select_task_locked(const char* where, std::string_view value, bool with_output) {
  auto q = query(std::string("SELECT ") + kTaskColumns + (with_output ? ", output" : ", ''") + " FROM tasks WHERE " +
                 where);
  if (!q) return fail(q.error());
  q->bind(1, value);
  auto row = q->step();
  if (!row) return fail(row.error());
  if (!*row) return std::optional<TaskRecord>{};
  return std::optional<TaskRecord>(task_from(*q));
}

Result<std::vector<std::string>> SqliteStore::pick_locked(const LeaseQuery& lq, std::int64_t max) {
  std::vector<std::string> picked;
  if (max <= 0) return picked;
  TaskResources used;  // reservations of the tasks the node holds, then of those picked
  {
    auto q = query(
        "SELECT COALESCE(SUM(min_cpu_millis), 0), COALESCE(SUM(min_mem_bytes), 0), "
        "COALESCE(SUM(min_disk_bytes), 0) FROM tasks WHERE leased_by = ?1 AND state IN ('leased', 'running')");
    if (!q) return fail(q.error());
    q->bind(1, std::string_view(lq.node_id));
    auto row = q->step();
    if (!row) return fail(row.error());
    if (*row) used = {q->int64(0), q->int64(1), q->int64(2)};
  }
  // Two walks in submission order, merged: the tasks addressed to this node and those
  // addressed to none, each on the queued-by-node index, so tasks waiting for other nodes
  // are never read.
  // INDEXED BY: without statistics the planner would walk every queued task for IS NULL.
  const std::string head = std::string("SELECT ") + kTaskColumns +
                           ", '' FROM tasks t INDEXED BY tasks_queued_by_node WHERE state = 'queued' AND ";
  const std::string tail = std::string(" AND not_before_ms <= ?2 AND ") + kSerialHead + " ORDER BY seq";
  auto mine = query(head + "node_id = ?1" + tail);
  if (!mine) return fail(mine.error());
  auto anyone = query(head + "node_id IS NULL" + tail);  // ?1 unused: binding it is harmless
  if (!anyone) return fail(anyone.error());
  mine->bind(1, std::string_view(lq.node_id)).bind(2, lq.now_ms);
  anyone->bind(1, std::string_view(lq.node_id)).bind(2, lq.now_ms);
  std::optional<TaskRecord> next_mine;
  std::optional<TaskRecord> next_anyone;
  bool mine_done = false;
  bool anyone_done = false;
  auto pull = [](Query& q, std::optional<TaskRecord>& slot, bool& done) -> Status {
    if (slot || done) return {};
    auto row = q.step();
    if (!row) return fail(row.error());
    if (*row) slot = task_from(q);
    else done = true;
    return {};
  };
  while (static_cast<std::int64_t>(picked.size()) < max) {
    if (auto ok = pull(*mine, next_mine, mine_done); !ok) return fail(ok.error());
    if (auto ok = pull(*anyone, next_anyone, anyone_done); !ok) return fail(ok.error());
    if (!next_mine && !next_anyone) break;
    std::optional<TaskRecord>& slot =
        !next_anyone || (next_mine && next_mine->seq < next_anyone->seq) ? next_mine : next_anyone;
    TaskRecord t = std::move(*slot);
    slot.reset();
    if (!placement_matches(t, lq) || !fits(used, t.min, lq.budget)) continue;
    add(used, t.min);
    picked.push_back(std::move(t.id));
  }
  return picked;
}

}  // namespace cairn::control::sqlite_internal
