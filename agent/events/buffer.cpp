#include "agent/events/buffer.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <unordered_set>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::agent::events {
namespace {

constexpr std::size_t kMaxKindBytes = 128;
// Replay reads at most this: the log is compacted well below it.
constexpr std::size_t kMaxReplayBytes = 256 << 20;

std::string cut(std::string_view s, std::size_t max) {
  if (s.size() <= max) return std::string(s);
  return std::string(s.substr(0, max > 3 ? max - 3 : max)) + "...";
}

Json event_json(const protocol::Event& e) {
  return {{"id", e.id}, {"severity", e.severity}, {"kind", e.kind}, {"message", e.message}, {"time", e.time}};
}

std::optional<protocol::Event> event_from(const Json& j) {
  if (!j.is_object()) return std::nullopt;
  protocol::Event e;
  const std::pair<std::string*, const char*> fields[] = {
      {&e.id, "id"}, {&e.severity, "severity"}, {&e.kind, "kind"}, {&e.message, "message"}, {&e.time, "time"}};
  for (const auto& [field, key] : fields) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) return std::nullopt;
    *field = it->get<std::string>();
  }
  if (e.id.empty()) return std::nullopt;
  return e;
}

int severity_rank(const std::string& s) {
  if (s == "info") return 0;
  if (s == "warning") return 1;
  return 2;
}

Status write_all(int fd, std::string_view data, const std::filesystem::path& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::io, "event log " + path.string() + ": write: " + std::strerror(errno),
                  "check the persist volume (full? read-only?)");
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<EventBuffer>> EventBuffer::open(const std::filesystem::path& dir, const Clock& clock,
                                                       Limits limits) {
  if (auto ok = make_dirs(dir, 0700); !ok) return fail(ok.error().with_context("event buffer"));
  std::unique_ptr<EventBuffer> b(new EventBuffer(dir / "events.log", clock, limits));
  std::lock_guard l(b->m_);
  if (auto ok = b->replay(); !ok) return fail(ok.error());
  return b;
}

