// The spine end to end: the real cairn-agent enrolling with and heartbeating to the real
// cairn-control, both on 127.0.0.1, each node with its own fake host root.
#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>
#include <string>
#include <vector>

#include "common/crypto.hpp"
#include "common/fd.hpp"
#include "common/fs.hpp"
#include "common/json.hpp"
#include "common/uuid.hpp"
#include "tests/support/control_server.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {
namespace {

std::string agent_binary() {
  const char* path = std::getenv("CAIRN_AGENT");
  return path != nullptr ? path : "";
}

std::string create_token(const ControlServer& server, std::vector<std::string> flags = {}) {
  std::vector<std::string> args = {"token", "create"};
  args.insert(args.end(), flags.begin(), flags.end());
  const auto r = server.cli(args);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  return trim_output(r.out);
}

// One simulated node: a host root whose kernel command line names it (cairn.id=), its
// persist volume under that root, and the agent pointed at the server.
class Node {
 public:
  explicit Node(const ControlServer& server) : server_(server), id_(random_uuid().str()) {
    std::filesystem::create_directories(root() / "proc");
    std::ofstream(root() / "proc/cmdline") << "console=ttyS0 quiet cairn.id=" << id_ << "\n";
  }

  [[nodiscard]] const std::string& id() const { return id_; }
  [[nodiscard]] std::filesystem::path root() const { return dir_.path() / "root"; }
  [[nodiscard]] std::filesystem::path state() const { return root() / "persist/cairn"; }
  [[nodiscard]] std::filesystem::path log() const { return dir_.path() / "agent.log"; }

  [[nodiscard]] std::vector<std::string> argv(std::vector<std::string> args) const {
    std::vector<std::string> v = {agent_binary(), "--root", root().string(), "--control", server_.url(),
                                  "--ca", (server_.state() / "ca.crt").string()};
    v.insert(v.end(), args.begin(), args.end());
    return v;
  }
  RunResult run(std::vector<std::string> args) const { return run_capture(argv(std::move(args)), dir_.path()); }

  // `wrapper` runs first with the agent's argv appended (e.g. a mount namespace).
  void start_service(std::vector<std::string> wrapper = {}, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"service", "--min-backoff-ms", "200", "--max-backoff-ms", "1000"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto command = std::move(wrapper);
    for (auto& a : argv(std::move(args))) command.push_back(std::move(a));
    auto p = Process::spawn(command, {}, log());
    REQUIRE_MESSAGE(p.has_value(), (p ? "" : p.error().message));
    service_.emplace(std::move(*p));
  }
  [[nodiscard]] pid_t service_pid() const { return service_ ? service_->pid() : -1; }
  std::optional<int> stop_service(int sig = SIGTERM) {
    if (!service_) return std::nullopt;
    service_->kill(sig);
    auto code = service_->wait_exit(10s);
    service_.reset();
    return code;
  }

