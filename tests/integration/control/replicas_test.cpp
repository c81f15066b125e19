// Two real `cairn-control serve` replicas on one real PostgreSQL (issue 13): they share the
// state dir's CA and everything else through the database, so a node enrolled through one
// heartbeats through the other, a revocation through one is refused by the other within a
// second, and a replica killed with -9 loses nothing. A replica with a state dir of its own (as
// on another host) serves the module trust policy set through another (h-policystore).
#include <doctest/doctest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/policy.hpp"
#include "common/protocol/tasks.hpp"

#include "tests/integration/control/server_helpers.hpp"
#include "tests/support/postgres.hpp"
#include "tests/support/skip.hpp"

using namespace cairn;
using namespace cairn::test;

namespace {

// A second serve on the state dir of `first` (same CA and admin credential), or on `state` (a
// copy of it, as another host would hold), and the same database, on its own port (kept across
// a restart).
class Replica {
 public:
  Replica(const ControlServer& first, std::string database, std::filesystem::path state = {})
      : first_(first), database_(std::move(database)), state_(state.empty() ? first.state() : std::move(state)) {
    start();
  }
  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;
  ~Replica() { stop(SIGTERM); }

  void start() {
    const auto port_file = first_.scratch() / "replica.port";
    std::filesystem::remove(port_file);
    auto p = Process::spawn({control_binary(), "serve", "--state", state_.string(), "--listen",
                             "127.0.0.1:" + std::to_string(port_), "--port-file", port_file.string(), "--threads",
                             "2", "--database", database_},
                            {}, log_path());
    REQUIRE_MESSAGE(p.has_value(), (p ? "" : p.error().message));
    process_.emplace(std::move(*p));
    const bool up = wait_for([&] { return !slurp(port_file).empty() || !process_->running(); }, 20s);
    REQUIRE_MESSAGE(up, "replica did not write its port file; log:\n" << slurp(log_path()));
    REQUIRE_MESSAGE(process_->running(), "replica exited; log:\n" << slurp(log_path()));
    port_ = std::stoi(slurp(port_file));
  }
  void stop(int sig) {
    if (process_ && process_->running()) {
      process_->kill(sig);
      process_->wait_exit(10s);
    }
  }
  [[nodiscard]] std::string url(std::string_view path = "") const {
    return "https://127.0.0.1:" + std::to_string(port_) + std::string(path);
  }
  [[nodiscard]] std::filesystem::path log_path() const { return first_.scratch() / "replica.log"; }
  RunResult cli(std::vector<std::string> args) const {
    std::vector<std::string> argv = {control_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--state", state_.string(), "--server", url()});
    return run_capture(argv, first_.scratch());
  }

 private:
  const ControlServer& first_;
  std::string database_;
  std::filesystem::path state_;
  std::optional<Process> process_;
  int port_ = 0;
};

int heartbeat_status(const TlsOptions& tls, const std::string& url) {
  auto r = send(tls, "POST", url, heartbeat_body(), {{"Content-Type", "application/json"}});
  return r ? r->status : -1;
}

// An HTTP answer with its JSON body (status -1: no answer, e.g. the replica is down).
struct Answer {
  long status = -1;
  Json body;
};
Answer post(HttpClient& client, const std::string& url, const Json& body) {
  HttpRequest request;
  request.method = "POST";
  request.url = url;
  request.body = dump_json(body);
  request.headers = {{"Content-Type", "application/json"}};
  request.total_timeout = 20s;
  auto r = client.send(request);
  if (!r) return {};
  auto j = parse_json(r->body, "answer");
  return {r->status, j ? *j : Json(r->body)};
}

PostgresServer* postgres_or_skip(std::string& why) {
  PostgresServer* pg = shared_postgres(why);
  return pg;
}

#define REQUIRE_POSTGRES(pg)                                               \
  std::string why_;                                                        \
  PostgresServer* pg = postgres_or_skip(why_);                             \
  if (pg == nullptr) {                                                     \
    if (PostgresServer::unavailable_reason()) CAIRN_SKIP(why_);            \
    FAIL("PostgreSQL is installed but did not start: " << why_);           \
  }

}  // namespace

TEST_CASE("two replicas on one database share enrollment, heartbeats and revocation; kill -9 loses nothing") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  REQUIRE_POSTGRES(pg);
  auto database = fresh_postgres_database(*pg);
  REQUIRE_MESSAGE(database, (database ? "" : database.error().message));

