// Tasks end to end (issue 13): the real cairn-agent service and the real cairn-control on
// 127.0.0.1. An exec task submitted with `cairn-control task submit` runs on the node and its
// output is in `task show`; an agent killed with SIGKILL mid-task loses its lease, the task
// returns to the queue and runs again once the agent is back.
#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "common/json.hpp"
#include "common/uuid.hpp"
#include "tests/support/control_server.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {
namespace {

std::string agent_binary() {
  const char* path = std::getenv("CAIRN_AGENT");
  return path != nullptr ? path : "";
}

// A node with its own host root (cairn.id= on its kernel command line), enrolled by the
// real `cairn-agent enroll`, whose service runs until stopped.
class Node {
 public:
  explicit Node(const ControlServer& server) : server_(server), id_(random_uuid().str()) {
    std::filesystem::create_directories(root() / "proc");
    std::ofstream(root() / "proc/cmdline") << "quiet cairn.id=" << id_ << "\n";
    const auto token = server.cli({"token", "create"});
    REQUIRE_MESSAGE(token.exit_code == 0, token.err);
    const auto enrolled = run_capture(argv({"enroll", "--token", trim_output(token.out)}), dir_.path());
    REQUIRE_MESSAGE(enrolled.exit_code == 0, enrolled.out << enrolled.err);
  }
  ~Node() { stop(SIGKILL); }

  [[nodiscard]] const std::string& id() const { return id_; }
  [[nodiscard]] std::filesystem::path root() const { return dir_.path() / "root"; }
  [[nodiscard]] std::filesystem::path scratch() const { return dir_.path(); }
  [[nodiscard]] std::filesystem::path log() const { return dir_.path() / "agent.log"; }

  void start() {
    auto p = Process::spawn(argv({"service", "--min-backoff-ms", "200", "--max-backoff-ms", "1000"}), {}, log());
    REQUIRE_MESSAGE(p.has_value(), (p ? "" : p.error().message));
    service_.emplace(std::move(*p));
  }
  std::optional<int> stop(int sig) {
    if (!service_) return std::nullopt;
    service_->kill(sig);
    auto code = service_->wait_exit(std::chrono::seconds(60));
    service_.reset();
    return code;
  }

 private:
  [[nodiscard]] std::vector<std::string> argv(std::vector<std::string> args) const {
    std::vector<std::string> v = {agent_binary(), "--root", root().string(), "--control", server_.url(),
                                  "--ca", (server_.state() / "ca.crt").string()};
    v.insert(v.end(), args.begin(), args.end());
    return v;
  }

  const ControlServer& server_;
  TempDir dir_;
  std::string id_;
  std::optional<Process> service_;
};

// `task submit --json ... -- ARGS`: the state and server flags go before the exec argv.
std::string submit(const ControlServer& server, std::vector<std::string> args) {
  std::vector<std::string> argv = {control_binary(), "task", "submit", "--json", "--state", server.state().string(),
                                   "--server", server.url()};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto r = run_capture(argv, server.scratch());
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  auto j = parse_json(r.out, "task submit --json");
  REQUIRE(j);
  REQUIRE(j->contains("id"));
  return (*j)["id"].get<std::string>();
}

Json show(const ControlServer& server, const std::string& id) {
  const auto r = server.cli({"task", "show", id, "--json"});
  if (r.exit_code != 0) return Json(nullptr);
  return parse_json(r.out, "task show --json").value_or(Json(nullptr));
}

std::string state_of(const ControlServer& server, const std::string& id) {
  const auto j = show(server, id);
  return j.is_object() && j.contains("state") && j["state"].is_string() ? j["state"].get<std::string>() : "";
}

}  // namespace

TEST_CASE("an exec task submitted to a node runs on cairn-agent service and its output is in task show") {
  ControlServer server({"--heartbeat-interval", "1s", "--max-lease", "5s"});
  Node node(server);
  node.start();
  const auto id = submit(server, {"--kind", "exec", "--node", node.id(), "--", "sh", "-c", "echo hello from the node; exit 0"});
  const bool done = wait_for([&] { return state_of(server, id) == "succeeded"; }, std::chrono::seconds(60), std::chrono::milliseconds(250));
  const auto j = show(server, id);
  REQUIRE_MESSAGE(done, dump_json(j, 2) << "\nagent log:\n" << slurp(node.log()));
  CHECK(j["output"] == "hello from the node\n");
  CHECK(j["exit_code"] == 0);
  REQUIRE(j["attempts"].is_array());
  CHECK(j["attempts"].size() == 1);
  // The task's transitions reached control as events, from the node's buffer.
  const bool events = wait_for([&] {
    const auto r = server.cli({"events", "--node", node.id()});
    return r.out.find("task.succeeded") != std::string::npos && r.out.find("task.started") != std::string::npos;
  }, std::chrono::seconds(30), std::chrono::milliseconds(250));
  CHECK_MESSAGE(events, server.cli({"events", "--node", node.id()}).out);
  CHECK(node.stop(SIGTERM) == 0);
}

