// PostgreSQL: node events (stored once per id, pruned per node, read in commit order).
#include "control/store/postgres_internal.hpp"

namespace cairn::control::postgres_internal {

namespace {

// Any numbers: advisory lock keys. Migrations run one replica at a time; event inserts too,
// so event seq (a sequence) grows in commit order and a follower's cursor never skips an
// event that commits late.
constexpr std::int64_t kEventLockKey = 0x6361'6972'6e00'0002;

}  // namespace

Result<std::vector<NodeEventRecord>> PostgresStore::recent_events(std::string_view node_id) {
  auto rows = run(std::string("SELECT ") + kEventColumns + " FROM node_events WHERE node_id = $1::text ORDER BY seq DESC",
                  Params().add(node_id));
  if (!rows) return fail(rows.error());
  return collect(*rows, event_from);
}

Result<std::vector<NodeEventRecord>> PostgresStore::list_events(const EventQuery& query) {
  if (query.after_seq) {
    // A follower's next page: the oldest events after its cursor, in the order stored.
    auto rows = run(std::string("SELECT ") + kEventColumns +
                        " FROM node_events WHERE seq > $4::bigint AND ($1::text IS NULL OR node_id = $1::text) "
                        "AND received_at_ms >= $2::bigint ORDER BY seq LIMIT $3::bigint",
                    Params().add(query.node_id).add(query.since_ms).add(query.limit).add(*query.after_seq));
    if (!rows) return fail(rows.error());
    return collect(*rows, event_from);
  }
  // The newest `limit` matching events, returned oldest first.
  auto rows = run(std::string("SELECT ") + kEventColumns + " FROM (SELECT " + kEventColumns +
                      " FROM node_events WHERE ($1::text IS NULL OR node_id = $1::text) AND received_at_ms >= $2::bigint "
                      "ORDER BY received_at_ms DESC, seq DESC LIMIT $3::bigint) e ORDER BY received_at_ms, seq",
                  Params().add(query.node_id).add(query.since_ms).add(query.limit));
  if (!rows) return fail(rows.error());
  return collect(*rows, event_from);
}

Result<std::int64_t> PostgresStore::insert_events(std::span<const NodeEventRecord> events) {
  if (events.empty()) return std::int64_t{0};
  return in_tx([&](Conn& conn) -> Result<std::int64_t> {
    auto stored = insert_event_batch(conn, events);
    if (!stored) return fail(stored.error());
    std::int64_t total = 0;
    for (const auto& [node, counts] : *stored) total += counts.stored;
    return total;
  });
}

Result<std::unordered_map<std::string, PostgresStore::EventCounts>> PostgresStore::insert_event_batch(Conn& conn,
                                                                       std::span<const NodeEventRecord> events) {
  Json rows = Json::array();
  std::int64_t ord = 0;
  for (const auto& e : events) {
    rows.push_back({{"ord", ord++},
                    {"node_id", e.node_id},
                    {"event_id", e.event_id},
                    {"severity", e.severity},
                    {"kind", e.kind},
                    {"message", e.message},
                    {"time", e.time},
                    {"received_at_ms", e.received_at_ms}});
  }
  if (auto ok = exec(conn, "SELECT pg_advisory_xact_lock($1::bigint)", Params().add(kEventLockKey)); !ok) {
    return fail(ok.error());
  }
  auto stored = exec(conn, R"sql(
WITH ev AS (
  INSERT INTO node_events (node_id, event_id, severity, kind, message, time, received_at_ms)
  SELECT node_id, event_id, severity, kind, message, time, received_at_ms FROM (
    SELECT DISTINCT ON (e.node_id, e.event_id) e.*
    FROM jsonb_to_recordset($1::jsonb) AS e(ord bigint, node_id text, event_id text, severity text,
      kind text, message text, time text, received_at_ms bigint)
    WHERE EXISTS (SELECT 1 FROM nodes n WHERE n.id = e.node_id)
      AND NOT EXISTS (SELECT 1 FROM node_events x WHERE x.node_id = e.node_id AND x.event_id = e.event_id)
    ORDER BY e.node_id, e.event_id, e.ord) fresh
  ORDER BY ord
  ON CONFLICT (node_id, event_id) DO NOTHING
  RETURNING node_id, severity)
SELECT node_id, count(*), count(*) FILTER (WHERE severity = 'critical') FROM ev GROUP BY node_id)sql",
                     Params().add(dump_json(rows)));
  if (!stored) return fail(stored.error());
  std::unordered_map<std::string, EventCounts> counts;
  Json touched = Json::array();
  for (int r = 0; r < stored->size(); ++r) {
    counts[stored->text(r, 0)] = {stored->int64(r, 1), stored->int64(r, 2)};
    touched.push_back(stored->text(r, 0));
  }
  if (!touched.empty()) {
    auto pruned = exec(conn, R"sql(
DELETE FROM node_events e USING (
  SELECT node_id, seq FROM (
    SELECT node_id, seq, row_number() OVER (PARTITION BY node_id ORDER BY seq DESC) AS rank
    FROM node_events WHERE node_id IN (SELECT jsonb_array_elements_text($1::jsonb))) ranked
  WHERE rank > $2::bigint) old
WHERE e.node_id = old.node_id AND e.seq = old.seq)sql",
                       Params().add(dump_json(touched)).add(std::int64_t{kEventsKeptPerNode}));
    if (!pruned) return fail(pruned.error());
  }
  return counts;
}

}  // namespace cairn::control::postgres_internal