 private:
  const ControlServer& server_;
  TempDir dir_;
  std::string id_;
  std::optional<Process> service_;
};

// The node as the operator sees it (`cairn-control node show ID --json`).
Json node_view(const ControlServer& server, const std::string& id) {
  const auto r = server.cli({"node", "show", id, "--json"});
  if (r.exit_code != 0) return Json(nullptr);
  return parse_json(r.out, "node show").value_or(Json(nullptr));
}

std::string node_state(const ControlServer& server, const std::string& id) {
  const auto j = node_view(server, id);
  return j.is_object() ? j.value("state", "") : "";
}

std::int64_t heartbeats(const ControlServer& server, const std::string& id) {
  const auto j = node_view(server, id);
  if (!j.is_object() || !j.contains("heartbeat") || !j["heartbeat"].is_object()) return 0;
  return j["heartbeat"].value("heartbeats", std::int64_t{0});
}

// The heartbeats the node's service saw acknowledged by control, over all its runs
// (status.json), or -1 when the file does not say.
std::int64_t acked_heartbeats(const Node& node) {
  const auto j = parse_json(slurp(node.state() / "status.json"), "status.json").value_or(Json(nullptr));
  return j.is_object() && j.contains("heartbeats_acked") ? j["heartbeats_acked"].get<std::int64_t>() : -1;
}

bool wait_state(const ControlServer& server, const std::string& id, const std::string& state,
                std::chrono::milliseconds timeout) {
  return wait_for([&] { return node_state(server, id) == state; }, timeout, 200ms);
}

Json json_of(const RunResult& r) { return parse_json(r.out, "agent --json output").value_or(Json(nullptr)); }

TEST_CASE("a node enrolls, heartbeats, turns Unreachable when stopped and Ready when back") {
  ControlServer server({"--heartbeat-interval", "1s", "--grace-intervals", "2"});
  Node node(server);
  const auto token = create_token(server, {"--labels", "rack=r1"});

  const auto enrolled = node.run({"enroll", "--token", token, "--json"});
  REQUIRE_MESSAGE(enrolled.exit_code == 0, enrolled.out << enrolled.err);
  const auto report = json_of(enrolled);
  CHECK(report["ok"] == true);
  CHECK(report["details"]["node_id"] == node.id());
  CHECK(report["details"]["already_enrolled"] == false);
  const auto key_mode = std::filesystem::status(node.state() / "certs/current/node.key").permissions() &
                        std::filesystem::perms::all;
  CHECK(key_mode == (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));

  // Enrolled with a valid certificate: nothing to do, and no token needed.
  const auto again = node.run({"enroll", "--json"});
  REQUIRE_MESSAGE(again.exit_code == 0, again.out << again.err);
  CHECK(json_of(again)["details"]["already_enrolled"] == true);

  CHECK(node_state(server, node.id()) == "Enrolled");  // no heartbeat yet
  node.start_service();
  REQUIRE_MESSAGE(wait_for([&] { return heartbeats(server, node.id()) >= 2; }, 20s, 200ms),
                  "no heartbeats arrived; agent log:\n" << slurp(node.log()));
  CHECK(node_state(server, node.id()) == "Ready");
  const auto view = node_view(server, node.id());
  CHECK(view["labels"]["rack"] == "r1");
  CHECK(view["heartbeat"]["agent_version"] == CAIRN_VERSION);

  const auto status = node.run({"status", "--json"});
  REQUIRE_MESSAGE(status.exit_code == 0, status.err);
  const auto s = json_of(status);
  CHECK(s["details"]["certificate"]["subject"] == node.id());
  CHECK(s["details"]["service"]["last_ok"].is_string());
  CHECK(s["details"]["service"]["consecutive_failures"] == 0);

  CHECK(node.stop_service(SIGTERM) == 0);  // clean exit on SIGTERM
  CHECK(slurp(node.log()).find("event=service.stop") != std::string::npos);
  CHECK_MESSAGE(wait_state(server, node.id(), "Unreachable", 15s), "still " << node_state(server, node.id()));

  node.start_service();
  CHECK_MESSAGE(wait_state(server, node.id(), "Ready", 15s), "agent log:\n" << slurp(node.log()));
  node.stop_service();
}

TEST_CASE("the agent rotates a certificate of seconds before it expires and keeps heartbeating") {
  ControlServer server({"--heartbeat-interval", "1s", "--cert-lifetime", "6s"});
  Node node(server);
  REQUIRE(node.run({"enroll", "--token", create_token(server)}).exit_code == 0);
  const auto first = node_view(server, node.id());
  node.start_service();
  REQUIRE(wait_for([&] { return heartbeats(server, node.id()) >= 1; }, 10s, 200ms));
  // Three lifetimes: only rotation keeps the node alive that long. Every look at the node on
  // the way finds it Ready; the wait ends when control has issued its third certificate.
  std::string not_ready;
  const bool three_certificates = wait_for([&] {
    const auto view = node_view(server, node.id());
    if (view.value("state", "") != "Ready") not_ready = dump_json(view);
    return !not_ready.empty() || (view.contains("certificates") && view["certificates"].size() >= 3);
  }, 30s, 250ms);
  REQUIRE_MESSAGE(not_ready.empty(), "not Ready: " << not_ready << "\nagent log:\n" << slurp(node.log()));
  REQUIRE_MESSAGE(three_certificates, "no third certificate; agent log:\n" << slurp(node.log()));
  const auto log = slurp(node.log());
  CHECK(log.find("event=cert.rotated") != std::string::npos);
  CHECK(log.find("event=cert.rotate_failed") == std::string::npos);
  const auto before = heartbeats(server, node.id());
  REQUIRE(wait_for([&] { return heartbeats(server, node.id()) > before; }, 5s, 200ms));
  // The old sets are kept as the archive, bounded.
  int sets = 0;
  for (const auto& e : std::filesystem::directory_iterator(node.state() / "certs")) sets += e.is_directory() && !e.is_symlink();
  CHECK(sets >= 2);
  CHECK(sets <= 4);
  CHECK(first["state"] == "Enrolled");  // before the service ran
  node.stop_service();
}

// The serial the node's certs/current points at.
std::string current_serial(const Node& node) {
  std::error_code ec;
  return std::filesystem::read_symlink(node.state() / "certs/current", ec).string();
}

// How many critical cert.rotation_failing events control holds for the node (`node show`).
std::size_t rotation_failing_events(const Json& view) {
  std::size_t n = 0;
  if (!view.is_object() || !view.contains("events")) return 0;
  for (const auto& e : view["events"]) {
    n += e.value("kind", "") == "cert.rotation_failing" && e.value("severity", "") == "critical";
  }
  return n;
}

TEST_CASE("a rotation that cannot store its certificate raises cert.rotation_failing at control and recovers") {
  // The agent runs in its own mount namespace with its certs/ bind-mounted read-only: the
  // control service issues the new certificate, the node cannot install it (EROFS, which
  // binds root too, unlike file modes), and heartbeats go on with the current one.
  const std::string unshare = "/usr/bin/unshare";
  const std::string nsenter = "/usr/bin/nsenter";
  if (::geteuid() != 0) CAIRN_SKIP("needs root: a mount namespace with a read-only bind mount (unshare -m)");
  if (!std::filesystem::exists(unshare) || !std::filesystem::exists(nsenter)) {
    CAIRN_SKIP("needs unshare and nsenter (util-linux)");
  }
  // $0 of the script is the directory to freeze; with an agent command after it, exec that.
  const std::string read_only = R"(mount --bind "$0" "$0" && mount -o remount,bind,ro "$0")";
  {
    TempDir probe;
    const auto r = run_capture({unshare, "-m", "/bin/sh", "-c", read_only, probe.path().string()}, probe.path());
    if (r.exit_code != 0) CAIRN_SKIP("cannot make a read-only bind mount in a mount namespace here: " + r.err);
  }

  // 40 s certificates, rotation due at 20% (8 s +- 2 s): two failures and the alert come well
  // before the current certificate expires.
  ControlServer server({"--heartbeat-interval", "1s", "--cert-lifetime", "40s"});
  Node node(server);
  REQUIRE(node.run({"enroll", "--token", create_token(server)}).exit_code == 0);
  const auto certs = node.state() / "certs";
  const auto enrolled_serial = current_serial(node);
  REQUIRE_FALSE(enrolled_serial.empty());
  node.start_service({unshare, "-m", "/bin/sh", "-c", read_only + R"( && exec "$@")", certs.string()},
                     {"--rotate-at", "0.2"});
  REQUIRE_MESSAGE(wait_for([&] { return heartbeats(server, node.id()) >= 1; }, 15s, 200ms),
                  "agent log:\n" << slurp(node.log()));

  REQUIRE_MESSAGE(wait_for([&] { return rotation_failing_events(node_view(server, node.id())) >= 1; }, 30s, 250ms),
                  "no cert.rotation_failing at control; agent log:\n" << slurp(node.log()));
  const auto view = node_view(server, node.id());
  CHECK(view["critical_events_total"] == 1);
  CHECK(view["state"] == "Ready");
  // One failure episode is one event, whatever the number of heartbeats that carried it.
  CHECK(rotation_failing_events(view) == 1);
  std::string alert_message;
  for (const auto& e : view["events"]) {
    if (e.value("kind", "") == "cert.rotation_failing") alert_message = e.value("message", "");
  }
  CHECK_MESSAGE(alert_message.find("Read-only file system") != std::string::npos, alert_message);
  const auto log = slurp(node.log());
  CHECK(log.find("event=cert.rotate_failed") != std::string::npos);
  CHECK(log.find("Read-only file system") != std::string::npos);  // the real cause, logged
  CHECK(log.find("event=cert.rotated") == std::string::npos);
  // Still on the enrolled certificate, and still heard.
  CHECK(current_serial(node) == enrolled_serial);
  const auto before = heartbeats(server, node.id());
  CHECK_MESSAGE(wait_for([&] { return heartbeats(server, node.id()) >= before + 2; }, 10s, 200ms),
                "agent log:\n" << slurp(node.log()));
  CHECK(json_of(node.run({"status", "--json"}))["details"]["service"]["rotation_failures"] >= 2);

  // The store becomes writable again (the bind mount goes, inside the agent's namespace):
  // the next attempt rotates and the alerts stop.
  const auto unmounted = run_capture({nsenter, "--target", std::to_string(node.service_pid()), "--mount", "umount",
                                      certs.string()}, server.scratch());
  REQUIRE_MESSAGE(unmounted.exit_code == 0, unmounted.err);
  const auto rotated = [&] { return slurp(node.log()).find("event=cert.rotated") != std::string::npos; };
  REQUIRE_MESSAGE(wait_for(rotated, 15s, 200ms), "agent log:\n" << slurp(node.log()));
  CHECK(current_serial(node) != enrolled_serial);
  const auto alerts = node_view(server, node.id())["critical_events_total"].get<std::int64_t>();
  const auto after = heartbeats(server, node.id());
  REQUIRE_MESSAGE(wait_for([&] { return heartbeats(server, node.id()) >= after + 2; }, 10s, 200ms),
                  "agent log:\n" << slurp(node.log()));
  const auto recovered = node_view(server, node.id());
  CHECK(recovered["critical_events_total"] == alerts);
  CHECK(recovered["state"] == "Ready");
  CHECK(wait_for([&] {
    return json_of(node.run({"status", "--json"}))["details"]["service"]["rotation_failures"] == 0;
  }, 5s, 200ms));
  CHECK(node.stop_service() == 0);
}

TEST_CASE("enroll reads the bootstrap token from --token-file and refuses an empty or missing one") {
  ControlServer server;
  TempDir files;
  const auto help = run_capture({agent_binary(), "enroll", "--help"}, files.path());
  CHECK(help.exit_code == 0);
  CHECK(help.out.find("/proc/PID/cmdline") != std::string::npos);  // --token says why not to use it
  CHECK(help.out.find("--token-file") != std::string::npos);

  // The trailing newline of `echo TOKEN > FILE` is not part of the token.
  const auto token_file = files.path() / "token";
  std::ofstream(token_file) << create_token(server) << "\n";
  Node node(server);
  const auto enrolled = node.run({"enroll", "--token-file", token_file.string(), "--json"});
  REQUIRE_MESSAGE(enrolled.exit_code == 0, enrolled.out << enrolled.err);
  CHECK(json_of(enrolled)["details"]["node_id"] == node.id());
  CHECK(node_state(server, node.id()) == "Enrolled");

  struct Case {
    const char* what;
    std::string content;  // written to the file; "-" = no file
    const char* message;
  };
  const Case cases[] = {{"empty", "", "is empty"}, {"only a newline", " \n\n", "is empty"}, {"missing", "-", "token file"}};
  for (const auto& c : cases) {
    CAPTURE(c.what);
    const auto path = files.path() / (std::string("bad-") + c.what);
    if (c.content != "-") std::ofstream(path) << c.content;
    Node other(server);
    const auto r = other.run({"enroll", "--token-file", path.string()});
    CHECK(r.exit_code == 78);
    CHECK(r.err.find(path.string()) != std::string::npos);
    CHECK(r.err.find(c.message) != std::string::npos);
    CHECK(r.err.find("hint:") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(other.state() / "certs/current"));
  }

  // Both ways at once is a usage error, before anything else happens.
  Node both(server);
  const auto r = both.run({"enroll", "--token", "x", "--token-file", token_file.string()});
  CHECK(r.exit_code == 64);
  CHECK(r.err.find("--token-file") != std::string::npos);
}

TEST_CASE("a node revoked mid-run is refused on its next heartbeat") {
  ControlServer server({"--heartbeat-interval", "1s"});
  Node node(server);
  REQUIRE(node.run({"enroll", "--token", create_token(server)}).exit_code == 0);
  node.start_service();
  REQUIRE(wait_for([&] { return heartbeats(server, node.id()) >= 1; }, 10s, 200ms));
  const auto revoked = server.cli({"node", "revoke", node.id()});
  REQUIRE_MESSAGE(revoked.exit_code == 0, revoked.err);
  CHECK_MESSAGE(wait_for([&] { return slurp(node.log()).find("node_revoked") != std::string::npos; }, 10s),
                "agent log:\n" << slurp(node.log()));
  CHECK(node_state(server, node.id()) == "Revoked");
  const auto status = json_of(node.run({"status", "--json"}));
  CHECK(status["details"]["service"]["consecutive_failures"] >= 1);
  // A revoked node cannot come back with a fresh token either.
  const auto again = node.run({"enroll", "--force", "--token", create_token(server)});
  CHECK(again.exit_code == 77);
  CHECK(again.err.find("node_revoked") != std::string::npos);
  node.stop_service();
}

TEST_CASE("kill -9 of the control service loses nothing and agents carry on after restart") {
  ControlServer server({"--heartbeat-interval", "1s", "--grace-intervals", "3"});
  std::vector<std::unique_ptr<Node>> nodes;
  for (int i = 0; i < 3; ++i) {
    nodes.push_back(std::make_unique<Node>(server));
    REQUIRE(nodes.back()->run({"enroll", "--token", create_token(server)}).exit_code == 0);
    nodes.back()->start_service();
  }
  const auto spare_token = create_token(server, {"--uses", "2"});
  for (auto& n : nodes) REQUIRE(wait_for([&] { return heartbeats(server, n->id()) >= 2; }, 15s, 200ms));
  std::vector<std::int64_t> before;
  for (auto& n : nodes) before.push_back(heartbeats(server, n->id()));

  server.stop(SIGKILL);
  // While it is down the agents back off and retry.
  REQUIRE(wait_for([&] { return slurp(nodes[0]->log()).find("event=heartbeat.failed") != std::string::npos; }, 10s));
  server.start();

  for (std::size_t i = 0; i < nodes.size(); ++i) {
    CAPTURE(i);
    CHECK_MESSAGE(wait_for([&] { return heartbeats(server, nodes[i]->id()) >= before[i] + 3; }, 20s, 200ms),
                  "agent log:\n" << slurp(nodes[i]->log()));
    CHECK(node_state(server, nodes[i]->id()) == "Ready");
  }
  CHECK(slurp(nodes[0]->log()).find("event=heartbeat.recovered") != std::string::npos);

  // What each agent saw acknowledged is what control stored. The agents stop first (SIGTERM:
  // between two heartbeats), then control is killed again and restarted, so what it reports
  // is what survived in control.db, not what it held in memory.
  for (auto& n : nodes) CHECK(n->stop_service() == 0);
  server.stop(SIGKILL);
  server.start();
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    CAPTURE(i);
    const auto acked = acked_heartbeats(*nodes[i]);
    const auto stored = heartbeats(server, nodes[i]->id());
    CAPTURE(acked);
    CAPTURE(stored);
    CHECK(acked > before[i]);     // heartbeats were acknowledged after the first crash too
    CHECK(stored >= acked);       // nothing acknowledged was lost
    CHECK(stored <= acked + 1);   // at most the one in flight at the kill was stored unanswered
  }