Status EventBuffer::reopen() {
  fd_.reset(::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
  if (!fd_) {
    return fail(Errc::io, "event log " + path_.string() + ": open: " + std::strerror(errno),
                "check the persist volume is mounted read-write");
  }
  struct stat st {};
  if (::fstat(fd_.get(), &st) == 0) log_bytes_ = static_cast<std::size_t>(st.st_size);
  return {};
}

Status EventBuffer::replay() {
  auto text = read_file_if_exists(path_, kMaxReplayBytes);
  if (!text) return fail(text.error().with_context("event buffer replay"));
  std::size_t bad = 0;
  bool torn = false;
  if (*text) {
    const std::string& s = **text;
    std::unordered_set<std::string> acked;
    std::vector<protocol::Event> events;
    std::size_t pos = 0;
    while (pos < s.size()) {
      const auto nl = s.find('\n', pos);
      if (nl == std::string::npos) {  // a write cut by a crash: never acknowledged to a caller
        torn = true;
        break;
      }
      auto j = parse_json(std::string_view(s).substr(pos, nl - pos), "event record");
      pos = nl + 1;
      if (!j || !j->is_object()) {
        ++bad;
        continue;
      }
      if (auto e = j->find("e"); e != j->end()) {
        if (auto ev = event_from(*e)) events.push_back(std::move(*ev));
        else ++bad;
      } else if (auto a = j->find("ack"); a != j->end() && a->is_array()) {
        for (const auto& id : *a) {
          if (id.is_string()) acked.insert(id.get<std::string>());
        }
      } else if (auto d = j->find("dropped"); d != j->end() && d->is_number_unsigned()) {
        dropped_ = std::max<std::uint64_t>(dropped_, d->get<std::uint64_t>());
        if (auto id = j->find("drop"); id != j->end() && id->is_string()) acked.insert(id->get<std::string>());
      } else {
        ++bad;
      }
    }
    std::unordered_set<std::string> seen;
    for (auto& e : events) {
      if (acked.contains(e.id) || !seen.insert(e.id).second) continue;
      pending_.push_back(std::move(e));
    }
    while (pending_.size() > limits_.max_events) {  // limits lowered since the last run
      pending_.erase(pending_.begin());
      ++dropped_;
    }
  }
  if (bad > 0 || torn) {
    log::warn("events.replay_damaged", {{"log", path_.string()}, {"bad_records", bad}, {"torn_tail", torn ? "yes" : "no"}});
  }
  // Start from a clean log: the torn tail is cut, acknowledged events are gone.
  if (*text && (torn || bad > 0 || (*text)->size() > limits_.max_log_bytes / 2)) return compact();
  return reopen();
}

Status EventBuffer::write_record(const std::string& line) {
  if (!fd_) {
    if (auto ok = reopen(); !ok) return ok;
  }
  if (auto ok = write_all(fd_.get(), line, path_); !ok) return ok;
  if (::fdatasync(fd_.get()) != 0) {
    return fail(Errc::io, "event log " + path_.string() + ": fdatasync: " + std::strerror(errno));
  }
  log_bytes_ += line.size();
  return {};
}

Status EventBuffer::compact() {
  std::string content = dump_json(Json{{"dropped", dropped_}}) + "\n";
  for (const auto& e : pending_) content += dump_json(Json{{"e", event_json(e)}}) + "\n";
  if (auto ok = write_file_atomic(path_, content, 0600); !ok) return fail(ok.error().with_context("event log compaction"));
  return reopen();
}

Result<std::string> EventBuffer::append(std::string_view severity, std::string_view kind, std::string_view message) {
  return append(protocol::Event{.id = "", .severity = std::string(severity), .kind = std::string(kind),
                                .message = std::string(message), .time = ""});
}

Result<std::string> EventBuffer::append(protocol::Event event) {
  if (event.id.empty()) event.id = random_hex(16);
  if (event.time.empty()) event.time = format_rfc3339(clock_.now());
  if (event.severity != "info" && event.severity != "warning" && event.severity != "critical") event.severity = "warning";
  event.kind = cut(event.kind, kMaxKindBytes);
  event.message = cut(event.message, limits_.max_message_bytes);
  std::lock_guard l(m_);
  while (pending_.size() >= limits_.max_events && !pending_.empty()) {
    // The least important of the oldest goes: info first, then warning, then anything.
    auto victim = pending_.end();
    for (int rank = 0; rank < 3 && victim == pending_.end(); ++rank) {
      victim = std::find_if(pending_.begin(), pending_.end(),
                            [&](const protocol::Event& e) { return severity_rank(e.severity) <= rank; });
    }
    if (victim == pending_.end()) victim = pending_.begin();
    ++dropped_;
    auto ok = write_record(dump_json(Json{{"drop", victim->id}, {"dropped", dropped_}}) + "\n");
    pending_.erase(victim);
    if (!ok) return fail(ok.error());
  }
  if (auto ok = write_record(dump_json(Json{{"e", event_json(event)}}) + "\n"); !ok) return fail(ok.error());
  pending_.push_back(event);
  if (log_bytes_ > limits_.max_log_bytes) {
    if (auto ok = compact(); !ok) log::warn("events.compact_failed", {{"error", ok.error().message}});
  }
  return event.id;
}

std::vector<protocol::Event> EventBuffer::pending(std::size_t max) const {
  std::lock_guard l(m_);
  return {pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(std::min(max, pending_.size()))};
}

std::size_t EventBuffer::pending_count() const {
  std::lock_guard l(m_);
  return pending_.size();
}

std::uint64_t EventBuffer::dropped() const {
  std::lock_guard l(m_);
  return dropped_;
}

Status EventBuffer::acknowledge(const std::vector<std::string>& ids) {
  if (ids.empty()) return {};
  std::lock_guard l(m_);
  if (auto ok = write_record(dump_json(Json{{"ack", ids}}) + "\n"); !ok) return ok;
  const std::unordered_set<std::string> done(ids.begin(), ids.end());
  std::erase_if(pending_, [&](const protocol::Event& e) { return done.contains(e.id); });
  if (pending_.empty() || log_bytes_ > limits_.max_log_bytes) return compact();
  return {};
}

Result<std::size_t> flush(EventBuffer& buffer, const SendBatch& send, std::size_t max_batches) {
  std::size_t delivered = 0;
  for (std::size_t i = 0; i < max_batches; ++i) {
    protocol::EventBatch batch{buffer.pending(protocol::kMaxEventsPerBatch)};
    if (batch.events.empty()) break;
    auto answer = send(batch);
    if (!answer) return fail(answer.error().with_context("deliver events"));
    std::vector<std::string> ids;
    for (const auto& e : batch.events) ids.push_back(e.id);
    if (auto ok = buffer.acknowledge(ids); !ok) return fail(ok.error());
    delivered += ids.size();
  }
  return delivered;
}

// persist (issue 15, h-escrow)
Result<bool> append_external_event(EventBuffer& buffer, const std::filesystem::path& file) {
  auto text = read_file_if_exists(file, 64 * 1024);
  if (!text) return fail(text.error().with_context("external event"));
  if (!*text) return false;
  auto j = parse_json(**text, file.string());
  std::optional<protocol::Event> event;
  if (j) event = event_from(*j);
  if (!event) {
    // Unreadable: it would fail the same way at every start. Said once, then dropped.
    log::warn("events.external_unreadable", {{"file", file.string()}});
  } else {
    const auto pending = buffer.pending(buffer.pending_count());
    const bool known = std::any_of(pending.begin(), pending.end(), [&](const protocol::Event& e) { return e.id == event->id; });
    if (!known) {
      if (auto id = buffer.append(*event); !id) return fail(id.error());
    }
  }
  std::error_code ec;
  std::filesystem::remove(file, ec);
  if (ec) return fail(Errc::io, file.string() + ": " + ec.message(), "remove it by hand; its event is in the buffer");
  return true;
}

}  // namespace cairn::agent::events
