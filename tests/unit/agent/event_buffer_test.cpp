// The on-disk event buffer: durable appends (a writer killed with SIGKILL loses nothing it
// acknowledged), replay of what was not delivered, batched flushing, compaction, the cap.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <set>
#include <string>

#include "agent/events/buffer.hpp"
#include "common/fs.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent::events;

namespace {

std::unique_ptr<EventBuffer> open_buffer(const std::filesystem::path& dir, const Clock& clock, Limits limits = {}) {
  auto b = EventBuffer::open(dir, clock, limits);
  REQUIRE(b);
  return std::move(*b);
}

std::set<std::string> ids_of(const std::vector<protocol::Event>& events) {
  std::set<std::string> ids;
  for (const auto& e : events) ids.insert(e.id);
  return ids;
}

}  // namespace

TEST_CASE("events appended are pending after a reopen until acknowledged") {
  test::TempDir dir;
  test::ManualClock clock;
  std::string first, second;
  {
    auto b = open_buffer(dir.path(), clock);
    first = *b->append("info", "task.started", "task 1 started");
    second = *b->append("warning", "task.failed", "task 1 failed: exit 3");
    CHECK(b->pending_count() == 2);
  }
  auto b = open_buffer(dir.path(), clock);
  auto pending = b->pending(10);
  REQUIRE(pending.size() == 2);
  CHECK(pending[0].id == first);  // oldest first
  CHECK(pending[0].kind == "task.started");
  CHECK(pending[1].severity == "warning");
  CHECK_FALSE(pending[1].time.empty());
  REQUIRE(b->acknowledge({first}));
  b.reset();
  b = open_buffer(dir.path(), clock);
  CHECK(ids_of(b->pending(10)) == std::set<std::string>{second});
}

TEST_CASE("a writer killed with SIGKILL loses no event it acknowledged") {
  test::TempDir dir;
  std::array<int, 2> pipefd{};
  REQUIRE(::pipe(pipefd.data()) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(pipefd[0]);
    auto b = EventBuffer::open(dir.path(), SystemClock::instance());
    if (!b) ::_exit(2);
    for (int i = 0;; ++i) {
      auto id = (*b)->append("info", "test.tick", "tick " + std::to_string(i));
      if (!id) ::_exit(3);
      const std::string line = *id + "\n";  // written only once append() returned
      if (::write(pipefd[1], line.data(), line.size()) != static_cast<ssize_t>(line.size())) ::_exit(4);
    }
  }
  ::close(pipefd[1]);
  std::string acked;
  std::array<char, 4096> chunk{};
  while (std::count(acked.begin(), acked.end(), '\n') < 200) {
    const ssize_t n = ::read(pipefd[0], chunk.data(), chunk.size());
    REQUIRE(n > 0);
    acked.append(chunk.data(), static_cast<std::size_t>(n));
  }
  ::kill(child, SIGKILL);  // mid-stream: likely in the middle of a write
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  for (;;) {  // what the child acknowledged before it died
    const ssize_t n = ::read(pipefd[0], chunk.data(), chunk.size());
    if (n <= 0) break;
    acked.append(chunk.data(), static_cast<std::size_t>(n));
  }
  ::close(pipefd[0]);
  std::set<std::string> acked_ids;
  for (std::size_t pos = 0, nl; (nl = acked.find('\n', pos)) != std::string::npos; pos = nl + 1) {
    acked_ids.insert(acked.substr(pos, nl - pos));
  }
  REQUIRE(acked_ids.size() >= 200);
  auto b = open_buffer(dir.path(), SystemClock::instance());
  const auto found = ids_of(b->pending(1 << 20));
  for (const auto& id : acked_ids) {
    CAPTURE(id);
    CHECK(found.contains(id));
  }
  // The reopened buffer appends after whatever the kill cut.
  auto id = b->append("info", "after.crash", "still works");
  REQUIRE(id);
  b.reset();
  CHECK(ids_of(open_buffer(dir.path(), SystemClock::instance())->pending(1 << 20)).contains(*id));
}