  ControlServer a({"--database", *database});
  Replica b(a, *database);

  // enrolled through A, heard through B (B's cache learns the node from the database)
  const auto node = enroll_node(a);
  const auto tls = as_node(a, node);
  CHECK(wait_for([&] { return heartbeat_status(tls, b.url("/v1/heartbeat")) == 200; }, 5s, 50ms));
  // visible in both, Ready, with the heartbeat B took (A learns it from the database)
  auto shown_ready = [&](const RunResult& show) {
    if (show.exit_code != 0) return false;
    auto j = parse_json(show.out, "node show");
    return j && j->value("id", "") == node.id && j->value("state", "") == "Ready" && (*j)["heartbeat"].is_object();
  };
  CHECK(wait_for([&] { return shown_ready(b.cli({"node", "show", node.id, "--json"})); }, 5s, 100ms));
  CHECK(wait_for([&] { return shown_ready(a.cli({"node", "show", node.id, "--json"})); }, 5s, 100ms));
  const auto tokens_b = b.cli({"token", "list"});
  CHECK(tokens_b.exit_code == 0);

  // a task submitted through A is leased and completed through B, and A shows the result
  const auto submitted = a.cli({"task", "submit", "--json", "--kind", "exec", "--node", node.id, "--args-json",
                                 R"({"argv":["true"]})"});
  REQUIRE_MESSAGE(submitted.exit_code == 0, submitted.err << submitted.out);
  auto task = parse_json(submitted.out, "task submit");
  REQUIRE(task);
  const std::string task_id = (*task)["id"].get<std::string>();
  auto node_client = make_http_client(tls);
  protocol::LeaseRequest lease_request;
  lease_request.max_tasks = 4;
  lease_request.lease_s = 30;
  Answer leased;
  CHECK(wait_for(
      [&] {
        leased = post(*node_client, b.url("/v1/tasks/lease"), protocol::to_json(lease_request));
        return leased.status == 200 && leased.body.contains("tasks") && !leased.body["tasks"].empty();
      },
      5s, 50ms));
  REQUIRE_MESSAGE(leased.status == 200, dump_json(leased.body));
  REQUIRE(leased.body["tasks"].size() == 1);
  CHECK(leased.body["tasks"][0]["id"] == task_id);
  protocol::CompleteRequest done;
  done.fence = leased.body["tasks"][0]["fence"].get<std::int64_t>();
  done.outcome = "succeeded";
  done.exit_code = 0;
  auto completed = post(*node_client, b.url("/v1/tasks/" + task_id + "/complete"), protocol::to_json(done));
  CHECK_MESSAGE(completed.status == 200, dump_json(completed.body));
  const auto shown = a.cli({"task", "show", task_id, "--json"});
  REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
  auto shown_json = parse_json(shown.out, "task show");
  REQUIRE(shown_json);
  CHECK((*shown_json)["state"] == "succeeded");

  // kill -9 of B: A keeps serving; a node enrolled meanwhile is known to B once restarted
  b.stop(SIGKILL);
  CHECK(heartbeat_status(tls, a.url("/v1/heartbeat")) == 200);
  const auto second = enroll_node(a);
  b.start();
  CHECK(wait_for([&] { return heartbeat_status(as_node(a, second), b.url("/v1/heartbeat")) == 200; }, 5s, 50ms));
  CHECK(heartbeat_status(tls, b.url("/v1/heartbeat")) == 200);
  const auto list_b = b.cli({"node", "list"});
  REQUIRE_MESSAGE(list_b.exit_code == 0, list_b.err);
  CHECK(list_b.out.find(node.id) != std::string::npos);
  CHECK(list_b.out.find(second.id) != std::string::npos);

