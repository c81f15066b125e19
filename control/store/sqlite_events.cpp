// SQLite: node events (stored once per id, pruned per node).
#include "control/store/sqlite_internal.hpp"

namespace cairn::control::sqlite_internal {

Result<std::vector<NodeEventRecord>> SqliteStore::recent_events(std::string_view node_id) {
  std::lock_guard lock(mutex_);
  auto q = query(std::string("SELECT ") + kEventColumns +
                 " FROM node_events WHERE node_id = ?1 ORDER BY rowid DESC");
  if (!q) return fail(q.error());
  q->bind(1, node_id);
  return collect(*q, event_from);
}

Result<std::vector<NodeEventRecord>> SqliteStore::list_events(const EventQuery& query_spec) {
  std::lock_guard lock(mutex_);
  // The newest `limit` matching events, returned oldest first.
  if (query_spec.after_seq) {
    // A follower's next page: the oldest events after its cursor, in the order stored.
    auto q = query(std::string("SELECT ") + kEventColumns +
                   " FROM node_events WHERE seq > ?4 AND (?1 IS NULL OR node_id = ?1) AND "
                   "received_at_ms >= ?2 ORDER BY seq LIMIT ?3");
    if (!q) return fail(q.error());
    q->bind(1, query_spec.node_id).bind(2, query_spec.since_ms).bind(3, query_spec.limit);
    q->bind(4, *query_spec.after_seq);
    return collect(*q, event_from);
  }
  auto q = query(std::string("SELECT ") + kEventColumns + " FROM (SELECT rowid AS r, " + kEventColumns +
                 " FROM node_events WHERE (?1 IS NULL OR node_id = ?1) AND received_at_ms >= ?2 "
                 "ORDER BY received_at_ms DESC, rowid DESC LIMIT ?3) ORDER BY received_at_ms, r");
  if (!q) return fail(q.error());
  q->bind(1, query_spec.node_id).bind(2, query_spec.since_ms).bind(3, query_spec.limit);
  return collect(*q, event_from);
}

Result<std::int64_t> SqliteStore::insert_events(std::span<const NodeEventRecord> events) {
  std::lock_guard lock(mutex_);
  auto tx = begin();
  if (!tx) return fail(tx.error());
  std::int64_t stored = 0;
  for (const auto& e : events) {
    auto inserted = insert_event_locked(e);
    if (!inserted) return fail(inserted.error());
    if (*inserted) {
      ++stored;
      if (auto ok = prune_events_locked(e.node_id); !ok) return fail(ok.error());
    }
  }
  if (auto ok = tx->commit(); !ok) return fail(ok.error());
  return stored;
}

Result<bool> SqliteStore::insert_event_locked(const NodeEventRecord& e) {
  auto q = query(
      "INSERT OR IGNORE INTO node_events (node_id, event_id, severity, kind, message, time, "
      "received_at_ms, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
      "(SELECT value + 1 FROM counters WHERE name = 'event_seq'))");
  if (!q) return fail(q.error());
  q->bind(1, std::string_view(e.node_id)).bind(2, std::string_view(e.event_id));
  q->bind(3, std::string_view(e.severity)).bind(4, std::string_view(e.kind));
  q->bind(5, std::string_view(e.message)).bind(6, std::string_view(e.time));
  q->bind(7, e.received_at_ms);
  if (auto ok = q->run(); !ok) return fail(ok.error());
  if (sqlite3_changes(db_.get()) == 0) return false;
  // Only a stored event takes a number: the sequence has no holes from duplicates.
  auto c = query("UPDATE counters SET value = value + 1 WHERE name = 'event_seq'");
  if (!c) return fail(c.error());
  if (auto ok = c->run(); !ok) return fail(ok.error());
  return true;
}

Status SqliteStore::prune_events_locked(std::string_view node_id) {
  auto q = query(
      "DELETE FROM node_events WHERE node_id = ?1 AND rowid NOT IN (SELECT rowid FROM "
      "node_events WHERE node_id = ?1 ORDER BY rowid DESC LIMIT ?2)");
  if (!q) return fail(q.error());
  q->bind(1, node_id).bind(2, std::int64_t{kEventsKeptPerNode});
  return q->run();
}

}  // namespace cairn::control::sqlite_internal