TEST_CASE("a torn last record is cut off and the rest replays") {
  test::TempDir dir;
  test::ManualClock clock;
  std::string kept;
  {
    auto b = open_buffer(dir.path(), clock);
    kept = *b->append("info", "a", "whole");
  }
  auto text = read_file(dir.path() / "events.log", 1 << 20);
  REQUIRE(text);
  REQUIRE(write_file_atomic(dir.path() / "events.log", *text + "{\"e\": {\"id\": \"torn", 0600));
  auto b = open_buffer(dir.path(), clock);
  CHECK(ids_of(b->pending(10)) == std::set<std::string>{kept});
  REQUIRE(b->append("info", "b", "next"));
  b.reset();
  CHECK(open_buffer(dir.path(), clock)->pending_count() == 2);
}

TEST_CASE("flush delivers in batches and leaves the rest pending when control fails") {
  test::TempDir dir;
  test::ManualClock clock;
  auto b = open_buffer(dir.path(), clock);
  for (int i = 0; i < 1200; ++i) REQUIRE(b->append("info", "n", std::to_string(i)));
  std::vector<std::size_t> sizes;
  int calls = 0;
  auto sent = flush(*b, [&](const protocol::EventBatch& batch) -> Result<protocol::EventBatchResponse> {
    if (++calls == 3) return fail(Errc::unavailable, "control away");
    sizes.push_back(batch.events.size());
    return protocol::EventBatchResponse{static_cast<std::int64_t>(batch.events.size()), 0};
  });
  CHECK_FALSE(sent);
  CHECK(sizes == std::vector<std::size_t>{protocol::kMaxEventsPerBatch, protocol::kMaxEventsPerBatch});
  CHECK(b->pending_count() == 200);
  CHECK(b->pending(1)[0].message == "1000");
  sent = flush(*b, [&](const protocol::EventBatch& batch) -> Result<protocol::EventBatchResponse> {
    return protocol::EventBatchResponse{0, static_cast<std::int64_t>(batch.events.size())};
  });
  REQUIRE(sent);
  CHECK(*sent == 200);
  CHECK(b->pending_count() == 0);
}

TEST_CASE("the log is compacted once everything is delivered") {
  test::TempDir dir;
  test::ManualClock clock;
  auto b = open_buffer(dir.path(), clock);
  for (int i = 0; i < 100; ++i) REQUIRE(b->append("info", "n", std::string(500, 'x')));
  CHECK(std::filesystem::file_size(dir.path() / "events.log") > 50000);
  REQUIRE(flush(*b, [](const protocol::EventBatch& batch) -> Result<protocol::EventBatchResponse> {
    return protocol::EventBatchResponse{static_cast<std::int64_t>(batch.events.size()), 0};
  }));
  CHECK(std::filesystem::file_size(dir.path() / "events.log") < 100);
  CHECK(std::filesystem::status(dir.path() / "events.log").permissions() ==
        (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));
}

TEST_CASE("at the cap the oldest info events go first and the drops are counted") {
  test::TempDir dir;
  test::ManualClock clock;
  Limits limits{.max_events = 4, .max_log_bytes = 4096, .max_message_bytes = 64};
  auto b = open_buffer(dir.path(), clock, limits);
  auto critical = *b->append("critical", "disk.failed", "sda");
  auto info1 = *b->append("info", "task.started", "1");
  auto warn = *b->append("warning", "task.failed", "1");
  auto info2 = *b->append("info", "task.started", "2");
  auto info3 = *b->append("info", "task.started", "3");  // drops info1
  auto info4 = *b->append("info", "task.started", std::string(500, 'y'));  // drops info2; message cut
  CHECK(ids_of(b->pending(10)) == std::set<std::string>{critical, warn, info3, info4});
  CHECK(b->dropped() == 2);
  CHECK(b->pending(10).back().message.size() == 64);
  for (int i = 0; i < 50; ++i) REQUIRE(b->append("warning", "w", std::to_string(i)));  // forces compactions
  CHECK(std::filesystem::file_size(dir.path() / "events.log") <= 4096 + 512);
  CHECK(b->dropped() == 52);
  b.reset();
  auto again = open_buffer(dir.path(), clock, limits);
  CHECK(again->dropped() == 52);
  CHECK(again->pending_count() == 4);
  CHECK(ids_of(again->pending(10)).contains(critical));  // the critical one outlived 50 warnings
}