  // revoked through A: refused by B within one second of the revocation's answer
  const auto revoke = a.cli({"node", "revoke", node.id});
  REQUIRE_MESSAGE(revoke.exit_code == 0, revoke.err);
  const auto revoked_at = std::chrono::steady_clock::now();
  int status = 0;
  const bool refused = wait_for(
      [&] {
        status = heartbeat_status(tls, b.url("/v1/heartbeat"));
        return status == 401 || status == 403;
      },
      5s, 10ms);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - revoked_at);
  CHECK_MESSAGE(refused, "B still answered " << status);
  CHECK_MESSAGE(took < 1s, "B refused the revoked node only after " << took.count() << " ms");
  CHECK(heartbeat_status(as_node(a, second), b.url("/v1/heartbeat")) == 200);  // only that node
}

TEST_CASE("50 nodes complete 10,000 tasks through two replicas exactly once, across a kill -9 of one replica") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  REQUIRE_POSTGRES(pg);
  auto database = fresh_postgres_database(*pg);
  REQUIRE_MESSAGE(database, (database ? "" : database.error().message));
  constexpr int kNodes = 50;
  constexpr int kTasks = 10'000;
  constexpr int kBatch = 10;

  ControlServer a({"--database", *database, "--enroll-rate", "0"});
  Replica b(a, *database);
  const auto token = a.cli({"token", "create", "--uses", std::to_string(kNodes)});
  REQUIRE_MESSAGE(token.exit_code == 0, token.err);
  std::vector<EnrolledNode> nodes;
  for (int i = 0; i < kNodes; ++i) nodes.push_back(enroll_node_with_token(a, trim_output(token.out)));
  const std::vector<std::string> replicas = {a.url(), b.url()};

  std::atomic<int> submitted{0};
  std::atomic<int> completed{0};
  std::atomic<int> refused{0};
  std::atomic<bool> stop{false};
  std::mutex mutex;
  std::map<std::string, std::set<std::int64_t>> completions;  // task id -> fences completed (answered 200)

  // Submitters: through both replicas, idempotency keys so a retry after a lost answer is safe.
  std::vector<std::thread> threads;
  for (int s = 0; s < 4; ++s) {
    threads.emplace_back([&, s] {
      auto client = make_http_client(a.admin());
      for (int i = s; i < kTasks && !stop; i += 4) {
        Json body = {{"kind", "exec"}, {"args", {{"argv", {"true"}}}}, {"idempotency_key", "load-" + std::to_string(i)}};
        for (int attempt = 0; !stop; ++attempt) {
          auto r = post(*client, replicas[static_cast<std::size_t>(i + attempt) % 2] + "/v1/admin/tasks", body);
          if (r.status == 200) break;
          std::this_thread::sleep_for(20ms);  // that replica is down: the other one
        }
        ++submitted;
      }
    });
  }
  // Nodes: each heartbeats once, then leases batches and completes them, on its replica or,
  // when that one does not answer, on the other.
  for (int w = 0; w < 10; ++w) {
    threads.emplace_back([&, w] {
      std::vector<std::unique_ptr<HttpClient>> clients;
      for (int k = w; k < kNodes; k += 10) {
        clients.push_back(make_http_client(as_node(a, nodes[static_cast<std::size_t>(k)])));
      }
      protocol::HeartbeatRequest hb;
      hb.boot_id = "boot";
      hb.agent_version = "sim";
      hb.mount_state = "none";
      hb.cpu_count = 64;
      hb.mem_total_bytes = 1ULL << 36;
      hb.mem_available_bytes = 1ULL << 35;
      hb.disk_total_bytes = 1ULL << 40;
      hb.disk_free_bytes = 1ULL << 39;
      std::size_t turn = 0;
      int replica = w % 2;
      while (!stop && completed < kTasks) {
        const std::size_t slot = turn++ % clients.size();
        auto& client = *clients[slot];
        if (turn <= clients.size()) post(client, replicas[static_cast<std::size_t>(replica)] + "/v1/heartbeat", protocol::to_json(hb));
        protocol::LeaseRequest lr;
        lr.max_tasks = kBatch;
        lr.lease_s = 20;
        auto leased = post(client, replicas[static_cast<std::size_t>(replica)] + "/v1/tasks/lease", protocol::to_json(lr));
        if (leased.status != 200) {
          replica = 1 - replica;  // no answer: the other replica
          std::this_thread::sleep_for(10ms);
          continue;
        }
        if (leased.body["tasks"].empty()) {
          std::this_thread::sleep_for(5ms);
          continue;
        }
        for (const auto& t : leased.body["tasks"]) {
          const std::string id = t["id"].get<std::string>();
          protocol::CompleteRequest c;
          c.fence = t["fence"].get<std::int64_t>();
          c.outcome = "succeeded";
          c.exit_code = 0;
          for (int attempt = 0; !stop; ++attempt) {
            auto r = post(client, replicas[static_cast<std::size_t>(replica)] + "/v1/tasks/" + id + "/complete",
                          protocol::to_json(c));
            if (r.status == 200) {
              std::lock_guard lock(mutex);
              if (completions[id].insert(c.fence).second && completions[id].size() == 1) ++completed;
              break;
            }
            if (r.status == 409) {  // stale: the lease went to another node meanwhile
              ++refused;
              break;
            }
            replica = 1 - replica;  // no answer (a replica died mid-request): again on the other
            std::this_thread::sleep_for(10ms);
          }
        }
      }
    });
  }
  // kill -9 of B once a third is done; B back once two thirds are.
  CHECK(wait_for([&] { return completed >= kTasks / 3; }, 120s, 20ms));
  b.stop(SIGKILL);
  CHECK(wait_for([&] { return completed >= 2 * kTasks / 3; }, 120s, 20ms));
  b.start();
  const bool all = wait_for([&] { return completed >= kTasks; }, 180s, 50ms);
  stop = true;
  for (auto& t : threads) t.join();
  CHECK_MESSAGE(all, "completed " << completed.load() << " of " << kTasks << " (submitted " << submitted.load() << ")");

  // from the clients: every task completed once (one fence)
  int twice = 0;
  for (const auto& [id, fences] : completions) twice += fences.size() > 1 ? 1 : 0;
  CHECK(completions.size() == static_cast<std::size_t>(kTasks));
  CHECK(twice == 0);
  // from the store: every task succeeded, with exactly one successful attempt
  const std::string& db = *database;
  auto succeeded = pg->psql(db, "SELECT count(*) FROM tasks WHERE state = 'succeeded'");
  REQUIRE(succeeded);
  CHECK(trim_output(*succeeded) == std::to_string(kTasks));
  auto total = pg->psql(db, "SELECT count(*) FROM tasks");
  REQUIRE(total);
  CHECK(trim_output(*total) == std::to_string(kTasks));  // idempotent submits: no task twice
  auto once = pg->psql(db,
                       "SELECT count(*) FROM (SELECT task_id FROM task_attempts WHERE outcome = 'succeeded' "
                       "GROUP BY task_id HAVING count(*) = 1) x");
  REQUIRE(once);
  CHECK(trim_output(*once) == std::to_string(kTasks));
  MESSAGE("stale completions refused: " << refused.load());
}

