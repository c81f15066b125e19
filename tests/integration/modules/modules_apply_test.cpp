// The node converges by itself (h-apply, issue 14): the real cairn-module pushes to the real
// docker-registry on 127.0.0.1, the real cairn-control (SQLite) catalogs and assigns, and the
// real `cairn-agent service` (in a temp root) applies each new desired set on its own, with no
// `cairn-agent update`: the union appears, switches to a new version, and a version tampered in
// the registry's storage is refused while the old union stays (and is not fetched again on
// every heartbeat). With modules.auto_apply false the service only stores the set.
// Root + loop devices (the union is mounted for real); skips with the reason elsewhere.
#include <doctest/doctest.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include "agent/runtime/status_file.hpp"
#include "common/fs.hpp"
#include "common/json.hpp"
#include "common/uuid.hpp"
#include "tests/integration/module/registry_fixture.hpp"
#include "tests/integration/modules/modules_fixture.hpp"
#include "tests/support/control_server.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

Json json_of(const RunResult& r, std::string_view what) { return parse_json(r.out, what).value_or(Json(nullptr)); }

RunResult cm(const fs::path& dir, std::vector<std::string> args) {
  args.insert(args.begin(), env_or_empty("CAIRN_MODULE"));
  return run_capture(args, dir, 120s);
}

// Packs srv/web/index.html = `text` as web@VERSION, signs it, pushes REG/cairn/web:VERSION.
// Returns the image digest (sha256:<hex>).
std::string publish(const fs::path& dir, const std::string& reg, const std::string& version, const std::string& text,
                    const fs::path& key) {
  const auto tree = dir / ("tree-" + version);
  write_text(tree / "srv/web/index.html", text);
  const auto out = dir / ("out-" + version) / "web";
  auto pack = cm(dir, {"pack", tree.string(), "--name", "web", "--version", version, "--priority", "10", "--out", out.string()});
  REQUIRE_MESSAGE(pack.exit_code == 0, pack.err);
  const auto manifest = out.string() + ".manifest.json";
  REQUIRE(cm(dir, {"sign", "--key", key.string(), manifest}).exit_code == 0);
  auto push = cm(dir, {"push", reg + "/cairn/web:" + version, "--plain-http", "--image", out.string() + ".erofs", "--manifest",
                       manifest, "--signature", out.string() + ".sig"});
  REQUIRE_MESSAGE(push.exit_code == 0, std::string(push.out + push.err));
  auto m = parse_json(slurp(manifest), "manifest").value_or(Json(nullptr));
  REQUIRE(m.is_object());
  return "sha256:" + m["sha256"].get<std::string>();
}

// The pushed web:VERSION into the catalog (verified with `trust_pub`); returns its OCI digest.
std::string catalog_add(const ControlServer& server, const std::string& reg, const std::string& version, const fs::path& trust_pub) {
  auto added = server.cli({"module", "add", reg + "/cairn/web:" + version, "--plain-http", "--trust-key", trust_pub.string(), "--json"});
  REQUIRE_MESSAGE(added.exit_code == 0, std::string(added.out + added.err));
  const auto reference = json_of(added, "module add")["reference"].get<std::string>();
  return reference.substr(reference.find('@') + 1);
}

// One node in a temp root: its kernel command line names it; agent.json names the registry
// and pins the fleet key (and modules.auto_apply when given).
class Node {
 public:
  Node(const ControlServer& server, const std::string& reg, const fs::path& trusted_pub, std::optional<bool> auto_apply = {})
      : server_(server), id_(random_uuid().str()) {
    fs::create_directories(root() / "proc");
    std::ofstream(root() / "proc/cmdline") << "console=ttyS0 cairn.id=" << id_ << "\n";
    fs::create_directory_symlink("/proc/self", root() / "proc/self");
    fs::create_directory_symlink("/dev", root() / "dev");
    REQUIRE(write_file_atomic(root() / "etc/cairn/fleet.pub", slurp(trusted_pub)));
    Json cfg = {{"modules", {{"registry", reg + "/cairn"}, {"plain_http", true}, {"trust", {{"web", {"fleet.pub"}}}}}}};
    if (auto_apply) cfg["modules"]["auto_apply"] = *auto_apply;
    REQUIRE(write_file_atomic(root() / "etc/cairn/agent.json", dump_json(cfg, 2)));
  }
  ~Node() {
    stop_service();
    (void)run({"detach", "web"});  // whatever a failed check left mounted goes with the node
  }
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  [[nodiscard]] const std::string& id() const { return id_; }
  [[nodiscard]] fs::path root() const { return dir_.path() / "root"; }
  [[nodiscard]] fs::path index() const { return root() / "run/cairn/union/srv/web/index.html"; }
  [[nodiscard]] fs::path state_dir() const { return root() / "persist/cairn"; }

