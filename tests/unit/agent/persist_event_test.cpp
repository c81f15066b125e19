// The critical event of an unlock failure (issue 15): kept on tmpfs by the boot while /persist
// is locked (run/cairn/persist-event.json), then taken into the event buffer when the service
// starts and sent to control with the same id on every boot, so control stores it once.
#include <doctest/doctest.h>

#include <filesystem>
#include <mutex>
#include <vector>

#include "agent/enroll/credentials.hpp"
#include "agent/events/buffer.hpp"
#include "agent/persist/runtime.hpp"
#include "agent/runtime/service.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/protocol/tasks.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent;

namespace {

protocol::Event unlock_failed(const std::string& id) {
  return protocol::Event{.id = id,
                         .severity = "critical",
                         .kind = "persist.unlock_failed",
                         .message = "persist volume /dev/vda1 did not unlock: PCR 7 differ",
                         .time = "2026-11-30T12:00:00Z"};
}

std::size_t count_id(const events::EventBuffer& buffer, const std::string& id) {
  std::size_t n = 0;
  for (const auto& e : buffer.pending(1000)) n += e.id == id ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("the boot's pending event is taken into the buffer once, with its id, and its file removed") {
  test::TempDir dir;
  test::ManualClock clock;
  const Root root(dir.path());
  REQUIRE(persist::keep_pending_event(root, unlock_failed("persist.unlock_failed-0123456789abcdef")).has_value());
  auto buffer = events::EventBuffer::open(dir.path() / "events", clock);
  REQUIRE(buffer.has_value());

  auto taken = events::append_external_event(**buffer, persist::pending_event_path(root));
  REQUIRE_MESSAGE(taken.has_value(), taken.error().message);
  CHECK(*taken);
  CHECK_FALSE(std::filesystem::exists(persist::pending_event_path(root)));
  auto pending = (*buffer)->pending(10);
  REQUIRE(pending.size() == 1);
  CHECK(pending[0].id == "persist.unlock_failed-0123456789abcdef");
  CHECK(pending[0].severity == "critical");
  CHECK(pending[0].kind == "persist.unlock_failed");
  CHECK(pending[0].time == "2026-11-30T12:00:00Z");

  // No file: nothing to do.
  auto none = events::append_external_event(**buffer, persist::pending_event_path(root));
  REQUIRE(none.has_value());
  CHECK_FALSE(*none);

  // The next boot fails the same way while control is still away: one pending copy, not two.
  REQUIRE(persist::keep_pending_event(root, unlock_failed("persist.unlock_failed-0123456789abcdef")).has_value());
  REQUIRE(events::append_external_event(**buffer, persist::pending_event_path(root)).has_value());
  CHECK(count_id(**buffer, "persist.unlock_failed-0123456789abcdef") == 1);

  // The buffer survives a restart with it (durable before the file went away).
  buffer->reset();
  auto reopened = events::EventBuffer::open(dir.path() / "events", clock);
  REQUIRE(reopened.has_value());
  CHECK(count_id(**reopened, "persist.unlock_failed-0123456789abcdef") == 1);

  // Delivered, then the same episode on a later boot: appended again under the same id
  // (control stores each id once per node).
  REQUIRE((*reopened)->acknowledge({"persist.unlock_failed-0123456789abcdef"}).has_value());
  REQUIRE(persist::keep_pending_event(root, unlock_failed("persist.unlock_failed-0123456789abcdef")).has_value());
  REQUIRE(events::append_external_event(**reopened, persist::pending_event_path(root)).has_value());
  CHECK(count_id(**reopened, "persist.unlock_failed-0123456789abcdef") == 1);
}

TEST_CASE("an unreadable pending event file is dropped with a warning, not retried forever") {
  test::TempDir dir;
  test::ManualClock clock;
  const Root root(dir.path());
  log::set_min_level(log::Level::critical);
  REQUIRE(write_file_atomic(persist::pending_event_path(root), "{\"id\": 12", 0644).has_value());
  auto buffer = events::EventBuffer::open(dir.path() / "events", clock);
  REQUIRE(buffer.has_value());
  auto taken = events::append_external_event(**buffer, persist::pending_event_path(root));
  REQUIRE(taken.has_value());
  CHECK(*taken);
  CHECK((*buffer)->pending_count() == 0);
  CHECK_FALSE(std::filesystem::exists(persist::pending_event_path(root)));
}

namespace {

// Control as the service sees it: records the event batches, accepts everything.
class RecordingControl final : public HttpClient {
 public:
  explicit RecordingControl(std::vector<protocol::Event>& sent, std::mutex& m) : sent_(sent), m_(m) {}
  Result<HttpResponse> send(const HttpRequest& request) override {
    if (request.url.ends_with("/v1/events")) {
      auto batch = protocol::decode_event_batch(request.body);
      if (!batch) return HttpResponse{400, {}, "{}"};
      std::lock_guard l(m_);
      sent_.insert(sent_.end(), batch->events.begin(), batch->events.end());
      protocol::EventBatchResponse answer{static_cast<std::int64_t>(batch->events.size()), 0};
      return HttpResponse{200, {}, dump_json(protocol::to_json(answer))};
    }
    return HttpResponse{503, {}, R"({"error":"unavailable","message":"not in this test","hint":""})"};
  }

 private:
  std::vector<protocol::Event>& sent_;
  std::mutex& m_;
};

}  // namespace

TEST_CASE("the service sends the boot's pending critical event when it starts") {
  test::TempDir dir;
  test::ManualClock clock;
  log::set_min_level(log::Level::critical);
  AgentConfig config;
  config.root = Root(dir.path());
  config.persist_dir = dir.path() / "persist";
  config.control_url = "https://control.test:8443";
  // An enrolled node: a CA and a certificate valid around the manual clock's time.
  auto ca_key = generate_key(KeyType::p256);
  REQUIRE(ca_key.has_value());
  const auto now = clock.now();
  auto ca = issue_certificate({.common_name = "test CA", .not_before = now - std::chrono::hours(1),
                               .not_after = now + std::chrono::hours(24 * 365), .is_ca = true},
                              ca_key->get(), nullptr, ca_key->get());
  REQUIRE(ca.has_value());
  auto node_key = generate_key(KeyType::ed25519);
  REQUIRE(node_key.has_value());
  auto cert = issue_certificate({.common_name = "7d0e8f52-3a41-4c1b-9d7e-2f6a4b8c1e90",
                                 .not_before = now - std::chrono::hours(1),
                                 .not_after = now + std::chrono::hours(100), .client_auth = true},
                                node_key->get(), ca->get(), ca_key->get());
  REQUIRE(cert.has_value());
  REQUIRE(CredentialStore(config.state_dir())
              .install({*private_key_pem(node_key->get()), *cert_pem(cert->get()), *cert_pem(ca->get())})
              .has_value());
  REQUIRE(persist::keep_pending_event(config.root, unlock_failed("persist.unlock_failed-feedfacefeedface")).has_value());

  std::vector<protocol::Event> sent;
  std::mutex m;
  StopSignal stop;
  stop.request();  // SIGTERM before the first turn: start, then stop and flush the events
  const std::function<double()> random01 = [] { return 0.5; };
  const HttpClientFactory http = [&](const TlsOptions&) { return std::make_unique<RecordingControl>(sent, m); };
  auto ran = run_service(config, ServiceOptions{}, clock, random01, stop, http);
  REQUIRE_MESSAGE(ran.has_value(), ran.error().message);

  std::lock_guard l(m);
  std::size_t found = 0;
  for (const auto& e : sent) {
    if (e.id != "persist.unlock_failed-feedfacefeedface") continue;
    ++found;
    CHECK(e.severity == "critical");
    CHECK(e.kind == "persist.unlock_failed");
  }
  CHECK(found == 1);
  CHECK_FALSE(std::filesystem::exists(persist::pending_event_path(config.root)));
}
