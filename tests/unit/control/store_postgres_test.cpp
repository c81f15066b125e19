// The PostgreSQL store on a real server (tests/support/postgres): migrations, the methods of
// issues 11-12 as the SQLite store does them, tasks, and two stores (replicas) on one database
// leasing concurrently.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "control/store/open_store.hpp"
#include "control/store/postgres.hpp"
#include "tests/support/postgres.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::test;
using control::FenceCheck;
using protocol::TaskState;

namespace {

// A fresh database's URL, or "" after CAIRN_SKIP/FAIL was recorded.
std::string fresh_database(PostgresServer*& server) {
  std::string why;
  server = shared_postgres(why);
  if (server == nullptr) return {};
  auto url = fresh_postgres_database(*server);
  REQUIRE_MESSAGE(url, (url ? "" : url.error().message));
  return *url;
}

#define FRESH_DATABASE(server, url)                                   \
  PostgresServer* server = nullptr;                                   \
  const std::string url = fresh_database(server);                     \
  if (server == nullptr) {                                            \
    std::string why_;                                                 \
    shared_postgres(why_);                                            \
    if (PostgresServer::unavailable_reason()) CAIRN_SKIP(why_);       \
    FAIL("PostgreSQL is installed but did not start: " << why_);      \
  }

std::unique_ptr<control::Store> open(const std::string& url) {
  auto store = control::open_postgres_store(url);
  REQUIRE_MESSAGE(store, (store ? "" : store.error().message));
  return std::move(*store);
}

void enroll(control::Store& store, const std::string& node_id, const std::string& serial) {
  control::TokenRecord t;
  t.id = "tok-" + node_id;
  t.hash = "hash-" + node_id;
  t.expires_at_ms = 1'000'000;
  REQUIRE(store.insert_token(t));
  control::EnrollmentCommit c;
  c.token_id = t.id;
  c.now_ms = 1;
  c.node.id = node_id;
  c.node.labels = {{"zone", "a"}, {"role", "web"}};
  c.cert.serial_hex = serial;
  c.cert.node_id = node_id;
  c.cert.not_after_ms = 1'000'000;
  c.cert.reason = "enroll";
  auto outcome = store.commit_enrollment(c);
  REQUIRE_MESSAGE(outcome, (outcome ? "" : outcome.error().message));
  REQUIRE(*outcome == control::EnrollmentOutcome::committed);
}

control::TaskRecord task(const std::string& id) {
  control::TaskRecord t;
  t.id = id;
  t.kind = "exec";
  t.args_json = R"({"argv":["true"]})";
  t.created_at_ms = 10;
  t.max_attempts = 2;
  return t;
}

control::LeaseQuery lease_query(const std::string& node, std::int64_t now, std::int64_t max = 10) {
  control::LeaseQuery q;
  q.node_id = node;
  q.labels = {{"zone", "a"}, {"role", "web"}};
  q.capabilities = {"exec"};
  q.budget = {64'000, 1LL << 40, 1LL << 42};
  q.max_tasks = max;
  q.lease_ms = 1000;
  q.now_ms = now;
  return q;
}

control::TaskCompletion completion(const control::TaskRecord& t, const std::string& node, std::string outcome,
                                   std::int64_t now) {
  control::TaskCompletion c;
  c.task_id = t.id;
  c.node_id = node;
  c.fence = t.fence;
  c.now_ms = now;
  c.outcome = std::move(outcome);
  c.output = std::string("out\0put\xff", 8);  // bytes, not text: kept as they are
  c.output_bytes = 8;
  return c;
}

}  // namespace

TEST_CASE("postgres: replicas opening a new database at once apply each migration once") {
  FRESH_DATABASE(server, url);
  std::vector<std::thread> threads;
  std::atomic<int> opened{0};
  std::mutex errors_mutex;
  std::vector<std::string> errors;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      auto store = control::open_postgres_store(url);
      if (store) {
        ++opened;
      } else {
        std::lock_guard lock(errors_mutex);
        errors.push_back(store.error().message);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK_MESSAGE(opened == 4, (errors.empty() ? "" : errors.front()));
  auto store = open(url);
  CHECK(store->schema_version() == 5);
  auto versions = server->psql(url, "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version");
  REQUIRE(versions);
  CHECK(*versions == "1,2,3,4,5\n");  // 3: the module manifest, 4: the task indexes, 5: the module policy
}

TEST_CASE("postgres: a database from a newer cairn-control is refused; errors name the URL without its password") {
  FRESH_DATABASE(server, url);
  auto store = open(url);
  REQUIRE(server->psql(url, "INSERT INTO schema_version VALUES (99, 0)"));
  auto again = control::open_postgres_store(url);
  REQUIRE(!again);
  CHECK(again.error().code == Errc::config);
  CHECK(again.error().message.find("99") != std::string::npos);

  CHECK(control::redact_database_url("postgresql://u:s3cret@h:5/db") == "postgresql://u@h:5/db");
  CHECK(control::redact_database_url("postgresql://h/db?password=s3cret&x=1") == "postgresql://h/db?password=***&x=1");
  const std::string bad = "postgresql://cairn:s3cret@127.0.0.1:" + std::to_string(server->port()) + "/no_such_db";
  auto missing = control::open_postgres_store(bad);
  REQUIRE(!missing);
  CHECK(missing.error().message.find("s3cret") == std::string::npos);
  CHECK(missing.error().message.find("no_such_db") != std::string::npos);
}

TEST_CASE("postgres: --database picks the store: a URL is PostgreSQL, empty is the state dir's SQLite") {
  FRESH_DATABASE(server, url);
  TempDir dir;
  CHECK(control::is_postgres_url(url));
  CHECK(!control::is_postgres_url(""));
  auto pg = control::open_store({dir.path()}, url);
  REQUIRE_MESSAGE(pg, (pg ? "" : pg.error().message));
  auto sqlite = control::open_store({dir.path()}, "");
  REQUIRE(sqlite);
  CHECK(std::filesystem::exists(dir.path() / "control.db"));
  auto odd = control::open_store({dir.path()}, "mysql://x");
  REQUIRE(!odd);
  CHECK(odd.error().code == Errc::usage);
}

TEST_CASE("postgres: enrollment, heartbeats, events and revocation as in the SQLite store") {
  FRESH_DATABASE(server, url);
  auto store = open(url);
  enroll(*store, "n1", "01");

  // a heartbeat of an unknown node fails alone; two of n1 in one batch count twice
  protocol::HeartbeatRequest hb;
  hb.boot_id = "b";
  hb.load1 = 0.5;
  hb.mem_total_bytes = 1ULL << 33;
  hb.events.push_back({"e1", "critical", "disk", "full", "t"});
  hb.events.push_back({"e1", "critical", "disk", "full", "t"});  // duplicate id: stored once
  auto later = hb;  // the newest heartbeat of a batch is the node's status
  later.events.clear();
  std::vector<control::HeartbeatRecord> batch = {{"n1", 5, hb}, {"ghost", 5, {}}, {"n1", 6, later}};
  auto results = store->write_heartbeats(batch);
  REQUIRE_MESSAGE(results, (results ? "" : results.error().message));
  CHECK((*results)[0]);
  CHECK(!(*results)[1]);
  CHECK((*results)[2]);
  auto node = store->find_node("n1");
  REQUIRE(node);
  REQUIRE(*node);
  REQUIRE((*node)->status);
  CHECK((*node)->status->heartbeats == 2);
  CHECK((*node)->status->last_seen_ms == 6);
  CHECK((*node)->status->critical_events_total == 1);
  CHECK((*node)->status->last.mem_total_bytes == 1ULL << 33);
  CHECK((*node)->labels.at("zone") == "a");
  CHECK((*node)->cert_not_after_ms == 1'000'000);

  // the same event again (an agent's redelivery) is dropped; a node keeps its newest 100
  REQUIRE(store->write_heartbeats(std::vector<control::HeartbeatRecord>{{"n1", 7, hb}}));
  CHECK((*store->find_node("n1"))->status->critical_events_total == 1);
  std::vector<control::NodeEventRecord> many;
  for (int i = 0; i < 150; ++i) many.push_back({"n1", "m" + std::to_string(i), "info", "k", "msg", "t", 100 + i, 0});
  REQUIRE(store->insert_events(many));
  auto recent = store->recent_events("n1");
  REQUIRE(recent);
  CHECK(recent->size() == static_cast<std::size_t>(control::kEventsKeptPerNode));
  CHECK(recent->front().event_id == "m149");
  control::EventQuery q;
  q.node_id = "n1";
  q.since_ms = 240;
  auto listed = store->list_events(q);
  REQUIRE_MESSAGE(listed, (listed ? "" : listed.error().message));
  REQUIRE(listed->size() == 10);
  CHECK(listed->front().event_id == "m140");  // oldest first

  // a second enrollment of the id with a plain token is refused; the snapshot has one cert
  control::TokenRecord t2;
  t2.id = "t2";
  t2.hash = "h2";
  t2.expires_at_ms = 1'000'000;
  REQUIRE(store->insert_token(t2));
  control::EnrollmentCommit again;
  again.token_id = "t2";
  again.now_ms = 2;
  again.node.id = "n1";
  again.cert.serial_hex = "02";
  again.cert.node_id = "n1";
  again.cert.not_after_ms = 1'000'000;
  CHECK(*store->commit_enrollment(again) == control::EnrollmentOutcome::node_exists);
  auto tokens = store->list_tokens();
  REQUIRE(tokens);
  auto t2_now = std::find_if(tokens->begin(), tokens->end(), [](const auto& t) { return t.id == "t2"; });
  REQUIRE(t2_now != tokens->end());
  CHECK(t2_now->uses == 0);  // the refused enrollment consumed nothing
  auto snap = store->load_auth_snapshot(10);
  REQUIRE(snap);
  CHECK(snap->nodes.size() == 1);
  CHECK(snap->certs.size() == 1);
  CHECK(snap->nodes[0].last_seen_ms == 7);

  // rotation then revocation
  control::CertRecord fresh;
  fresh.serial_hex = "03";
  fresh.node_id = "n1";
  fresh.not_after_ms = 2'000'000;
  fresh.reason = "rotate";
  CHECK(*store->commit_rotation("01", fresh) == control::RotationOutcome::committed);
  REQUIRE(store->confirm_rotation("03", 50));
  auto certs = store->list_certificates("n1");
  REQUIRE(certs);
  CHECK(certs->size() == 2);
  CHECK(*store->revoke_node("n1", 99));
  CHECK(!*store->revoke_node("nobody", 99));
  CHECK(*store->commit_rotation("03", fresh) == control::RotationOutcome::not_current);
  snap = store->load_auth_snapshot(10);
  REQUIRE(snap);
  CHECK(snap->nodes[0].revoked);
  CHECK(std::all_of(snap->certs.begin(), snap->certs.end(),
                    [](const auto& c) { return c.status == control::CertStatus::revoked; }));
  CHECK(*store->enrollments_total() == 1);
  CHECK(!*store->allow_reenroll("n1", 100));

  // admins
  REQUIRE(store->insert_admin_cert({"a1", "ops", "fp", 1, 100, std::nullopt}));
  REQUIRE(store->insert_admin_cert({"a1", "ops", "fp", 1, 100, std::nullopt}));  // known: no-op
  CHECK(*store->revoke_admin("ops", 5) == 1);
  auto admins = store->list_admin_certs();
  REQUIRE(admins);
  REQUIRE(admins->size() == 1);
  CHECK(admins->front().revoked_at_ms == 5);
}

TEST_CASE("postgres: tasks are leased by placement, fenced, retried, expired and pruned") {
  FRESH_DATABASE(server, url);
  auto store = open(url);

  // idempotent submit
  auto a = task("a");
  a.idempotency_key = "k1";
  auto first = store->submit_task(a);
  REQUIRE_MESSAGE(first, (first ? "" : first.error().message));
  CHECK(first->created);
  auto dup = a;
  dup.id = "a-again";
  auto second = store->submit_task(dup);
  REQUIRE(second);
  CHECK(!second->created);
  CHECK(second->task.id == "a");

  // placement: addressed elsewhere, a selector not matching, a missing capability, too big
  auto other = task("other-node");
  other.node_id = "n2";
  auto wrong_zone = task("wrong-zone");
  wrong_zone.selector = {{"zone", "b"}};
  auto needs_gpu = task("needs-gpu");
  needs_gpu.capabilities = {"gpu"};
  auto big = task("big");
  big.min.cpu_millis = 100'000;
  auto mine = task("mine");
  mine.selector = {{"zone", "a"}};
  for (const auto& t : {other, wrong_zone, needs_gpu, big, mine}) REQUIRE(store->submit_task(t));

  CHECK(*store->has_work(lease_query("n1", 100)));
  auto leased = store->lease_tasks(lease_query("n1", 100));
  REQUIRE_MESSAGE(leased, (leased ? "" : leased.error().message));
  REQUIRE(leased->size() == 2);
  CHECK((*leased)[0].id == "a");
  CHECK((*leased)[1].id == "mine");
  CHECK((*leased)[0].fence == 1);
  CHECK((*leased)[0].state == TaskState::leased);
  CHECK((*leased)[0].leased_by == "n1");
  CHECK((*leased)[0].lease_expires_ms == 1100);
  CHECK(!*store->has_work(lease_query("n1", 100)));
  CHECK((*store->lease_tasks(lease_query("n2", 100))).size() == 1);  // other-node

  // extend (and running); a stale fence or another node is refused
  auto ext = store->extend_lease("a", "n1", 1, 5000, 200, true);
  REQUIRE(ext);
  CHECK(ext->check == FenceCheck::ok);
  CHECK(store->extend_lease("a", "n1", 7, 5000, 200, true)->check == FenceCheck::stale);
  CHECK(store->extend_lease("a", "n9", 1, 5000, 200, true)->check == FenceCheck::stale);
  CHECK(store->extend_lease("zzz", "n1", 1, 5000, 200, true)->check == FenceCheck::not_found);
  CHECK((*store->find_task("a"))->state == TaskState::running);

  // a transient failure goes back to queued with its backoff; the same completion is idempotent
  auto failed = completion((*leased)[0], "n1", "failed", 300);
  failed.reason = protocol::FailureReason::timeout;
  failed.retry_not_before_ms = 400;
  auto done = store->complete_task(failed);
  REQUIRE_MESSAGE(done, (done ? "" : done.error().message));
  CHECK(done->check == FenceCheck::ok);
  CHECK(done->state == TaskState::queued);
  CHECK(store->complete_task(failed)->check == FenceCheck::ok);
  auto succeeded_instead = completion((*leased)[0], "n1", "succeeded", 300);
  CHECK(store->complete_task(succeeded_instead)->check == FenceCheck::finished);
  CHECK(store->lease_tasks(lease_query("n1", 350))->empty());  // backoff
  auto retry = store->lease_tasks(lease_query("n1", 400, 1));
  REQUIRE(retry);
  REQUIRE(retry->size() == 1);
  CHECK(retry->front().fence == 2);
  CHECK(retry->front().attempts == 2);
  // another node cannot complete it; the holder succeeds, its output kept as bytes
  CHECK(store->complete_task(completion(retry->front(), "n2", "succeeded", 450))->check == FenceCheck::stale);
  auto ok = store->complete_task(completion(retry->front(), "n1", "succeeded", 450));
  REQUIRE(ok);
  CHECK(ok->state == TaskState::succeeded);
  auto shown = store->find_task("a");
  REQUIRE(shown);
  CHECK((*shown)->output == std::string("out\0put\xff", 8));
  CHECK((*shown)->finished_at_ms == 450);
  auto attempts = store->list_task_attempts("a");
  REQUIRE(attempts);
  REQUIRE(attempts->size() == 2);
  CHECK((*attempts)[0].outcome == "failed");
  CHECK((*attempts)[0].reason == protocol::FailureReason::timeout);
  CHECK((*attempts)[1].outcome == "succeeded");

  // a lease that expires returns to the queue, then ends dead at max_attempts
  auto expired = store->expire_leases(10'000, [](std::int64_t n) { return n * 100; });
  REQUIRE_MESSAGE(expired, (expired ? "" : expired.error().message));
  REQUIRE(expired->size() == 2);  // mine (n1) and other-node (n2)
  auto mine_now = *store->find_task("mine");
  CHECK(mine_now->state == TaskState::queued);
  CHECK(mine_now->not_before_ms == 10'100);
  CHECK(mine_now->last_reason == protocol::FailureReason::lease_lost);
  REQUIRE(store->lease_tasks(lease_query("n1", 10'100))->size() == 1);
  REQUIRE(store->expire_leases(20'000, [](std::int64_t) { return 0; })->size() == 1);
  CHECK((*store->find_task("mine"))->state == TaskState::dead);

  // cancel: queued at once, leased asks the node
  CHECK(*store->cancel_task("wrong-zone", 1) == control::CancelOutcome::cancelled);
  CHECK(*store->cancel_task("a", 1) == control::CancelOutcome::already_final);
  CHECK(*store->cancel_task("nope", 1) == control::CancelOutcome::not_found);
  auto gpu = lease_query("n3", 30'000);
  gpu.capabilities = {"exec", "gpu"};
  auto gpu_lease = store->lease_tasks(gpu);
  REQUIRE(gpu_lease);
  REQUIRE(gpu_lease->size() == 1);
  CHECK(*store->cancel_task("needs-gpu", 30'001) == control::CancelOutcome::stop_requested);
  const std::vector<std::string> running = {"needs-gpu", "a"};
  CHECK(*store->cancelled_among("n3", running) == std::vector<std::string>{"needs-gpu"});
  CHECK(store->extend_lease("needs-gpu", "n3", 1, 1000, 30'002, true)->cancel_requested);

  // list and prune
  auto finished = store->list_tasks({TaskState::succeeded, std::nullopt, 10});
  REQUIRE(finished);
  CHECK(finished->size() == 1);
  auto pruned = store->prune_tasks(1'000'000, 10'000);
  REQUIRE(pruned);
  CHECK(*pruned == 3);  // a (succeeded), mine (dead), wrong-zone (cancelled)
  CHECK(!*store->find_task("a"));
  CHECK(store->list_task_attempts("a")->empty());
}

TEST_CASE("postgres: tasks of one serial key run one at a time in submission order; the budget caps a lease") {
  FRESH_DATABASE(server, url);
  auto store = open(url);
  for (const char* id : {"s1", "s2", "s3"}) {
    auto t = task(id);
    t.serial_key = "deploy";
    t.min.mem_bytes = 100;
    REQUIRE(store->submit_task(t));
  }
  auto q = lease_query("n1", 1);
  q.budget = {1000, 250, 1000};
  auto first = store->lease_tasks(q);
  REQUIRE(first);
  REQUIRE(first->size() == 1);
  CHECK(first->front().id == "s1");
  CHECK(store->lease_tasks(lease_query("n2", 1))->empty());  // s2 waits for s1
  REQUIRE(store->complete_task(completion(first->front(), "n1", "succeeded", 2)));
  auto second = store->lease_tasks(q);
  REQUIRE(second);
  REQUIRE(second->size() == 1);
  CHECK(second->front().id == "s2");

  // budget: 250 bytes, 100 held by s2: one more task of 100 fits, not two
  for (const char* id : {"b1", "b2", "b3"}) {
    auto t = task(id);
    t.min.mem_bytes = 100;
    REQUIRE(store->submit_task(t));
  }
  auto more = store->lease_tasks(q);
  REQUIRE(more);
  REQUIRE(more->size() == 1);
  CHECK(more->front().id == "b1");
}

TEST_CASE("postgres: a completion retried while another replica commits the same one is answered as a repeat") {
  // Replica B took the node's completion and committed it, but died before answering; the
  // node sends it again to replica A while B's transaction still holds the task's row. A's
  // statement starts before that commit and waits for the row: it must answer "repeat", not
  // "stale fence" (the node would drop a result that is in fact stored).
  FRESH_DATABASE(server, url);
  auto store = open(url);
  REQUIRE(store->submit_task(task("r")));
  auto leased = store->lease_tasks(lease_query("n1", 100));
  REQUIRE(leased);
  REQUIRE(leased->size() == 1);
  const auto& t = leased->front();
  const std::string fence = std::to_string(t.fence);
  std::thread replica_b([&] {
    (void)server->psql(url, "BEGIN;"
                            "SELECT 1 FROM tasks WHERE id = 'r' FOR UPDATE;"
                            "UPDATE tasks SET state = 'succeeded', finished_at_ms = 150, lease_expires_ms = NULL WHERE id = 'r';"
                            "UPDATE task_attempts SET outcome = 'succeeded', finished_at_ms = 150 WHERE task_id = 'r' AND fence = " +
                                fence + ";"
                            "SELECT pg_sleep(1.5);"
                            "COMMIT;");
  });
  // A's statement starts while B sleeps inside its transaction.
  bool holding = false;
  for (int i = 0; i < 200 && !holding; ++i) {
    auto active = server->psql(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1.5)%' AND "
                                    "state = 'active' AND pid <> pg_backend_pid()");
    holding = active && *active == "1\n";
    if (!holding) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(holding);
  auto again = store->complete_task(completion(t, "n1", "succeeded", 200));
  replica_b.join();
  REQUIRE(again);
  CHECK(again->check == control::FenceCheck::ok);
  CHECK(again->repeat);
  CHECK(again->state == protocol::TaskState::succeeded);
}

TEST_CASE("postgres: two stores on one database (replicas) lease 2,000 tasks concurrently, each exactly once") {
  FRESH_DATABASE(server, url);
  auto replica_a = open(url);
  auto replica_b = open(url);
  constexpr int kTasks = 2000;
  for (int i = 0; i < kTasks; ++i) {
    auto t = task("t" + std::to_string(i));
    REQUIRE((i % 2 == 0 ? replica_a : replica_b)->submit_task(t));
  }
  std::mutex mutex;
  std::map<std::string, int> completed;  // task id -> completions seen by the workers
  std::vector<std::thread> workers;
  std::atomic<int> errors{0};
  for (int w = 0; w < 8; ++w) {
    workers.emplace_back([&, w] {
      auto& store = w % 2 == 0 ? *replica_a : *replica_b;
      const std::string node = "node-" + std::to_string(w);
      for (;;) {
        auto leased = store.lease_tasks(lease_query(node, 100, 10));
        if (!leased) {
          ++errors;
          return;
        }
        if (leased->empty()) return;
        for (const auto& t : *leased) {
          auto done = store.complete_task(completion(t, node, "succeeded", 200));
          if (!done || done->check != FenceCheck::ok) ++errors;
          std::lock_guard lock(mutex);
          ++completed[t.id];
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  CHECK(errors == 0);
  CHECK(completed.size() == static_cast<std::size_t>(kTasks));
  CHECK(std::all_of(completed.begin(), completed.end(), [](const auto& kv) { return kv.second == 1; }));
  CHECK(*server->psql(url, "SELECT count(*) FROM task_attempts") == std::to_string(kTasks) + "\n");
  CHECK(*server->psql(url, "SELECT count(*) FROM tasks WHERE state = 'succeeded' AND attempts = 1") ==
        std::to_string(kTasks) + "\n");
}

// The store prepares each statement again after 32, 128, 512... runs on a connection (a new
// name; the old one deallocated), so a generic plan chosen on a small table does not stay
// while the table grows. One connection runs every statement hundreds of times here, in and
// out of transactions: a re-prepare that failed (a name taken twice, a statement missing)
// would fail a call.
TEST_CASE("postgres: statements prepared again as they run keep answering (one connection, 600 tasks)") {
  FRESH_DATABASE(server, url);
  auto opened = control::open_postgres_store(url, {1});
  REQUIRE_MESSAGE(opened, (opened ? "" : opened.error().message));
  auto& store = **opened;
  constexpr int kTasks = 600;  // 600 single submits: prepared again at runs 32, 128 and 512
  for (int i = 0; i < kTasks; ++i) REQUIRE(store.submit_task(task("t" + std::to_string(i))));
  std::map<std::string, int> completed;
  int rounds = 0;
  for (;;) {
    // expire_leases runs inside BEGIN/COMMIT: its statements are prepared again there too
    auto expired = store.expire_leases(50, [](std::int64_t) { return 0; });
    REQUIRE_MESSAGE(expired, (expired ? "" : expired.error().message));
    CHECK(expired->empty());
    auto leased = store.lease_tasks(lease_query("n1", 100, 3));
    REQUIRE_MESSAGE(leased, (leased ? "" : leased.error().message));
    if (leased->empty()) break;
    ++rounds;
    std::vector<control::TaskCompletion> batch;
    for (const auto& t : *leased) batch.push_back(completion(t, "n1", "succeeded", 200));
    auto done = store.complete_tasks(batch);
    REQUIRE_MESSAGE(done, (done ? "" : done.error().message));
    REQUIRE(done->size() == batch.size());
    for (std::size_t k = 0; k < batch.size(); ++k) {
      CHECK((*done)[k].check == FenceCheck::ok);
      CHECK_FALSE((*done)[k].repeat);
      ++completed[batch[k].task_id];
    }
  }
  CHECK(rounds == kTasks / 3);
  CHECK(completed.size() == static_cast<std::size_t>(kTasks));
  CHECK(std::all_of(completed.begin(), completed.end(), [](const auto& kv) { return kv.second == 1; }));
  CHECK(*server->psql(url, "SELECT count(*) FROM tasks WHERE state = 'succeeded' AND attempts = 1") ==
        std::to_string(kTasks) + "\n");
  CHECK(*server->psql(url, "SELECT count(*) FROM task_attempts WHERE outcome = 'succeeded'") ==
        std::to_string(kTasks) + "\n");
}

TEST_CASE("postgres: a store keeps working after the server restarts (its idle connections are replaced)") {
  FRESH_DATABASE(server, url);
  auto store = open(url);
  REQUIRE(store->submit_task(task("before")));
  REQUIRE(store->find_task("before"));
  auto restarted = server->restart();
  REQUIRE_MESSAGE(restarted, (restarted ? "" : restarted.error().message));
  auto after = store->submit_task(task("after"));
  REQUIRE_MESSAGE(after, (after ? "" : after.error().message));
  auto listed = store->list_tasks({});
  REQUIRE(listed);
  CHECK(listed->size() == 2);  // both committed (fsync on): nothing lost across the restart
}
