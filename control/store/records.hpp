// The stored (text) forms of record fields that both store backends keep the same way:
// labels and string lists as JSON text, module references as a JSON array, certificate
// status by name; and the rows of the tables both keep alike, read into records.
// Backend-neutral: no database library here (each backend adapts its rows to StoredRow).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "control/store/store.hpp"

namespace cairn::control::stored_form {

std::string labels_text(const Labels& labels);
// Unreadable text gives empty labels (the column was written by labels_text).
Labels labels_from(const std::string& text);

std::string strings_text(const std::vector<std::string>& values);
std::vector<std::string> strings_from(const std::string& text);

std::string modules_text(const std::vector<protocol::ModuleRef>& modules);
std::vector<protocol::ModuleRef> modules_from(const std::string& text);

CertStatus cert_status_from(const std::string& text);

// One row of a query's answer, read by column number: each backend wraps its own row type
// (libpq's result row, sqlite3's current statement row) in one, so the conversions below
// serve both. A NULL reads as "", 0 or false.
class StoredRow {
 public:
  virtual ~StoredRow() = default;
  [[nodiscard]] virtual bool is_null(int col) const = 0;
  [[nodiscard]] virtual std::string text(int col) const = 0;
  [[nodiscard]] virtual std::int64_t int64(int col) const = 0;
  [[nodiscard]] virtual double real(int col) const = 0;
  [[nodiscard]] virtual bool boolean(int col) const = 0;
  [[nodiscard]] std::optional<std::int64_t> opt_int64(int col) const;
  [[nodiscard]] std::optional<std::string> opt_text(int col) const;
};

// The column lists both backends select (the same SQL in both dialects), each with the
// conversion of one row of it.
inline constexpr const char* kNodeColumns = R"sql(
  n.id, n.identity, n.labels, n.first_enrolled_at_ms, n.enrolled_at_ms, n.enroll_count,
  n.revoked_at_ms,
  (SELECT MAX(c.not_after_ms) FROM certificates c WHERE c.node_id = n.id AND c.status = 'active'),
  s.last_seen_ms, s.boot_id, s.agent_version, s.mount_state, s.load1, s.load5, s.load15,
  s.cpu_count, s.mem_total_bytes, s.mem_available_bytes, s.disk_total_bytes, s.disk_free_bytes,
  s.uptime_s, s.cert_not_after, s.modules, s.labels, s.heartbeats, s.critical_events_total,
  n.reenroll_allowed_until_ms, s.capabilities
FROM nodes n LEFT JOIN node_status s ON s.node_id = n.id)sql";

inline constexpr const char* kTokenColumns =
    "id, hash, created_at_ms, expires_at_ms, uses, max_uses, labels, expect_id, revoked";

inline constexpr const char* kCertColumns =
    "serial, node_id, fingerprint, not_before_ms, not_after_ms, issued_at_ms, reason, status, "
    "retire_at_ms, public_key, replaced_by";

inline constexpr const char* kAdminColumns = "serial, name, fingerprint, issued_at_ms, not_after_ms, revoked_at_ms";

inline constexpr const char* kEventColumns = "node_id, event_id, severity, kind, message, time, received_at_ms, seq";

inline constexpr const char* kAttemptColumns =
    "task_id, attempt, fence, node_id, leased_at_ms, started_at_ms, finished_at_ms, outcome, reason, "
    "exit_code, error";

NodeRecord node_from(const StoredRow& q);
TokenRecord token_from(const StoredRow& q);
CertRecord cert_from(const StoredRow& q);
AdminCertRecord admin_from(const StoredRow& q);
NodeEventRecord event_from(const StoredRow& q);
TaskAttemptRecord attempt_from(const StoredRow& q);

}  // namespace cairn::control::stored_form