// h-policystore: the module trust policy lives in the database, so a replica on another host
// (its own state dir: a copy of the first one's CA, admin credential and escrow key, no policy
// file) serves a policy set through another in its heartbeat replies, within its cache's
// refresh period (1 s); and the version rule holds across replicas.
TEST_CASE("a module policy set through one replica is served by another with its own state dir within a second") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  REQUIRE_POSTGRES(pg);
  auto database = fresh_postgres_database(*pg);
  REQUIRE_MESSAGE(database, (database ? "" : database.error().message));

  ControlServer a({"--database", *database});
  const auto b_state = a.scratch() / "state-b";
  std::filesystem::copy(a.state(), b_state, std::filesystem::copy_options::recursive);
  Replica b(a, *database, b_state);
  const auto node = enroll_node(a);
  const auto tls = as_node(a, node);

  // Signed policies, as `cairn-module policy sign` writes them.
  auto policy_key = generate_key(KeyType::ed25519).value();
  auto module_key = generate_key(KeyType::ed25519).value();
  auto policy_file = [&](std::uint64_t version) {
    module::ModulePolicy p;
    p.version = version;
    const auto id = module::key_id(module_key.get()).value();
    p.key_pems[id] = public_key_pem(module_key.get()).value();
    p.rules.push_back({"web-*", {id}});
    const auto file = a.scratch() / ("policy-" + std::to_string(version) + ".signed.json");
    auto signed_policy = module::sign_policy(policy_key.get(), module::policy_text(p));
    REQUIRE(signed_policy);
    REQUIRE(write_file_atomic(file, module::serialize_signed_policy(*signed_policy)));
    return file.string();
  };
  // The policy version a heartbeat reply of `replica` carries (0: none; -1: no answer).
  auto served_version = [&](const std::string& replica_url) -> std::int64_t {
    auto r = send(tls, "POST", replica_url + "/v1/heartbeat", heartbeat_body(), {{"Content-Type", "application/json"}});
    if (!r || r->status != 200) return -1;
    auto reply = protocol::decode_heartbeat_response(r->body);
    if (!reply) return -1;
    if (reply->module_policy.is_null()) return 0;
    auto signed_policy = module::signed_policy_from_json(reply->module_policy);
    auto policy = signed_policy ? module::parse_policy(signed_policy->policy_text) : Result<module::ModulePolicy>(fail(signed_policy.error()));
    return policy ? static_cast<std::int64_t>(policy->version) : -1;
  };
  // Set through `from`, then how long until `to` serves it.
  auto propagation = [&](auto& from, const std::string& to_url, std::uint64_t version) {
    const auto set = from.cli({"module", "policy", "set", policy_file(version)});
    REQUIRE_MESSAGE(set.exit_code == 0, set.err << set.out);
    const auto set_at = std::chrono::steady_clock::now();
    std::int64_t seen = -1;
    const bool served = wait_for([&] { return (seen = served_version(to_url)) == static_cast<std::int64_t>(version); }, 5s, 10ms);
    CHECK_MESSAGE(served, "still served version " << seen);
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - set_at);
  };

  // B answers the node once its cache learnt it from the database; neither has a policy.
  CHECK(wait_for([&] { return served_version(b.url()) == 0; }, 5s, 50ms));
  CHECK(served_version(a.url()) == 0);
  // One refresh period (1 s) plus a heartbeat's round trip at most.
  const auto a_to_b = propagation(a, b.url(), 1);
  CHECK_MESSAGE(a_to_b < 1500ms, "B served the policy set through A only after " << a_to_b.count() << " ms");
  MESSAGE("A -> B: " << a_to_b.count() << " ms");
  const auto shown = b.cli({"module", "policy", "show", "--json"});
  REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
  auto shown_json = parse_json(shown.out, "policy show");
  REQUIRE(shown_json);
  CHECK((*shown_json)["version"] == 1);

  const auto b_to_a = propagation(b, a.url(), 2);
  CHECK_MESSAGE(b_to_a < 1500ms, "A served the policy set through B only after " << b_to_a.count() << " ms");
  // A refuses to go back to version 1: the rule is the store's, not a replica's memory.
  const auto back = a.cli({"module", "policy", "set", policy_file(1)});
  CHECK(back.exit_code != 0);
  CHECK_MESSAGE((back.err + back.out).find("does not follow the stored version 2") != std::string::npos, back.err << back.out);
  CHECK(served_version(b.url()) == 2);
  CHECK_FALSE(std::filesystem::exists(a.state() / "module-policy.json"));  // nothing in the state dirs
  CHECK_FALSE(std::filesystem::exists(b_state / "module-policy.json"));
}
