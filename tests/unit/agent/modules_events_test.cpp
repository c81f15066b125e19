// Module events (h-modctl): fs-verity unavailable once per image digest, and the pending-events
// file the modules commands leave for the service (record under flock, drain into a sink,
// kept when the sink fails, capped).
#include <doctest/doctest.h>

#include "agent/modules/attachments.hpp"
#include "common/fs.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent;

namespace {

modules::AttachedModule module_with(std::string name, std::string digest, std::string verity) {
  modules::AttachedModule m;
  m.name = std::move(name);
  m.version = "1.0";
  m.image_digest = std::move(digest);
  m.verity = std::move(verity);
  m.attached_at = "2026-11-30T12:00:00.000Z";
  return m;
}

const std::string kA = "sha256:" + std::string(64, 'a');
const std::string kB = "sha256:" + std::string(64, 'b');

}  // namespace

TEST_CASE("fs-verity unavailable is one warning per newly attached image digest") {
  const auto web = module_with("web", kA, "unavailable: the filesystem does not support fs-verity");
  auto events = modules::verity_events({}, {web});
  REQUIRE(events.size() == 1);
  CHECK(events[0].severity == "warning");
  CHECK(events[0].kind == "module.verity_unavailable");
  CHECK(events[0].id == "module.verity_unavailable.sha256-" + std::string(64, 'a'));
  CHECK(events[0].message.find("web 1.0") != std::string::npos);
  CHECK(events[0].message.find("does not support fs-verity") != std::string::npos);
  // The same image again (another change of the set): nothing new.
  CHECK(modules::verity_events({web}, {web}).empty());
  // A new version of it: a new event, with its own id.
  auto next = modules::verity_events({web}, {module_with("web", kB, web.verity)});
  REQUIRE(next.size() == 1);
  CHECK(next[0].id != events[0].id);
  // Enforced by the kernel: no event.
  CHECK(modules::verity_events({}, {module_with("db", kB, "enabled")}).empty());
}

TEST_CASE("the pending module events reach the sink once, and stay when the sink fails") {
  test::TempDir dir;
  AgentConfig config;
  config.persist_dir = dir.path() / "persist";
  modules::ModuleStore store(config.state_dir() / "modules");

  auto none = modules::drain_events(config, [](const protocol::Event&) { return Status{}; });
  REQUIRE(none);
  CHECK(*none == 0);

  REQUIRE(modules::record_event(store, {"id-1", "warning", "module.refused", "web refused", "2026-11-30T12:00:00.000Z"}));
  REQUIRE(modules::record_event(store, {"id-2", "warning", "module.verity_unavailable", "no verity", ""}));

  auto refusing = modules::drain_events(config, [](const protocol::Event&) -> Status {
    return fail(Errc::io, "buffer full");
  });
  CHECK_FALSE(refusing);
  std::vector<protocol::Event> seen;
  auto drained = modules::drain_events(config, [&](const protocol::Event& e) {
    seen.push_back(e);
    return Status{};
  });
  REQUIRE(drained);
  CHECK(*drained == 2);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].id == "id-1");
  CHECK(seen[0].kind == "module.refused");
  CHECK(seen[0].time == "2026-11-30T12:00:00.000Z");
  CHECK(seen[1].kind == "module.verity_unavailable");
  auto again = modules::drain_events(config, [](const protocol::Event&) { return Status{}; });
  REQUIRE(again);
  CHECK(*again == 0);
}

TEST_CASE("the pending module events file is capped") {
  test::TempDir dir;
  modules::ModuleStore store(dir.path() / "modules");
  const std::string big(4000, 'x');
  Status last;
  int written = 0;
  for (int i = 0; i < 200 && last; ++i) {
    last = modules::record_event(store, {"id-" + std::to_string(i), "info", "module.test", big, ""});
    if (last) ++written;
  }
  REQUIRE_FALSE(last);
  CHECK(last.error().message.find("is full") != std::string::npos);
  CHECK(written > 10);
  CHECK(std::filesystem::file_size(dir.path() / "modules/events.pending") <= modules::kMaxPendingEventBytes);
}
