#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "common/time.hpp"
#include "control/store/sqlite.hpp"
#include "tests/unit/control/control_fixture.hpp"

using namespace cairn;
using namespace cairn::test;
using namespace std::chrono_literals;

TEST_CASE("a heartbeat is stored and survives reopening the state dir") {
  control::ServiceConfig cfg;
  cfg.heartbeat_interval = 20s;
  ControlFixture f(cfg);
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  f.clock.advance(5s);
  auto r = f.beat(peer, sample_heartbeat("boot-42"));
  REQUIRE_MESSAGE(r, (r ? "" : r.error().body.code));
  CHECK(r->desired_modules.empty());
  CHECK(r->next_interval_s == 20);
  CHECK(r->server_time == format_rfc3339(f.clock.now()));
  const auto seen_at = format_rfc3339(f.clock.now());

  f.reopen();
  auto shown = f.service->admin_show_node(node.id);
  REQUIRE(shown);
  const auto& hb = (*shown)["heartbeat"];
  CHECK(hb["boot_id"] == "boot-42");
  CHECK(hb["agent_version"] == "0.1.0");
  CHECK(hb["mount_state"] == "mounted");
  CHECK(hb["cpu_count"] == 4);
  CHECK(hb["memory"]["total"] == (8ULL << 30));
  CHECK(hb["disk"]["free"] == (70ULL << 30));
  CHECK(hb["load"][0] == 0.5);
  CHECK(hb["modules"][0]["name"] == "base");
  CHECK(hb["labels"]["rack"] == "r1");
  CHECK(hb["cert_not_after"] == "2030-03-01T00:00:00.000Z");
  CHECK(hb["received_at"] == seen_at);
  CHECK((*shown)["last_heartbeat"] == seen_at);
  CHECK((*shown)["state"] == "Ready");
  CHECK((*shown)["identity"]["platform"] == "qemu");
}

TEST_CASE("a node turns Unreachable after the grace period and Ready on the next heartbeat") {
  control::ServiceConfig cfg;
  cfg.heartbeat_interval = 30s;
  cfg.unreachable_after_intervals = 3;
  ControlFixture f(cfg);
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  REQUIRE(f.beat(peer));
  CHECK(f.state_of(node.id) == "Ready");
  f.clock.advance(90s);
  f.service->sweep_liveness();
  CHECK(f.state_of(node.id) == "Ready");  // exactly at the grace period: still Ready
  CHECK(f.service->node_counts().ready == 1);
  f.clock.advance(1s);
  // Readers do not move the state: only the sweep does.
  CHECK(f.state_of(node.id) == "Ready");
  CHECK(f.service->node_counts().ready == 1);
  f.service->sweep_liveness();
  CHECK(f.state_of(node.id) == "Unreachable");
  auto counts = f.service->node_counts();
  CHECK(counts.ready == 0);
  CHECK(counts.unreachable == 1);
  auto list = f.service->admin_list_nodes();
  REQUIRE(list);
  CHECK((*list)["nodes"][0]["state"] == "Unreachable");

  REQUIRE(f.beat(peer));
  CHECK(f.state_of(node.id) == "Ready");
  CHECK(f.service->node_counts().ready == 1);

  // liveness comes back from the store after a restart
  f.clock.advance(10min);
  f.reopen();
  CHECK(f.state_of(node.id) == "Unreachable");
  REQUIRE(f.beat(peer));
  CHECK(f.state_of(node.id) == "Ready");
}

TEST_CASE("a freshly enrolled node is Enrolled until its first heartbeat, Unreachable if none comes") {
  ControlFixture f;
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  CHECK(f.state_of(node.id) == "Enrolled");
  CHECK(f.service->node_counts().enrolled == 1);
  CHECK(f.service->node_counts().ready == 0);
  f.clock.advance(91s);
  f.service->sweep_liveness();
  CHECK(f.state_of(node.id) == "Unreachable");
  REQUIRE(f.beat(peer));
  CHECK(f.state_of(node.id) == "Ready");
  // and it is Ready, not Enrolled, after a restart of the service
  f.reopen();
  CHECK(f.state_of(node.id) == "Ready");
}

TEST_CASE("a heartbeat with an unknown certificate is refused without being stored") {
  ControlFixture f;
  auto r = f.beat(control::Peer{true, make_node().id, "0123"});
  REQUIRE(!r);
  CHECK(r.error().http_status == 401);
  CHECK(r.error().body.code == "cert_unknown");
}