  RunResult run(std::vector<std::string> args) const {
    std::vector<std::string> v = {env_or_empty("CAIRN_AGENT"), "--root", root().string(), "--control", server_.url(),
                                  "--ca", (server_.state() / "ca.crt").string()};
    v.insert(v.end(), args.begin(), args.end());
    return run_capture(v, dir_.path(), 120s);
  }
  // max_backoff_ms also caps the reconciler's wait after a refusal.
  void start_service(int max_backoff_ms) {
    std::vector<std::string> v = {env_or_empty("CAIRN_AGENT"), "--root", root().string(), "--control", server_.url(),
                                  "--ca", (server_.state() / "ca.crt").string(), "service", "--min-backoff-ms", "200",
                                  "--max-backoff-ms", std::to_string(max_backoff_ms)};
    auto p = Process::spawn(v, {}, dir_.path() / "agent.log");
    REQUIRE_MESSAGE(p.has_value(), (p ? "" : p.error().message));
    service_.emplace(std::move(*p));
  }
  // SIGTERM; true when it exited within `timeout`.
  bool stop_service(std::chrono::milliseconds timeout = 10s) {
    if (!service_) return true;
    service_->kill(SIGTERM);
    const bool exited = service_->wait_exit(timeout).has_value();
    service_.reset();
    return exited;
  }
  [[nodiscard]] std::string log() const { return slurp(dir_.path() / "agent.log"); }
  [[nodiscard]] std::size_t log_count(const std::string& needle) const {
    const auto text = log();
    std::size_t n = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
    return n;
  }
  [[nodiscard]] std::uint64_t heartbeats_acked() const {
    auto s = agent::read_status(state_dir());
    return s && *s ? (*s)->heartbeats_acked : 0;
  }

 private:
  const ControlServer& server_;
  TempDir dir_;
  std::string id_;
  std::optional<Process> service_;
};

std::vector<std::string> reported_digests(const ControlServer& server, const std::string& id) {
  const auto r = server.cli({"node", "show", id, "--json"});
  if (r.exit_code != 0) return {};
  const auto j = parse_json(r.out, "node show").value_or(Json(nullptr));
  std::vector<std::string> out;
  if (!j.is_object() || !j.contains("heartbeat") || !j["heartbeat"].is_object()) return out;
  for (const auto& m : j["heartbeat"].value("modules", Json::array())) out.push_back(m.value("digest", ""));
  return out;
}

std::vector<Json> node_events(const ControlServer& server, const std::string& node_id, const std::string& kind) {
  auto r = server.cli({"events", "--node", node_id, "--json"});
  std::vector<Json> out;
  for (const auto& e : json_of(r, "events").value("events", Json::array())) {
    if (e.value("kind", "") == kind) out.push_back(e);
  }
  return out;
}

std::string text_of(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec) ? slurp(p) : "";
}

}  // namespace

