// The task queue, events, module catalog and escrow of the Store, run against every backend
// in CAIRN_STORE_BACKENDS (store_backends.hpp): one set of cases, so SQLite and PostgreSQL
// are held to the same contract (store.hpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/time.hpp"
#include "control/service/auth_cache.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/skip.hpp"
#include "tests/unit/control/store_backends.hpp"

using namespace cairn;
using namespace cairn::control;
using protocol::FailureReason;
using protocol::TaskState;

namespace {

constexpr std::int64_t kT0 = 1'900'000'000'000;  // a fixed "now" in Unix ms
const std::string kNodeA = "00000000-0000-4000-8000-00000000000a";
const std::string kNodeB = "00000000-0000-4000-8000-00000000000b";

int task_counter = 0;
TaskRecord make_task(std::int64_t created = kT0) {
  TaskRecord t;
  ++task_counter;
  char id[40];
  std::snprintf(id, sizeof id, "10000000-0000-4000-8000-%012d", task_counter);
  t.id = id;
  t.kind = "exec";
  t.args_json = R"({"argv":["true"]})";
  t.created_at_ms = created;
  return t;
}

LeaseQuery node_query(const std::string& node, std::int64_t now, std::int64_t max = 1) {
  LeaseQuery q;
  q.node_id = node;
  q.budget = {8000, std::int64_t{1} << 40, std::int64_t{1} << 40};
  q.max_tasks = max;
  q.lease_ms = 5000;
  q.now_ms = now;
  return q;
}

TaskRecord submitted(Store& store, const TaskRecord& t) {
  auto out = store.submit_task(t);
  REQUIRE_MESSAGE(out, (out ? "" : out.error().message));
  return out->task;
}

std::vector<TaskRecord> lease(Store& store, const LeaseQuery& q) {
  auto out = store.lease_tasks(q);
  REQUIRE_MESSAGE(out, (out ? "" : out.error().message));
  return *out;
}

TaskRecord find(Store& store, const std::string& id) {
  auto t = store.find_task(id);
  REQUIRE(t);
  REQUIRE(t->has_value());
  return **t;
}

TaskCompletion completion(const TaskRecord& leased, const std::string& node, std::string outcome, std::int64_t now) {
  TaskCompletion c;
  c.task_id = leased.id;
  c.node_id = node;
  c.fence = leased.fence;
  c.now_ms = now;
  c.outcome = std::move(outcome);
  return c;
}

CompleteOutcome complete(Store& store, const TaskCompletion& c) {
  auto out = store.complete_task(c);
  REQUIRE_MESSAGE(out, (out ? "" : out.error().message));
  return *out;
}

std::int64_t two_seconds(std::int64_t) { return 2000; }

std::vector<std::string> ids_of(const std::vector<TaskRecord>& tasks) {
  std::vector<std::string> out;
  for (const auto& t : tasks) out.push_back(t.id);
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("an expired lease returns the task to the queue after its backoff", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  const auto task = submitted(store, make_task());
  CHECK(task.seq > 0);
  CHECK(task.state == TaskState::queued);

  auto first = lease(store, node_query(kNodeA, kT0 + 1000));
  REQUIRE(first.size() == 1);
  CHECK(first[0].fence == 1);
  CHECK(first[0].attempts == 1);
  CHECK(first[0].state == TaskState::leased);
  CHECK(first[0].leased_by == kNodeA);
  CHECK(first[0].lease_expires_ms == kT0 + 6000);

  auto none = store.expire_leases(kT0 + 5999, two_seconds);
  REQUIRE(none);
  CHECK(none->empty());
  auto expired = store.expire_leases(kT0 + 6000, two_seconds);
  REQUIRE(expired);
  REQUIRE(expired->size() == 1);
  CHECK((*expired)[0].state == TaskState::queued);
  CHECK((*expired)[0].not_before_ms == kT0 + 8000);

  const auto requeued = find(store, task.id);
  CHECK(requeued.state == TaskState::queued);
  CHECK(!requeued.leased_by);
  CHECK(requeued.last_reason == FailureReason::lease_lost);
  CHECK(lease(store, node_query(kNodeB, kT0 + 7999)).empty());  // still backing off

  auto second = lease(store, node_query(kNodeB, kT0 + 8000));
  REQUIRE(second.size() == 1);
  CHECK(second[0].fence == 2);
  CHECK(second[0].attempts == 2);
  CHECK(second[0].leased_by == kNodeB);

  auto attempts = store.list_task_attempts(task.id);
  REQUIRE(attempts);
  REQUIRE(attempts->size() == 2);
  CHECK((*attempts)[0].outcome == "lease_lost");
  CHECK((*attempts)[0].node_id == kNodeA);
  CHECK((*attempts)[0].reason == FailureReason::lease_lost);
  CHECK((*attempts)[1].outcome.empty());
  CHECK((*attempts)[1].fence == 2);
}

TEST_CASE_TEMPLATE("a task whose leases keep expiring is dead after max attempts, with its last error", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto t = make_task();
  t.max_attempts = 2;
  const auto task = submitted(store, t);
  std::int64_t now = kT0;
  for (int i = 0; i < 2; ++i) {
    REQUIRE(lease(store, node_query(kNodeA, now)).size() == 1);
    now += 10'000;
    auto expired = store.expire_leases(now, two_seconds);
    REQUIRE(expired);
    REQUIRE(expired->size() == 1);
    now += 2000;
  }
  const auto dead = find(store, task.id);
  CHECK(dead.state == TaskState::dead);
  CHECK(dead.attempts == 2);
  CHECK(dead.last_reason == FailureReason::lease_lost);
  CHECK(dead.last_error.find("expired") != std::string::npos);
  CHECK(dead.finished_at_ms == kT0 + 22'000);
  CHECK(lease(store, node_query(kNodeA, now + 60'000)).empty());
}

TEST_CASE_TEMPLATE("only transient failures are retried: exit_nonzero fails at once, timeout backs off then dies", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto permanent = make_task();
  permanent.max_attempts = 3;
  submitted(store, permanent);
  auto leased = lease(store, node_query(kNodeA, kT0));
  REQUIRE(leased.size() == 1);
  auto c = completion(leased[0], kNodeA, "failed", kT0 + 100);
  c.reason = FailureReason::exit_nonzero;
  c.exit_code = 3;
  c.error = "exit status 3";
  c.output = "boom";
  c.retry_not_before_ms = kT0 + 5000;
  auto out = complete(store, c);
  CHECK(out.check == FenceCheck::ok);
  CHECK(out.state == TaskState::failed);
  const auto failed = find(store, permanent.id);
  CHECK(failed.state == TaskState::failed);
  CHECK(failed.attempts == 1);
  CHECK(failed.exit_code == 3);
  CHECK(failed.output == "boom");
  CHECK(failed.last_reason == FailureReason::exit_nonzero);

  auto transient = make_task();
  transient.max_attempts = 2;
  submitted(store, transient);
  leased = lease(store, node_query(kNodeA, kT0 + 200));
  REQUIRE(leased.size() == 1);
  c = completion(leased[0], kNodeA, "failed", kT0 + 300);
  c.reason = FailureReason::timeout;
  c.retry_not_before_ms = kT0 + 3000;
  out = complete(store, c);
  CHECK(out.state == TaskState::queued);
  CHECK(find(store, transient.id).not_before_ms == kT0 + 3000);
  CHECK(lease(store, node_query(kNodeA, kT0 + 2999)).empty());
  leased = lease(store, node_query(kNodeA, kT0 + 3000));
  REQUIRE(leased.size() == 1);
  CHECK(leased[0].attempts == 2);
  c = completion(leased[0], kNodeA, "failed", kT0 + 3100);
  c.reason = FailureReason::timeout;
  c.error = "ran past 3600 s";
  out = complete(store, c);
  CHECK(out.state == TaskState::dead);
  const auto dead = find(store, transient.id);
  CHECK(dead.state == TaskState::dead);
  CHECK(dead.last_error == "ran past 3600 s");
}

TEST_CASE_TEMPLATE("tasks sharing a serial key run one at a time, in submission order", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto a = make_task();
  a.serial_key = "db-migrate";
  auto b = make_task();
  b.serial_key = "db-migrate";
  auto other = make_task();
  other.serial_key = "other";
  submitted(store, a);
  submitted(store, b);
  submitted(store, other);

  auto leased = lease(store, node_query(kNodeA, kT0, 10));
  CHECK(ids_of(leased) == std::vector<std::string>{a.id, other.id});
  CHECK(lease(store, node_query(kNodeB, kT0, 10)).empty());  // b waits for a, on any node

  // a fails transiently and backs off: b still waits (a is older and unfinished).
  auto c = completion(leased[0], kNodeA, "failed", kT0 + 10);
  c.reason = FailureReason::killed;
  c.retry_not_before_ms = kT0 + 1000;
  REQUIRE(complete(store, c).state == TaskState::queued);
  CHECK(lease(store, node_query(kNodeB, kT0 + 20, 10)).empty());

  auto again = lease(store, node_query(kNodeB, kT0 + 1000, 10));
  REQUIRE(ids_of(again) == std::vector<std::string>{a.id});
  REQUIRE(complete(store, completion(again[0], kNodeB, "succeeded", kT0 + 1100)).state == TaskState::succeeded);
  auto next = lease(store, node_query(kNodeA, kT0 + 1200, 10));
  CHECK(ids_of(next) == std::vector<std::string>{b.id});
}

TEST_CASE_TEMPLATE("placement: addressed tasks, label selectors and capabilities", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto addressed = make_task();
  addressed.node_id = kNodeB;
  auto selected = make_task();
  selected.selector = {{"zone", "a"}};
  selected.capabilities = {"kvm"};
  submitted(store, addressed);
  submitted(store, selected);

  auto a = node_query(kNodeA, kT0, 10);
  a.labels = {{"zone", "b"}};
  a.capabilities = {"kvm"};
  CHECK(lease(store, a).empty());  // wrong zone; the addressed task is B's
  a.labels = {{"zone", "a"}, {"rack", "7"}};
  a.capabilities = {};
  auto has = store.has_work(a);
  REQUIRE(has);
  CHECK(!*has);
  CHECK(lease(store, a).empty());  // no kvm
  a.capabilities = {"systemd", "kvm"};
  has = store.has_work(a);
  REQUIRE(has);
  CHECK(*has);
  CHECK(ids_of(lease(store, a)) == std::vector<std::string>{selected.id});

  auto b = node_query(kNodeB, kT0, 10);
  CHECK(ids_of(lease(store, b)) == std::vector<std::string>{addressed.id});
}

TEST_CASE_TEMPLATE("a lease takes tasks for this node and for any node in one submission order", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto u1 = make_task();
  auto a1 = make_task();
  a1.node_id = kNodeA;
  auto b1 = make_task();
  b1.node_id = kNodeB;
  auto u2 = make_task();
  auto a2 = make_task();
  a2.node_id = kNodeA;
  for (const auto* t : {&u1, &a1, &b1, &u2, &a2}) submitted(store, *t);
  CHECK(ids_of(lease(store, node_query(kNodeA, kT0, 3))) == std::vector<std::string>{u1.id, a1.id, u2.id});
  CHECK(ids_of(lease(store, node_query(kNodeA, kT0, 3))) == std::vector<std::string>{a2.id});
  CHECK(ids_of(lease(store, node_query(kNodeB, kT0, 3))) == std::vector<std::string>{b1.id});
}

TEST_CASE_TEMPLATE("admission: a node gets tasks only while their reservations fit its budget", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto big1 = make_task();
  big1.min.cpu_millis = 600;
  big1.min.mem_bytes = 100;
  auto big2 = make_task();
  big2.min.cpu_millis = 600;
  auto small = make_task();
  small.min.cpu_millis = 300;
  submitted(store, big1);
  submitted(store, big2);
  submitted(store, small);

  auto q = node_query(kNodeA, kT0, 10);
  q.budget = {1000, 1000, 1000};
  // big1 (600) fits; big2 would make 1200; small makes 900.
  auto first = lease(store, q);
  CHECK(ids_of(first) == std::vector<std::string>{big1.id, small.id});
  // What the node holds counts against the budget of the next lease.
  auto has = store.has_work(q);
  REQUIRE(has);
  CHECK(!*has);
  CHECK(lease(store, q).empty());
  REQUIRE(complete(store, completion(first[0], kNodeA, "succeeded", kT0 + 10)).state == TaskState::succeeded);
  q.now_ms = kT0 + 20;
  CHECK(ids_of(lease(store, q)) == std::vector<std::string>{big2.id});

  auto mem = make_task();
  mem.min.mem_bytes = 2000;
  submitted(store, mem);
  CHECK(lease(store, node_query(kNodeB, kT0 + 30, 10)).size() == 1);  // a roomy node takes it
}

TEST_CASE_TEMPLATE("submit with a known idempotency key returns the existing task", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto t = make_task();
  t.idempotency_key = "deploy-42";
  auto first = store.submit_task(t);
  REQUIRE(first);
  CHECK(first->created);
  auto again = make_task();
  again.idempotency_key = "deploy-42";
  again.kind = "reboot";
  auto second = store.submit_task(again);
  REQUIRE(second);
  CHECK(!second->created);
  CHECK(second->task.id == t.id);
  CHECK(second->task.kind == "exec");
  auto all = store.list_tasks({});
  REQUIRE(all);
  CHECK(all->size() == 1);
}

TEST_CASE_TEMPLATE("a submit batch inserts in its order, once per idempotency key, in one call", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto known = make_task();
  known.idempotency_key = "deploy-1";
  submitted(store, known);

  std::vector<TaskRecord> batch;
  for (int i = 0; i < 5; ++i) batch.push_back(make_task());
  batch[1].idempotency_key = "deploy-1";  // already stored: the stored task answers
  batch[2].idempotency_key = "deploy-2";
  batch[4].idempotency_key = "deploy-2";  // repeated inside the batch: the first one answers
  batch[3].node_id = kNodeB;
  batch[3].selector = {{"zone", "a"}};
  batch[3].capabilities = {"gpu"};
  batch[3].serial_key = "s";
  batch[3].min = {500, 1024, 2048};
  auto out = store.submit_tasks(batch);
  REQUIRE_MESSAGE(out, (out ? "" : out.error().message));
  REQUIRE(out->size() == 5);
  CHECK((*out)[0].created);
  CHECK(!(*out)[1].created);
  CHECK((*out)[1].task.id == known.id);
  CHECK((*out)[2].created);
  CHECK((*out)[3].created);
  CHECK(!(*out)[4].created);
  CHECK((*out)[4].task.id == batch[2].id);
  // Submission order is the batch's, after what was stored before.
  CHECK((*out)[0].task.seq > (*out)[1].task.seq);
  CHECK((*out)[2].task.seq > (*out)[0].task.seq);
  CHECK((*out)[3].task.seq > (*out)[2].task.seq);
  const auto stored = find(store, batch[3].id);
  CHECK(stored.node_id == kNodeB);
  CHECK(stored.selector == Labels{{"zone", "a"}});
  CHECK(stored.capabilities == std::vector<std::string>{"gpu"});
  CHECK(stored.serial_key == "s");
  CHECK(stored.min.cpu_millis == 500);
  CHECK(stored.min.disk_bytes == 2048);
  CHECK(stored.state == TaskState::queued);
  auto all = store.list_tasks({});
  REQUIRE(all);
  CHECK(all->size() == 4);  // known + three new ones

  auto empty = store.submit_tasks({});
  REQUIRE(empty);
  CHECK(empty->empty());
}

TEST_CASE_TEMPLATE("a complete batch decides each task alone: a stale fence refuses that task only", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  for (int i = 0; i < 4; ++i) submitted(store, make_task());
  auto leased = lease(store, node_query(kNodeA, kT0, 4));
  REQUIRE(leased.size() == 4);
  // Task 2's lease expires and node B takes it: A's fence for it is stale now.
  REQUIRE(store.extend_lease(leased[0].id, kNodeA, leased[0].fence, 60'000, kT0 + 1, false));
  REQUIRE(store.extend_lease(leased[1].id, kNodeA, leased[1].fence, 60'000, kT0 + 1, false));
  REQUIRE(store.extend_lease(leased[3].id, kNodeA, leased[3].fence, 60'000, kT0 + 1, false));
  REQUIRE(store.expire_leases(kT0 + 5000, [](std::int64_t) { return 0; }));
  auto taken = lease(store, node_query(kNodeB, kT0 + 5001, 4));
  REQUIRE(ids_of(taken) == std::vector<std::string>{leased[2].id});

  std::vector<TaskCompletion> batch;
  auto ok = completion(leased[0], kNodeA, "succeeded", kT0 + 6000);
  ok.exit_code = 0;
  ok.output = std::string("bytes \0\xff end", 11);
  batch.push_back(ok);
  auto failed = completion(leased[1], kNodeA, "failed", kT0 + 6000);
  failed.reason = FailureReason::timeout;
  failed.error = "took too long";
  failed.retry_not_before_ms = kT0 + 9000;
  batch.push_back(failed);
  batch.push_back(completion(leased[2], kNodeA, "succeeded", kT0 + 6000));  // stale
  auto missing = completion(leased[3], kNodeA, "succeeded", kT0 + 6000);
  missing.task_id = "10000000-0000-4000-8000-999999999999";
  batch.push_back(missing);
  auto permanent = completion(leased[3], kNodeA, "failed", kT0 + 6000);
  permanent.reason = FailureReason::exit_nonzero;
  permanent.exit_code = 3;
  batch.push_back(permanent);
  batch.push_back(ok);  // the same completion twice in one batch: a repeat

  auto out = store.complete_tasks(batch);
  REQUIRE_MESSAGE(out, (out ? "" : out.error().message));
  REQUIRE(out->size() == 6);
  CHECK((*out)[0].check == FenceCheck::ok);
  CHECK((*out)[0].state == TaskState::succeeded);
  CHECK((*out)[1].check == FenceCheck::ok);
  CHECK((*out)[1].state == TaskState::queued);
  CHECK((*out)[2].check == FenceCheck::stale);
  CHECK((*out)[3].check == FenceCheck::not_found);
  CHECK((*out)[4].check == FenceCheck::ok);
  CHECK((*out)[4].state == TaskState::failed);
  CHECK((*out)[5].check == FenceCheck::ok);
  CHECK((*out)[5].state == TaskState::succeeded);
  CHECK(!(*out)[0].repeat);
  CHECK((*out)[5].repeat);

  const auto first = find(store, leased[0].id);
  CHECK(first.state == TaskState::succeeded);
  CHECK(first.output == std::string("bytes \0\xff end", 11));
  CHECK(first.finished_at_ms == kT0 + 6000);
  CHECK(first.exit_code == 0);
  const auto retried = find(store, leased[1].id);
  CHECK(retried.state == TaskState::queued);
  CHECK(retried.not_before_ms == kT0 + 9000);
  CHECK(retried.last_reason == FailureReason::timeout);
  CHECK(retried.last_error == "took too long");
  CHECK(!retried.leased_by);
  const auto other = find(store, leased[2].id);  // B's attempt is untouched
  CHECK(other.state == TaskState::leased);
  CHECK(other.leased_by == kNodeB);
  CHECK(other.fence == leased[2].fence + 1);
  const auto last = find(store, leased[3].id);
  CHECK(last.state == TaskState::failed);
  CHECK(last.exit_code == 3);
  auto attempts = store.list_task_attempts(leased[3].id);
  REQUIRE(attempts);
  REQUIRE(attempts->size() == 1);
  CHECK(attempts->front().outcome == "failed");
  CHECK(attempts->front().reason == FailureReason::exit_nonzero);
  CHECK(attempts->front().finished_at_ms == kT0 + 6000);

  // The whole batch again: every item answers as before, nothing changes.
  auto again = store.complete_tasks(std::span<const TaskCompletion>(batch).first(2));
  REQUIRE(again);
  CHECK((*again)[0].check == FenceCheck::ok);
  CHECK((*again)[1].check == FenceCheck::ok);
  CHECK((*again)[1].state == TaskState::queued);
  CHECK((*again)[1].repeat);
  CHECK(find(store, leased[1].id).attempts == 1);
}

TEST_CASE_TEMPLATE("the auth generation moves with every change of authorisation, and only then", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto g0 = store.auth_generation();
  REQUIRE(g0);
  AdminCertRecord admin{"aa01", "ops", "fp", kT0, kT0 + 1000, std::nullopt};
  REQUIRE(store.insert_admin_cert(admin));
  auto g1 = store.auth_generation();
  REQUIRE(g1);
  CHECK(*g1 > *g0);
  REQUIRE(store.insert_admin_cert(admin));  // a known serial: no change, no move
  CHECK(*store.auth_generation() == *g1);
  submitted(store, make_task());  // tasks are not authorisation
  CHECK(*store.auth_generation() == *g1);
  auto revoked = store.revoke_admin("ops", kT0 + 10);
  REQUIRE(revoked);
  CHECK(*revoked == 1);
  auto g2 = store.auth_generation();
  REQUIRE(g2);
  CHECK(*g2 > *g1);
  CHECK(*store.revoke_admin("ops", kT0 + 20) == 0);
  CHECK(*store.auth_generation() == *g2);
}

TEST_CASE_TEMPLATE("a replica reloads the auth snapshot only when the auth generation moved (or for liveness)", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  test::ManualClock clock;
  control::AuthCache cache(clock);
  CHECK(cache.refresh_once(store));  // the first pass loads
  CHECK(cache.refreshes() == 1);
  CHECK(!cache.refresh_once(store));  // nothing moved: one tiny read, no snapshot
  CHECK(!cache.refresh_once(store));
  CHECK(cache.refresh_skips() == 2);
  submitted(store, make_task());  // not authorisation: still nothing to load
  CHECK(!cache.refresh_once(store));

  // Another replica adds an admin certificate: the next pass loads it.
  const auto not_after = to_unix_ms(clock.now()) + 3'600'000;
  REQUIRE(store.insert_admin_cert({"ab01", "ops", "fp", to_unix_ms(clock.now()), not_after, std::nullopt}));
  CHECK(cache.refresh_once(store));
  CHECK(cache.refreshes() == 2);
  CHECK(!cache.refresh_once(store));
  // ...and revokes it.
  REQUIRE(store.revoke_admin("ops", to_unix_ms(clock.now())));
  CHECK(cache.refresh_once(store));
  CHECK(cache.refreshes() == 3);

  // Liveness heard by other replicas moves no generation: a full load every kFullRefreshEvery.
  clock.advance(control::AuthCache::kFullRefreshEvery);
  CHECK(cache.refresh_once(store));
  CHECK(!cache.refresh_once(store));
}

TEST_CASE_TEMPLATE("completing twice with the same outcome answers as the first time", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  submitted(store, make_task());
  auto leased = lease(store, node_query(kNodeA, kT0));
  REQUIRE(leased.size() == 1);
  auto c = completion(leased[0], kNodeA, "succeeded", kT0 + 100);
  c.exit_code = 0;
  c.output = "hello";
  auto first = complete(store, c);
  CHECK(first.check == FenceCheck::ok);
  CHECK(first.state == TaskState::succeeded);
  c.now_ms = kT0 + 200;
  auto second = complete(store, c);
  CHECK(second.check == FenceCheck::ok);
  CHECK(second.state == TaskState::succeeded);
  CHECK(find(store, leased[0].id).finished_at_ms == kT0 + 100);  // the repeat changed nothing

  auto different = c;
  different.outcome = "failed";
  different.reason = FailureReason::internal;
  CHECK(complete(store, different).check == FenceCheck::finished);

  // A transient failure repeated after the task went back to the queue is a repeat too.
  submitted(store, make_task());
  leased = lease(store, node_query(kNodeA, kT0 + 300));
  REQUIRE(leased.size() == 1);
  auto f = completion(leased[0], kNodeA, "failed", kT0 + 400);
  f.reason = FailureReason::killed;
  f.retry_not_before_ms = kT0 + 500;
  CHECK(complete(store, f).state == TaskState::queued);
  auto repeat = complete(store, f);
  CHECK(repeat.check == FenceCheck::ok);
  CHECK(repeat.state == TaskState::queued);
  CHECK(find(store, leased[0].id).attempts == 1);
}

TEST_CASE_TEMPLATE("an old fence cannot extend or complete after the task was leased again", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  submitted(store, make_task());
  auto old = lease(store, node_query(kNodeA, kT0));
  REQUIRE(old.size() == 1);
  auto ext = store.extend_lease(old[0].id, kNodeA, old[0].fence, 5000, kT0 + 1000, true);
  REQUIRE(ext);
  CHECK(ext->check == FenceCheck::ok);
  CHECK(find(store, old[0].id).state == TaskState::running);
  CHECK(find(store, old[0].id).lease_expires_ms == kT0 + 6000);

  // Another node cannot touch A's lease; an unknown task is not found.
  auto other = store.extend_lease(old[0].id, kNodeB, old[0].fence, 5000, kT0 + 1000, true);
  REQUIRE(other);
  CHECK(other->check == FenceCheck::stale);
  auto missing = store.extend_lease("10000000-0000-4000-8000-999999999999", kNodeA, 1, 5000, kT0, true);
  REQUIRE(missing);
  CHECK(missing->check == FenceCheck::not_found);

  // Expired, not swept yet: no extend (the lease is over).
  auto late = store.extend_lease(old[0].id, kNodeA, old[0].fence, 5000, kT0 + 6000, true);
  REQUIRE(late);
  CHECK(late->check == FenceCheck::stale);

  REQUIRE(store.expire_leases(kT0 + 6000, [](std::int64_t) { return 0; }));
  auto fresh = lease(store, node_query(kNodeB, kT0 + 6001));
  REQUIRE(fresh.size() == 1);
  CHECK(fresh[0].fence == old[0].fence + 1);

  auto stale_complete = complete(store, completion(old[0], kNodeA, "succeeded", kT0 + 6002));
  CHECK(stale_complete.check == FenceCheck::stale);
  auto stale_extend = store.extend_lease(old[0].id, kNodeA, old[0].fence, 5000, kT0 + 6002, true);
  REQUIRE(stale_extend);
  CHECK(stale_extend->check == FenceCheck::stale);
  // The old fence from the new holder is refused too.
  auto wrong_fence = completion(fresh[0], kNodeB, "succeeded", kT0 + 6003);
  wrong_fence.fence = old[0].fence;
  CHECK(complete(store, wrong_fence).check == FenceCheck::stale);

  CHECK(complete(store, completion(fresh[0], kNodeB, "succeeded", kT0 + 6004)).state == TaskState::succeeded);
  const auto done = find(store, old[0].id);
  CHECK(done.state == TaskState::succeeded);
  CHECK(done.leased_by == kNodeB);
}

TEST_CASE_TEMPLATE("cancel: a queued task ends at once, a running one is told to stop", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  const auto queued = submitted(store, make_task());
  auto out = store.cancel_task(queued.id, kT0 + 1);
  REQUIRE(out);
  CHECK(*out == CancelOutcome::cancelled);
  CHECK(find(store, queued.id).state == TaskState::cancelled);
  CHECK(lease(store, node_query(kNodeA, kT0 + 2)).empty());
  out = store.cancel_task(queued.id, kT0 + 3);
  REQUIRE(out);
  CHECK(*out == CancelOutcome::already_final);
  out = store.cancel_task("10000000-0000-4000-8000-999999999999", kT0 + 3);
  REQUIRE(out);
  CHECK(*out == CancelOutcome::not_found);

  const auto running = submitted(store, make_task());
  const auto bystander = submitted(store, make_task());
  auto leased = lease(store, node_query(kNodeA, kT0 + 10, 2));
  REQUIRE(leased.size() == 2);
  out = store.cancel_task(running.id, kT0 + 20);
  REQUIRE(out);
  CHECK(*out == CancelOutcome::stop_requested);
  const std::vector<std::string> held{running.id, bystander.id};
  auto among = store.cancelled_among(kNodeA, held);
  REQUIRE(among);
  CHECK(*among == std::vector<std::string>{running.id});
  auto for_b = store.cancelled_among(kNodeB, held);
  REQUIRE(for_b);
  CHECK(for_b->empty());
  auto ext = store.extend_lease(running.id, kNodeA, leased[0].fence, 5000, kT0 + 30, true);
  REQUIRE(ext);
  CHECK(ext->check == FenceCheck::ok);
  CHECK(ext->cancel_requested);
  // Whatever the node reports for a cancelled task, it ends cancelled and is not retried.
  auto c = completion(leased[0], kNodeA, "failed", kT0 + 40);
  c.reason = FailureReason::killed;
  CHECK(complete(store, c).state == TaskState::cancelled);
  CHECK(find(store, running.id).state == TaskState::cancelled);
}

TEST_CASE_TEMPLATE("history is pruned by age and by count per node", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  // Five tasks finished on A at T0+1..5, two on B at T0+1..2, one still queued.
  std::vector<std::string> a_ids;
  for (int i = 1; i <= 5; ++i) {
    submitted(store, make_task());
    auto l = lease(store, node_query(kNodeA, kT0 + i));
    REQUIRE(l.size() == 1);
    REQUIRE(complete(store, completion(l[0], kNodeA, "succeeded", kT0 + i)).check == FenceCheck::ok);
    a_ids.push_back(l[0].id);
  }
  std::vector<std::string> b_ids;
  for (int i = 1; i <= 2; ++i) {
    submitted(store, make_task());
    auto l = lease(store, node_query(kNodeB, kT0 + i));
    REQUIRE(l.size() == 1);
    REQUIRE(complete(store, completion(l[0], kNodeB, "succeeded", kT0 + i)).check == FenceCheck::ok);
    b_ids.push_back(l[0].id);
  }
  const auto waiting = submitted(store, make_task());

  // Age: everything finished before T0+2 goes (A's first, B's first).
  auto pruned = store.prune_tasks(kT0 + 2, 1000);
  REQUIRE(pruned);
  CHECK(*pruned == 2);
  CHECK(!store.find_task(a_ids[0])->has_value());
  auto attempts = store.list_task_attempts(a_ids[0]);
  REQUIRE(attempts);
  CHECK(attempts->empty());

  // Count: A keeps its newest two, B its one; the queued task is never pruned.
  pruned = store.prune_tasks(0, 2);
  REQUIRE(pruned);
  CHECK(*pruned == 2);
  auto left = store.list_tasks({});
  REQUIRE(left);
  std::set<std::string> ids;
  for (const auto& t : *left) ids.insert(t.id);
  CHECK(ids == std::set<std::string>{a_ids[3], a_ids[4], b_ids[1], waiting.id});
  auto by_b = store.list_tasks({std::nullopt, kNodeB, 100});
  REQUIRE(by_b);
  CHECK(by_b->size() == 1);
}

TEST_CASE_TEMPLATE("list_tasks filters by state and node, newest first, without output", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto first = make_task();
  first.node_id = kNodeA;
  submitted(store, first);
  const auto second = submitted(store, make_task(kT0 + 1));
  auto l = lease(store, node_query(kNodeB, kT0 + 2));
  REQUIRE(l.size() == 1);
  CHECK(l[0].id == second.id);  // first is addressed to A
  auto c = completion(l[0], kNodeB, "succeeded", kT0 + 3);
  c.output = "secret-free output";
  REQUIRE(complete(store, c).check == FenceCheck::ok);

  auto all = store.list_tasks({});
  REQUIRE(all);
  CHECK(ids_of(*all) == std::vector<std::string>{second.id, first.id});
  CHECK((*all)[0].output.empty());
  CHECK(find(store, second.id).output == "secret-free output");
  auto queued = store.list_tasks({TaskState::queued, std::nullopt, 100});
  REQUIRE(queued);
  CHECK(ids_of(*queued) == std::vector<std::string>{first.id});
  auto of_a = store.list_tasks({std::nullopt, kNodeA, 100});
  REQUIRE(of_a);
  CHECK(ids_of(*of_a) == std::vector<std::string>{first.id});

  auto heads = store.queued_heads(100);
  REQUIRE(heads);
  CHECK(ids_of(*heads) == std::vector<std::string>{first.id});
}

TEST_CASE_TEMPLATE("queued_heads lists the head of each serial key only", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  auto a = make_task();
  a.serial_key = "k";
  auto b = make_task();
  b.serial_key = "k";
  auto free = make_task();
  submitted(store, a);
  submitted(store, b);
  submitted(store, free);
  auto heads = store.queued_heads(100);
  REQUIRE(heads);
  CHECK(ids_of(*heads) == std::vector<std::string>{a.id, free.id});
  REQUIRE(lease(store, node_query(kNodeA, kT0)).size() == 1);  // a is leased: b still waits
  heads = store.queued_heads(100);
  REQUIRE(heads);
  CHECK(ids_of(*heads) == std::vector<std::string>{free.id});
}

TEST_CASE_TEMPLATE("events: duplicate ids are dropped and a cursor pages without gaps or repeats; capabilities are kept", B,
                   CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  // Events reference enrolled nodes on every backend: enroll A and B first.
  TokenRecord token;
  token.id = "t1";
  token.hash = std::string(64, 'a');
  token.expires_at_ms = kT0 * 2;
  token.max_uses = 10;
  REQUIRE(store.insert_token(token));
  for (const auto& id : {kNodeA, kNodeB}) {
    EnrollmentCommit c;
    c.token_id = "t1";
    c.now_ms = kT0;
    c.node.id = id;
    c.cert.serial_hex = "serial-" + id;
    c.cert.node_id = id;
    c.cert.not_after_ms = kT0 * 2;
    c.cert.reason = "enroll";
    auto out = store.commit_enrollment(c);
    REQUIRE(out);
    REQUIRE(*out == EnrollmentOutcome::committed);
  }
  // The capabilities of a heartbeat are kept with the node's status (placement reads them).
  HeartbeatRecord hb{kNodeA, kT0, {}};
  hb.request.capabilities = {"systemd", "kvm"};
  std::vector<HeartbeatRecord> beats{hb};
  auto written = store.write_heartbeats(beats);
  REQUIRE(written);
  REQUIRE((*written)[0]);
  auto node = store.find_node(kNodeA);
  REQUIRE(node);
  REQUIRE(node->has_value());
  REQUIRE((**node).status);
  CHECK((**node).status->last.capabilities == std::vector<std::string>{"systemd", "kvm"});

  auto event = [](const std::string& node, const std::string& id, std::int64_t at) {
    NodeEventRecord e;
    e.node_id = node;
    e.event_id = id;
    e.severity = "info";
    e.kind = "task.succeeded";
    e.message = "m " + id;
    e.time = "2030-01-01T00:00:00Z";
    e.received_at_ms = at;
    return e;
  };
  std::vector<NodeEventRecord> batch{event(kNodeA, "e1", kT0), event(kNodeA, "e2", kT0), event(kNodeB, "e1", kT0)};
  auto stored = store.insert_events(batch);
  REQUIRE(stored);
  CHECK(*stored == 3);  // the same id on two nodes is two events
  std::vector<NodeEventRecord> again{event(kNodeA, "e2", kT0 + 1), event(kNodeA, "e3", kT0 + 1)};
  stored = store.insert_events(again);
  REQUIRE(stored);
  CHECK(*stored == 1);

  EventQuery page;
  page.after_seq = 0;
  page.limit = 2;
  auto first = store.list_events(page);
  REQUIRE(first);
  REQUIRE(first->size() == 2);
  CHECK((*first)[0].seq < (*first)[1].seq);
  page.after_seq = (*first)[1].seq;
  auto second = store.list_events(page);
  REQUIRE(second);
  REQUIRE(second->size() == 2);
  CHECK((*second)[0].seq > (*first)[1].seq);
  page.after_seq = (*second)[1].seq;
  auto third = store.list_events(page);
  REQUIRE(third);
  CHECK(third->empty());
  std::vector<std::string> seen;
  for (const auto* list : {&*first, &*second}) {
    for (const auto& e : *list) seen.push_back(e.node_id.substr(35) + "/" + e.event_id);
  }
  CHECK(seen == std::vector<std::string>{"a/e1", "a/e2", "b/e1", "a/e3"});

  // A new event after the follower's cursor is the next one it sees.
  std::vector<NodeEventRecord> late{event(kNodeB, "e9", kT0 + 2)};
  REQUIRE(store.insert_events(late));
  auto fourth = store.list_events(page);
  REQUIRE(fourth);
  REQUIRE(fourth->size() == 1);
  CHECK((*fourth)[0].event_id == "e9");

  EventQuery of_b;
  of_b.node_id = kNodeB;
  of_b.after_seq = 0;
  auto b_events = store.list_events(of_b);
  REQUIRE(b_events);
  CHECK(b_events->size() == 2);
}

TEST_CASE_TEMPLATE("module catalog, assignments and escrowed keys round-trip", B, CAIRN_STORE_BACKENDS) {
  CAIRN_OPEN_STORE(B);
  ModuleRecord m{"tools", "1.0", "127.0.0.1:5000/tools@sha256:aa", "sha256:bb", 10, R"({"keys":[]})", kT0};
  REQUIRE(store.upsert_module(m));
  m.priority = 20;
  REQUIRE(store.upsert_module(m));  // same (name, version): updated
  REQUIRE(store.upsert_module({"tools", "2.0", "r2", "sha256:cc", 5, "{}", kT0 + 1}));
  auto modules = store.list_modules();
  REQUIRE(modules);
  REQUIRE(modules->size() == 2);
  CHECK((*modules)[0].version == "1.0");
  CHECK((*modules)[0].priority == 20);
  CHECK((*modules)[0].trust_json == R"({"keys":[]})");

  AssignmentRecord to_node{"20000000-0000-4000-8000-000000000001", "tools", "1.0", kNodeA, {}, kT0};
  AssignmentRecord to_zone{"20000000-0000-4000-8000-000000000002", "tools", "2.0", std::nullopt, {{"zone", "a"}}, kT0 + 1};
  REQUIRE(store.insert_assignment(to_node));
  REQUIRE(store.insert_assignment(to_zone));
  CHECK(!store.insert_assignment(to_node));  // the id is taken
  auto assignments = store.list_assignments();
  REQUIRE(assignments);
  REQUIRE(assignments->size() == 2);
  CHECK((*assignments)[0].node_id == kNodeA);
  CHECK((*assignments)[1].selector == Labels{{"zone", "a"}});
  auto deleted = store.delete_assignment(to_node.id);
  REQUIRE(deleted);
  CHECK(*deleted);
  deleted = store.delete_assignment(to_node.id);
  REQUIRE(deleted);
  CHECK(!*deleted);

  auto none = store.find_escrow_key(kNodeA);
  REQUIRE(none);
  CHECK(!none->has_value());
  auto first = store.put_escrow_key_if_absent(kNodeA, "sealed-1");
  REQUIRE(first);
  CHECK(*first == "sealed-1");
  auto second = store.put_escrow_key_if_absent(kNodeA, "sealed-2");
  REQUIRE(second);
  CHECK(*second == "sealed-1");  // the first key stays: the volume was formatted with it
  auto found = store.find_escrow_key(kNodeA);
  REQUIRE(found);
  CHECK(found->value_or("") == "sealed-1");
}