  // The token made before the crashes is still there, with its uses.
  Node late(server);
  CHECK(late.run({"enroll", "--token", spare_token}).exit_code == 0);
  const auto tokens = parse_json(server.cli({"token", "list", "--json"}).out, "token list");
  REQUIRE(tokens);
  int spare_seen = 0;
  for (const auto& t : (*tokens)["tokens"]) {
    if (t["max_uses"] == 2) {
      ++spare_seen;
      CHECK(t["uses"] == 1);
    }
  }
  CHECK(spare_seen == 1);
}

TEST_CASE("a node off past its certificate's expiry is told to re-enroll with a token bound to its id, and that token does it") {
  ControlServer server({"--heartbeat-interval", "1s", "--cert-lifetime", "3s"});
  Node node(server);
  REQUIRE(node.run({"enroll", "--token", create_token(server)}).exit_code == 0);
  const auto enrolled_serial = current_serial(node);
  // The node stays off (no service) until its certificate has expired.
  auto certificate = [&] { return json_of(node.run({"status", "--json"}))["details"]["certificate"]; };
  REQUIRE_MESSAGE(wait_for([&] { return certificate()["expired"] == true; }, 15s, 250ms), dump_json(certificate()));

  const std::string bound_token_command = "cairn-control token create --expect-id " + node.id();
  const auto status = node.run({"status"});
  CHECK(status.exit_code == 0);  // a report, not a failure of the command
  CHECK_MESSAGE(status.out.find("EXPIRED") != std::string::npos, status.out);
  CHECK_MESSAGE(status.out.find("re-enrollment with a token bound to its id") != std::string::npos, status.out);
  CHECK_MESSAGE(status.out.find(bound_token_command) != std::string::npos, status.out);
  CHECK(certificate()["action"].get<std::string>().find(bound_token_command) != std::string::npos);

  // The service says the same when it starts on it.
  node.start_service();
  CHECK_MESSAGE(wait_for([&] { return slurp(node.log()).find("event=cert.expired") != std::string::npos; }, 10s),
                slurp(node.log()));
  CHECK(slurp(node.log()).find(bound_token_command) != std::string::npos);
  CHECK(node.stop_service() == 0);

  // Enrolling again with a token bound to this id replaces the expired set; the node finds
  // control where it enrolled before (no --control needed).
  auto argv = node.argv({"enroll", "--token", create_token(server, {"--expect-id", node.id()}), "--json"});
  const auto control_flag = std::find(argv.begin(), argv.end(), "--control");
  REQUIRE(control_flag != argv.end());
  argv.erase(control_flag, control_flag + 2);
  const auto again = run_capture(argv, server.scratch());
  REQUIRE_MESSAGE(again.exit_code == 0, again.out << again.err);
  CHECK(json_of(again)["details"]["already_enrolled"] == false);
  CHECK(json_of(again)["details"]["control_url"] == server.url());
  CHECK(current_serial(node) != enrolled_serial);
  CHECK(certificate()["expired"] == false);
  CHECK_FALSE(certificate().contains("action"));
}