TEST_CASE("the service applies assigned modules by itself: the union appears, switches version, and keeps its last good set when a tampered one is refused") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  if (auto why = binaries_missing()) CAIRN_SKIP(*why);
  RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  ControlServer server({"--heartbeat-interval", "1s"});
  TempDir work;
  REQUIRE(cm(work.path(), {"keygen", (work.path() / "fleet").string()}).exit_code == 0);
  const auto fleet_pub = work.path() / "fleet.pub";
  const auto image_v1 = publish(work.path(), reg.host(), "1.0", "v1", work.path() / "fleet.key");
  catalog_add(server, reg.host(), "1.0", fleet_pub);

  const auto token = trimmed(server.cli({"token", "create", "--labels", "role=edge"}).out);
  Node node(server, reg.host(), fleet_pub);
  REQUIRE(node.run({"enroll", "--token", token}).exit_code == 0);
  auto explained = node.run({"config", "--explain"});
  CHECK(explained.out.find("modules.auto_apply true    (default)") != std::string::npos);
  REQUIRE(server.cli({"module", "assign", "web@1.0", "--selector", "role=edge"}).exit_code == 0);

  // 1.0: the service alone fetches, verifies and mounts it; nobody runs `update`.
  node.start_service(60000);
  REQUIRE_MESSAGE(wait_for([&] { return text_of(node.index()) == "v1"; }, 60s, 100ms), node.log());
  CHECK_MESSAGE(wait_for([&] { return reported_digests(server, node.id()) == std::vector<std::string>{image_v1}; }, 30s, 200ms),
                node.log());
  CHECK_MESSAGE(wait_for([&] { return node_events(server, node.id(), "module.applied").size() == 1; }, 30s, 200ms), node.log());
  const auto applied = node_events(server, node.id(), "module.applied");
  REQUIRE(applied.size() == 1);
  CHECK(applied[0].value("message", "").find("web@" + image_v1) != std::string::npos);
  CHECK(node.log_count("event=modules.apply_start") == 1);

  // 2.0 assigned to this node: the union switches to it by itself.
  const auto image_v2 = publish(work.path(), reg.host(), "2.0", "v2", work.path() / "fleet.key");
  catalog_add(server, reg.host(), "2.0", fleet_pub);
  REQUIRE(server.cli({"module", "assign", "web@2.0", "--node", node.id()}).exit_code == 0);
  REQUIRE_MESSAGE(wait_for([&] { return text_of(node.index()) == "v2"; }, 60s, 100ms), node.log());
  CHECK_MESSAGE(wait_for([&] { return reported_digests(server, node.id()) == std::vector<std::string>{image_v2}; }, 30s, 200ms),
                node.log());
  CHECK_MESSAGE(wait_for([&] { return node_events(server, node.id(), "module.applied").size() == 2; }, 30s, 200ms), node.log());
  const auto loops_v2 = loops_under(node.root());
  CHECK(node.log_count("event=modules.apply_start") == 2);

  // 3.0 is catalogued intact, then one byte of its image flipped in the registry's storage.
  const auto image_v3 = publish(work.path(), reg.host(), "3.0", "v3", work.path() / "fleet.key");
  catalog_add(server, reg.host(), "3.0", fleet_pub);
  const auto hex = image_v3.substr(7);
  const fs::path blob = reg.dir() / "data/docker/registry/v2/blobs/sha256" / hex.substr(0, 2) / hex / "data";
  REQUIRE_MESSAGE(fs::exists(blob), blob);
  {
    std::fstream f(blob, std::ios::binary | std::ios::in | std::ios::out);
    const auto at = static_cast<std::streamoff>(fs::file_size(blob) / 2);
    char c = 0;
    f.seekg(at);
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x01);
    f.seekp(at);
    f.write(&c, 1);
    REQUIRE(f.good());
  }
  REQUIRE(server.cli({"module", "assign", "web@3.0", "--node", node.id()}).exit_code == 0);
  REQUIRE_MESSAGE(wait_for([&] { return !node_events(server, node.id(), "module.refused").empty(); }, 60s, 200ms), node.log());
  const auto refused = node_events(server, node.id(), "module.refused");
  REQUIRE(refused.size() == 1);
  INFO("module.refused: " << refused[0].value("message", ""));
  CHECK(refused[0].value("message", "").find("web 2.0 stays attached") != std::string::npos);
  CHECK(text_of(node.index()) == "v2");  // the last good union
  CHECK(loops_under(node.root()).size() == loops_v2.size());

  // Not fetched again on every heartbeat: a refusal waits the capped backoff (30-60 s here).
  const auto starts = node.log_count("event=modules.apply_start");
  CHECK(starts == 3);
  const auto acked = node.heartbeats_acked();
  REQUIRE_MESSAGE(wait_for([&] { return node.heartbeats_acked() >= acked + 4; }, 30s, 100ms), node.log());
  CHECK(node.log_count("event=modules.apply_start") == starts);
  CHECK(reported_digests(server, node.id()) == std::vector<std::string>{image_v2});
  CHECK(text_of(node.index()) == "v2");

  // SIGTERM: the service stops promptly; the union stays mounted.
  CHECK(node.stop_service(15s));
  CHECK(text_of(node.index()) == "v2");
}

TEST_CASE("with modules.auto_apply false the service only stores the desired set; cairn-agent update applies it") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  if (auto why = binaries_missing()) CAIRN_SKIP(*why);
  RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  ControlServer server({"--heartbeat-interval", "1s"});
  TempDir work;
  REQUIRE(cm(work.path(), {"keygen", (work.path() / "fleet").string()}).exit_code == 0);
  const auto fleet_pub = work.path() / "fleet.pub";
  publish(work.path(), reg.host(), "1.0", "v1", work.path() / "fleet.key");
  const auto oci_v1 = catalog_add(server, reg.host(), "1.0", fleet_pub);
  const auto token = trimmed(server.cli({"token", "create"}).out);
  Node node(server, reg.host(), fleet_pub, false);
  REQUIRE(node.run({"enroll", "--token", token}).exit_code == 0);
  auto explained = node.run({"config", "--explain"});
  CHECK(explained.out.find("modules.auto_apply false    (config file ") != std::string::npos);
  REQUIRE(server.cli({"module", "assign", "web@1.0", "--node", node.id()}).exit_code == 0);

  node.start_service(1000);
  const auto desired = node.state_dir() / "modules/desired.json";
  REQUIRE_MESSAGE(wait_for([&] { return text_of(desired).find(oci_v1) != std::string::npos; }, 30s, 100ms), node.log());
  const auto acked = node.heartbeats_acked();
  REQUIRE_MESSAGE(wait_for([&] { return node.heartbeats_acked() >= acked + 3; }, 30s, 100ms), node.log());
  CHECK(text_of(node.index()).empty());
  CHECK(node.log_count("event=modules.apply_start") == 0);
  CHECK(node.log().find("event=modules.auto_apply state=off") != std::string::npos);

  auto updated = node.run({"update"});
  INFO(updated.out << updated.err);
  CHECK(updated.exit_code == 0);
  CHECK(text_of(node.index()) == "v1");
}

}  // namespace cairn::test