TEST_CASE("kill -9 of the agent mid-task: the task returns after its lease and runs again") {
  ControlServer server({"--heartbeat-interval", "1s", "--max-lease", "5s", "--retry-base", "1s"});
  Node node(server);
  node.start();
  // The first attempt marks its start and waits forever; the second finds the mark and ends.
  const auto mark = node.scratch() / "first-attempt";
  const auto pidfile = node.scratch() / "first-attempt.pid";
  const std::string script = "if [ -e " + mark.string() + " ]; then echo second attempt; exit 0; fi; echo $$ > " +
                             pidfile.string() + "; touch " + mark.string() + "; exec sleep 3600";
  const auto id = submit(server, {"--kind", "exec", "--node", node.id(), "--max-attempts", "3", "--", "sh", "-c", script});
  REQUIRE_MESSAGE(wait_for([&] { return std::filesystem::exists(mark) && state_of(server, id) == "running"; },
                           std::chrono::seconds(60), std::chrono::milliseconds(250)),
                  dump_json(show(server, id), 2) << "\nagent log:\n" << slurp(node.log()));
  pid_t first = 0;
  std::ifstream(pidfile) >> first;
  REQUIRE(first > 0);

  node.stop(SIGKILL);  // no drain, no completion: only the lease can tell control
  // The agent's child went with it (PDEATHSIG), so the node is not running two attempts.
  CHECK(wait_for([&] { return ::kill(first, 0) != 0 || slurp("/proc/" + std::to_string(first) + "/stat").find(") Z") != std::string::npos; },
                 std::chrono::seconds(10)));
  // The lease (5 s) runs out: the task goes back to the queue (lease_lost is transient).
  const bool requeued = wait_for([&] {
    const auto s = state_of(server, id);
    return s == "queued";
  }, std::chrono::seconds(30), std::chrono::milliseconds(200));
  CHECK_MESSAGE(requeued, dump_json(show(server, id), 2));

  node.start();
  const bool done = wait_for([&] { return state_of(server, id) == "succeeded"; }, std::chrono::seconds(60),
                             std::chrono::milliseconds(250));
  const auto j = show(server, id);
  REQUIRE_MESSAGE(done, dump_json(j, 2) << "\nagent log:\n" << slurp(node.log()));
  CHECK(j["output"] == "second attempt\n");
  REQUIRE(j["attempts"].is_array());
  REQUIRE(j["attempts"].size() == 2);
  CHECK(j["attempts"][0]["outcome"] == "lease_lost");  // the killed agent never reported it
  CHECK(j["attempts"][1]["outcome"] == "succeeded");
  CHECK(j["attempts"][1]["fence"] == 2);
  CHECK(node.stop(SIGTERM) == 0);
}

}  // namespace cairn::test

namespace cairn::test {

// tasks (h-taskbatch): `task submit --batch FILE` queues many tasks in one request; the agent
// runs them (completing those that finish together in one request) and each succeeds once.
TEST_CASE("task submit --batch queues every task of a file once; the node runs each exactly once") {
  ControlServer server({"--heartbeat-interval", "1s", "--max-lease", "5s"});
  Node node(server);
  Json tasks = Json::array();
  for (int i = 0; i < 8; ++i) {
    tasks.push_back({{"kind", "exec"},
                     {"node", node.id()},
                     {"args", {{"argv", {"sh", "-c", "echo batch " + std::to_string(i)}}}},
                     {"idempotency_key", "batch-e2e-" + std::to_string(i)}});
  }
  const auto file = server.scratch() / "tasks.json";
  std::ofstream(file) << dump_json(tasks, 2);
  auto submit_file = [&] {
    const auto r = run_capture({control_binary(), "task", "submit", "--json", "--state", server.state().string(),
                                "--server", server.url(), "--batch", file.string()},
                               server.scratch());
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
    auto j = parse_json(r.out, "task submit --batch --json");
    REQUIRE(j);
    return *j;
  };
  const Json first = submit_file();
  CHECK(first["created"] == 8);
  REQUIRE(first["tasks"].size() == 8);
  CHECK(submit_file()["created"] == 0);  // the same file again: every key is known

  node.start();
  std::vector<std::string> ids;
  for (const auto& t : first["tasks"]) ids.push_back(t["id"].get<std::string>());
  const bool done = wait_for([&] {
    for (const auto& id : ids) {
      if (state_of(server, id) != "succeeded") return false;
    }
    return true;
  }, std::chrono::seconds(120), std::chrono::milliseconds(500));
  REQUIRE_MESSAGE(done, "agent log:\n" << slurp(node.log()));
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const auto j = show(server, ids[i]);
    CHECK(j["output"] == "batch " + std::to_string(i) + "\n");
    CHECK(j["attempts"].size() == 1);
  }
  CHECK(node.stop(SIGTERM) == 0);
}

}  // namespace cairn::test