TEST_CASE("under systemd the service notifies READY, STATUS, WATCHDOG and STOPPING") {
  ControlServer server({"--heartbeat-interval", "1s"});
  Node node(server);
  REQUIRE(node.run({"enroll", "--token", create_token(server)}).exit_code == 0);
  // systemd's side of sd_notify(3): a datagram socket named by $NOTIFY_SOCKET.
  TempDir dir;
  const auto socket_path = (dir.path() / "notify").string();
  UniqueFd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  REQUIRE(sock);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(socket_path.size() < sizeof addr.sun_path);
  socket_path.copy(addr.sun_path, socket_path.size());
  REQUIRE(::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  auto p = Process::spawn(node.argv({"service"}), {"NOTIFY_SOCKET=" + socket_path, "WATCHDOG_USEC=600000"}, node.log());
  REQUIRE(p);
  std::string seen;
  auto receive = [&](std::chrono::milliseconds timeout) {
    pollfd pfd{sock.get(), POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(timeout.count())) <= 0) return;
    char buf[4096];
    const auto n = ::recv(sock.get(), buf, sizeof buf, 0);
    if (n > 0) seen.append(buf, static_cast<std::size_t>(n)).push_back('\n');
  };
  auto count = [&](std::string_view what) {
    std::size_t n = 0;
    for (auto pos = seen.find(what); pos != std::string::npos; pos = seen.find(what, pos + 1)) ++n;
    return n;
  };
  const auto deadline = std::chrono::steady_clock::now() + 15s;
  while (std::chrono::steady_clock::now() < deadline && (count("READY=1") == 0 || count("WATCHDOG=1") < 4)) {
    receive(200ms);
  }
  CHECK_MESSAGE(count("READY=1") == 1, seen);
  CHECK(count("STATUS=heartbeat ok") >= 1);
  // 1 s between heartbeats, watchdog at 0.6 s: woken at half of it, between heartbeats too.
  CHECK(count("WATCHDOG=1") >= 4);
  p->kill(SIGTERM);
  CHECK(p->wait_exit(10s) == 0);
  for (int i = 0; i < 20 && count("STOPPING=1") == 0; ++i) receive(50ms);
  CHECK(count("STOPPING=1") == 1);
}