TEST_CASE("events of every severity are kept per node, duplicates of an id dropped, critical ones counted") {
  ControlFixture f;
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  auto hb = sample_heartbeat();
  hb.events = {{"e1", "critical", "cert.rotation_failing", "rotation failed", "2030-01-01T00:00:00.000Z"},
               {"e2", "info", "note", "kept too", "2030-01-01T00:00:00.000Z"}};
  REQUIRE(f.beat(peer, hb));
  REQUIRE(f.beat(peer, hb));  // the same idempotency ids again: stored and counted once
  auto first = f.service->admin_show_node(node.id);
  REQUIRE(first);
  REQUIRE((*first)["events"].size() == 2);
  CHECK((*first)["events"][0]["id"] == "e2");  // newest first
  CHECK((*first)["events"][0]["severity"] == "info");
  CHECK((*first)["events"][1]["kind"] == "cert.rotation_failing");
  CHECK((*first)["critical_events_total"] == 1);

  for (int i = 0; i < control::kEventsKeptPerNode + 5; ++i) {
    auto more = sample_heartbeat();
    more.events = {{"x" + std::to_string(i), i % 2 == 0 ? "critical" : "warning", "k", "m",
                    "2030-01-01T00:00:00.000Z"}};
    REQUIRE(f.beat(peer, more));
  }
  auto shown = f.service->admin_show_node(node.id);
  REQUIRE(shown);
  // x0..x(N+4): (N+5+1)/2 of them critical, plus e1
  CHECK((*shown)["critical_events_total"] == 1 + (control::kEventsKeptPerNode + 6) / 2);
  CHECK((*shown)["events"].size() == control::kEventsKeptPerNode);  // pruned to the cap, oldest out
  CHECK((*shown)["events"][0]["id"] == "x" + std::to_string(control::kEventsKeptPerNode + 4));
  CHECK((*shown)["heartbeat"]["heartbeats"] == control::kEventsKeptPerNode + 7);
}

TEST_CASE("group commit: 2000 heartbeats from several threads all complete and are stored") {
  ControlFixture f;
  constexpr int kNodes = 50;
  constexpr int kThreads = 4;
  constexpr int kPerThread = 500;
  std::vector<control::Peer> peers;
  const auto token = f.token({{"uses", kNodes}});
  for (int i = 0; i < kNodes; ++i) {
    auto r = f.enroll(make_node(), token);
    REQUIRE(r);
    peers.push_back(peer_of(r->certificate_pem));
  }
  std::vector<control::AuthorizedNode> nodes_auth;
  for (const auto& p : peers) {
    auto a = f.service->authorize_node(p);
    REQUIRE(a);
    nodes_auth.push_back(*a);
  }
  std::mutex mutex;
  std::condition_variable cv;
  int done = 0;
  std::atomic<int> ok{0};
  std::vector<int> per_node(kNodes, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int n = (t * kPerThread + i) % kNodes;
        f.service->heartbeat(nodes_auth[static_cast<std::size_t>(n)], sample_heartbeat(),
                             [&](control::ApiResult<protocol::HeartbeatResponse> r) {
                               if (r) ok.fetch_add(1);
                               std::lock_guard lock(mutex);
                               ++done;
                               cv.notify_all();
                             });
        std::lock_guard lock(mutex);
        ++per_node[static_cast<std::size_t>(n)];
      }
    });
  }
  for (auto& t : threads) t.join();
  {
    std::unique_lock lock(mutex);
    REQUIRE(cv.wait_for(lock, 60s, [&] { return done == kThreads * kPerThread; }));
  }
  CHECK(ok.load() == kThreads * kPerThread);

  // Each heartbeat is in the database: every node's counter is what was sent to it.
  f.service.reset();
  auto store = control::open_sqlite_store(f.state.database());
  REQUIRE(store);
  auto nodes = (*store)->list_nodes();
  REQUIRE(nodes);
  REQUIRE(nodes->size() == kNodes);
  std::map<std::string, int> sent;
  for (int i = 0; i < kNodes; ++i) sent[peers[static_cast<std::size_t>(i)].subject_cn] = per_node[static_cast<std::size_t>(i)];
  std::int64_t total = 0;
  for (const auto& n : *nodes) {
    REQUIRE(n.status);
    CAPTURE(n.id);
    CHECK(n.status->heartbeats == sent.at(n.id));
    total += n.status->heartbeats;
  }
  CHECK(total == kThreads * kPerThread);
}

TEST_CASE("heartbeats waiting when the service closes are written and answered") {
  ControlFixture f;
  const auto peer = f.enrolled(make_node());
  auto node = f.service->authorize_node(peer);
  REQUIRE(node);
  std::atomic<int> answered{0};
  for (int i = 0; i < 300; ++i) {
    f.service->heartbeat(*node, sample_heartbeat(), [&](auto r) {
      if (r) answered.fetch_add(1);
    });
  }
  f.service.reset();  // drains the queue before returning
  CHECK(answered.load() == 300);
  auto store = control::open_sqlite_store(f.state.database());
  REQUIRE(store);
  auto nodes = (*store)->list_nodes();
  REQUIRE(nodes);
  REQUIRE(nodes->size() == 1);
  CHECK((*nodes)[0].status->heartbeats == 300);
}
