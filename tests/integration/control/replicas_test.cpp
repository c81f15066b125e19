// Two real `cairn-control serve` replicas on one real PostgreSQL (issue 13): they share the
// state dir's CA and everything else through the database, so a node enrolled through one
// heartbeats through the other, a revocation through one is refused by the other within a
// second, and a replica killed with -9 loses nothing.
#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <string>

#include "tests/integration/control/server_helpers.hpp"
#include "tests/support/postgres.hpp"
#include "tests/support/skip.hpp"

using namespace cairn;
using namespace cairn::test;

namespace {

// A second serve on the state dir of `first` (same CA and admin credential) and the same
// database, on its own port (kept across a restart).
class Replica {
 public:
  Replica(const ControlServer& first, std::string database) : first_(first), database_(std::move(database)) {
    start();
  }
  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;
  ~Replica() { stop(SIGTERM); }

  void start() {
    const auto port_file = first_.scratch() / "replica.port";
    std::filesystem::remove(port_file);
    auto p = Process::spawn({control_binary(), "serve", "--state", first_.state().string(), "--listen",
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
    argv.insert(argv.end(), {"--state", first_.state().string(), "--server", url()});
    return run_capture(argv, first_.scratch());
  }

 private:
  const ControlServer& first_;
  std::string database_;
  std::optional<Process> process_;
  int port_ = 0;
};

int heartbeat_status(const TlsOptions& tls, const std::string& url) {
  auto r = send(tls, "POST", url, heartbeat_body(), {{"Content-Type", "application/json"}});
  return r ? r->status : -1;
}

}  // namespace

TEST_CASE("two replicas on one database share enrollment, heartbeats and revocation; kill -9 loses nothing") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  std::string why;
  PostgresServer* pg = shared_postgres(why);
  if (pg == nullptr) {
    if (PostgresServer::unavailable_reason()) CAIRN_SKIP(why);
    FAIL("PostgreSQL is installed but did not start: " << why);
  }
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
