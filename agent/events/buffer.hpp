// The node's event buffer: every task transition, rotation and error the agent reports to
// control is first made durable here, under the persist root, so it survives kill -9 and a
// reboot and is delivered at least once (control stores each id once).
//
// On disk: <dir>/events.log, one JSON record per line, appended and fsync'd before append()
// returns: {"e": EVENT} an event, {"ack": [ids]} delivered ones, {"dropped": N} the running
// count of events dropped at the cap. Opening replays it (a torn last line, as a crash in the
// middle of a write leaves, is cut off); once the log grows past its byte cap or every event is
// delivered it is compacted: rewritten atomically with only what is still pending.
// At the event cap the oldest info event goes first (then the oldest warning, then the oldest
// of all); the count of dropped events is kept and reported.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.hpp"
#include "common/fd.hpp"
#include "common/protocol/tasks.hpp"
#include "common/result.hpp"

namespace cairn::agent::events {

struct Limits {
  std::size_t max_events = 10000;           // pending events kept
  std::size_t max_log_bytes = 8 << 20;      // the log is compacted past this
  std::size_t max_message_bytes = 2048;     // a longer message is cut (marked with "...")
};

class EventBuffer {
 public:
  // Opens (creating dir 0700 and the log 0600) and replays the log.
  static Result<std::unique_ptr<EventBuffer>> open(const std::filesystem::path& dir, const Clock& clock,
                                                   Limits limits = {});

  // Durable when it returns. An empty id gets a random one, an empty time the clock's now.
  // Returns the event's id. Thread-safe, like every method.
  Result<std::string> append(protocol::Event event);
  Result<std::string> append(std::string_view severity, std::string_view kind, std::string_view message);

  // Up to max pending events, oldest first.
  [[nodiscard]] std::vector<protocol::Event> pending(std::size_t max) const;
  [[nodiscard]] std::size_t pending_count() const;
  // Events dropped at the cap since the buffer was created (survives restarts).
  [[nodiscard]] std::uint64_t dropped() const;

  // These ids reached control: they are no longer pending (durably).
  Status acknowledge(const std::vector<std::string>& ids);

  [[nodiscard]] const std::filesystem::path& log_path() const { return path_; }

 private:
  EventBuffer(std::filesystem::path path, const Clock& clock, Limits limits)
      : path_(std::move(path)), clock_(clock), limits_(limits) {}
  Status replay();
  Status write_record(const std::string& line);  // appends one line and fsyncs (mutex held)
  Status compact();                               // (mutex held)
  Status reopen();

  std::filesystem::path path_;
  const Clock& clock_;
  Limits limits_;
  mutable std::mutex m_;
  UniqueFd fd_;
  std::size_t log_bytes_ = 0;
  std::vector<protocol::Event> pending_;
  std::uint64_t dropped_ = 0;
};

// Sends pending events in batches of up to kMaxEventsPerBatch through `send` (POST /v1/events)
// and acknowledges each batch control accepted. Stops at the first failure (the events stay
// pending) or after max_batches. Returns how many events were delivered.
using SendBatch = std::function<Result<protocol::EventBatchResponse>(const protocol::EventBatch&)>;
Result<std::size_t> flush(EventBuffer& buffer, const SendBatch& send, std::size_t max_batches = 20);

// persist (issue 15, h-escrow): an event made before the buffer could be opened (a boot stage
// that found /persist locked keeps it on tmpfs) and left in `file` as one protocol::Event JSON
// object. Appended unless an event with its id is pending (the same episode keeps one id on
// every boot, so control also stores it once), then the file is removed. false: no file.
Result<bool> append_external_event(EventBuffer& buffer, const std::filesystem::path& file);

}  // namespace cairn::agent::events