TEST_CASE("enroll refuses unknown, replayed and expired tokens with a reason and exit 77") {
  ControlServer server;
  struct Case {
    const char* what;
    std::string token;
    const char* code;
  };
  const auto replayed = create_token(server);
  Node first(server);
  REQUIRE(first.run({"enroll", "--token", replayed}).exit_code == 0);
  const auto expiring = create_token(server, {"--ttl", "1s"});
  // Control says when the token's lifetime has passed (the one token made with a TTL here).
  const bool expired = wait_for([&] {
    const auto list = parse_json(server.cli({"token", "list", "--json"}).out, "token list");
    if (!list || !list->contains("tokens")) return false;
    for (const auto& t : (*list)["tokens"]) {
      if (t.value("state", "") == "expired") return true;
    }
    return false;
  }, 10s, 200ms);
  REQUIRE_MESSAGE(expired, server.cli({"token", "list", "--json"}).out);
  const Case cases[] = {
      {"unknown", "cairn_0000000000000000000000000000000000000000000000000000000000000000", "token_unknown"},
      {"replayed", replayed, "token_used"},
      {"expired", expiring, "token_expired"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    Node node(server);
    const auto r = node.run({"enroll", "--token", c.token});
    CHECK(r.exit_code == 77);
    CHECK(r.err.find(c.code) != std::string::npos);
    CHECK(r.err.find("hint:") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(node.state() / "certs/current"));
  }
}

TEST_CASE("a token bound to a node id refuses any other node") {
  ControlServer server;
  Node node(server);
  Node other(server);
  const auto token = create_token(server, {"--expect-id", node.id()});
  const auto refused = other.run({"enroll", "--token", token});
  CHECK(refused.exit_code == 77);
  CHECK(refused.err.find("identity_mismatch") != std::string::npos);
  CHECK(node.run({"enroll", "--token", token}).exit_code == 0);
}

TEST_CASE("enroll refuses a control service that does not chain to the pinned CA") {
  ControlServer server;
  ControlServer impostor;  // a control service of another cluster, another CA
  Node node(server);
  // The impostor's own valid token: were its certificate not checked, enrollment would work.
  auto argv = node.argv({"enroll", "--token", create_token(impostor)});
  for (auto& a : argv) {
    if (a == server.url()) a = impostor.url();  // same CA pin, the other server's address
  }
  TempDir scratch;
  const auto r = run_capture(argv, scratch.path());
  CHECK(r.exit_code == 77);
  CHECK(r.err.find("certificate") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(node.state() / "certs/current"));
  // The token never reached the impostor.
  CHECK(impostor.cli({"token", "list", "--json"}).out.find("\"uses\": 0") != std::string::npos);
}

TEST_CASE("enroll can pin the cluster CA by its SHA-256 fingerprint alone") {
  ControlServer server({"--heartbeat-interval", "1s"});
  ControlServer impostor;
  auto ca = parse_cert_pem(*read_file(server.state() / "ca.crt", 64 * 1024));
  REQUIRE(ca);
  const auto fingerprint = cert_info(ca->get()).fingerprint_sha256;
  auto without_ca = [&](const Node& node, const std::string& url, std::vector<std::string> args) {
    std::vector<std::string> v = {agent_binary(), "--root", node.root().string(), "--control", url,
                                  "--ca-fingerprint", fingerprint};
    v.insert(v.end(), args.begin(), args.end());
    TempDir scratch;
    return run_capture(v, scratch.path());
  };
  Node wrong(server);
  const auto refused = without_ca(wrong, impostor.url(), {"enroll", "--token", create_token(impostor)});
  CHECK(refused.exit_code == 77);
  CHECK(refused.err.find("certificate") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(wrong.state() / "certs/current"));

  Node node(server);
  const auto enrolled = without_ca(node, server.url(), {"enroll", "--token", create_token(server)});
  REQUIRE_MESSAGE(enrolled.exit_code == 0, enrolled.err);
  // After enrollment the saved CA chain verifies the control service for the heartbeats.
  auto p = Process::spawn({agent_binary(), "--root", node.root().string(), "--control", server.url(),
                           "--ca-fingerprint", fingerprint, "service"}, {}, node.log());
  REQUIRE(p);
  CHECK_MESSAGE(wait_for([&] { return heartbeats(server, node.id()) >= 1; }, 10s, 200ms), slurp(node.log()));
  p->kill(SIGTERM);
  CHECK(p->wait_exit(10s) == 0);
}

TEST_CASE("agent commands explain a missing control URL, CA or token and exit 78") {
  TempDir dir;
  std::filesystem::create_directories(dir.path() / "proc");
  std::ofstream(dir.path() / "proc/cmdline") << "cairn.id=" << random_uuid().str() << "\n";
  const auto base = std::vector<std::string>{agent_binary(), "--root", dir.path().string()};
  auto with = [&](std::vector<std::string> extra) {
    auto v = base;
    v.insert(v.end(), extra.begin(), extra.end());
    return run_capture(v, dir.path());
  };
  auto no_url = with({"enroll", "--token", "x"});
  CHECK(no_url.exit_code == 78);
  CHECK(no_url.err.find("--control") != std::string::npos);
  auto no_ca = with({"--control", "https://127.0.0.1:1", "enroll", "--token", "x"});
  CHECK(no_ca.exit_code == 78);
  CHECK(no_ca.err.find("--ca") != std::string::npos);
  auto no_token = with({"--control", "https://127.0.0.1:1", "--ca", "/dev/null", "enroll"});
  CHECK(no_token.exit_code == 78);
  CHECK(no_token.err.find("token") != std::string::npos);
  auto not_enrolled = with({"--control", "https://127.0.0.1:1", "service"});
  CHECK(not_enrolled.exit_code == 78);
  CHECK(not_enrolled.err.find("cairn-agent enroll") != std::string::npos);
  auto status = with({"status", "--json"});
  CHECK(status.exit_code == 0);
  CHECK(status.out.find("\"enrollment\": null") != std::string::npos);
}

}  // namespace
}  // namespace cairn::test
