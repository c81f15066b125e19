// Modules end to end (issue 14, h-modctl): the real cairn-module packs, signs and pushes to the
// real docker-registry on 127.0.0.1; the real cairn-control (SQLite) catalogs and assigns it by
// selector; the real cairn-agent (service + update, in a temp root) fetches, verifies and
// attaches it, its heartbeat reports the image digest and `cairn-control node show` shows it.
// Then a version signed by a key outside the agent's pinned trust policy is assigned: the agent
// refuses it, the old union stays, and the refusal is an event in `cairn-control events`.
// Root + loop devices (the union is mounted for real); skips with the reason elsewhere.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

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

Json json_of(const RunResult& r, std::string_view what) {
  return parse_json(r.out, what).value_or(Json(nullptr));
}

// cairn-module in `dir`.
RunResult cm(const fs::path& dir, std::vector<std::string> args) {
  args.insert(args.begin(), env_or_empty("CAIRN_MODULE"));
  return run_capture(args, dir, 120s);
}

// Packs a tree holding srv/web/index.html = `text` as web@VERSION, signs it with `key`, pushes it
// as REG/cairn/web:VERSION. Returns the image digest the manifest names (sha256:<hex>).
std::string publish(const fs::path& dir, const std::string& reg, const std::string& version, const std::string& text,
                    const fs::path& key) {
  const auto tree = dir / ("tree-" + version);
  write_text(tree / "srv/web/index.html", text);
  const auto out = dir / ("out-" + version) / "web";
  auto pack = cm(dir, {"pack", tree.string(), "--name", "web", "--version", version, "--priority", "10", "--out", out.string()});
  REQUIRE_MESSAGE(pack.exit_code == 0, pack.err);
  const auto manifest = out.string() + ".manifest.json";
  auto sign = cm(dir, {"sign", "--key", key.string(), manifest});
  REQUIRE_MESSAGE(sign.exit_code == 0, sign.err);
  auto push = cm(dir, {"push", reg + "/cairn/web:" + version, "--plain-http", "--image", out.string() + ".erofs",
                       "--manifest", manifest, "--signature", out.string() + ".sig"});
  REQUIRE_MESSAGE(push.exit_code == 0, std::string(push.out + push.err));
  auto m = parse_json(slurp(manifest), "manifest").value_or(Json(nullptr));
  REQUIRE(m.is_object());
  return "sha256:" + m["sha256"].get<std::string>();
}

// One node: a host root whose kernel command line names it, the agent's config (the module
// registry and the trust policy it pins) under it.
class Node {
 public:
  // policy_pub: a policy key the node pins (modules.policy_keys), or none (h-modpolicy).
  Node(const ControlServer& server, const std::string& reg, const fs::path& trusted_pub, const fs::path& policy_pub = {})
      : server_(server), id_(random_uuid().str()) {
    fs::create_directories(root() / "proc");
    std::ofstream(root() / "proc/cmdline") << "console=ttyS0 cairn.id=" << id_ << "\n";
    // The mounter reads <root>/proc/self/mountinfo and attaches <root>/dev/loopN: the real ones.
    fs::create_directory_symlink("/proc/self", root() / "proc/self");
    fs::create_directory_symlink("/dev", root() / "dev");
    // The pinned key ships beside the config (a relative path is relative to it).
    REQUIRE(write_file_atomic(root() / "etc/cairn/fleet.pub", slurp(trusted_pub)));
    Json cfg = {{"modules", {{"registry", reg + "/cairn"}, {"plain_http", true}, {"trust", {{"web", {"fleet.pub"}}}}}}};
    if (!policy_pub.empty()) {
      REQUIRE(write_file_atomic(root() / "etc/cairn/policy.pub", slurp(policy_pub)));
      cfg["modules"]["policy_keys"] = Json::array({"policy.pub"});
    }
    REQUIRE(write_file_atomic(root() / "etc/cairn/agent.json", dump_json(cfg, 2)));
  }
  ~Node() {
    stop_service();
    // Whatever a failed check left mounted goes with the node.
    (void)run({"detach", "web"});
  }
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  [[nodiscard]] const std::string& id() const { return id_; }
  [[nodiscard]] fs::path root() const { return dir_.path() / "root"; }
  [[nodiscard]] fs::path union_dir() const { return root() / "run/cairn/union"; }
  [[nodiscard]] fs::path desired_file() const { return root() / "persist/cairn/modules/desired.json"; }
  [[nodiscard]] fs::path policy_file() const { return root() / "persist/cairn/modules/policy.json"; }

  RunResult run(std::vector<std::string> args) const {
    std::vector<std::string> v = {env_or_empty("CAIRN_AGENT"), "--root", root().string(), "--control", server_.url(),
                                  "--ca", (server_.state() / "ca.crt").string()};
    v.insert(v.end(), args.begin(), args.end());
    return run_capture(v, dir_.path(), 120s);
  }
  void start_service() {
    std::vector<std::string> v = {env_or_empty("CAIRN_AGENT"), "--root", root().string(), "--control", server_.url(),
                                  "--ca", (server_.state() / "ca.crt").string(), "service", "--min-backoff-ms", "200",
                                  "--max-backoff-ms", "1000"};
    auto p = Process::spawn(v, {}, dir_.path() / "agent.log");
    REQUIRE_MESSAGE(p.has_value(), (p ? "" : p.error().message));
    service_.emplace(std::move(*p));
  }
  void stop_service() {
    if (!service_) return;
    service_->kill(SIGTERM);
    service_->wait_exit(10s);
    service_.reset();
  }
  [[nodiscard]] std::string log() const { return slurp(dir_.path() / "agent.log"); }

 private:
  const ControlServer& server_;
  TempDir dir_;
  std::string id_;
  std::optional<Process> service_;
};

// The digests the node's last stored heartbeat reports (`cairn-control node show --json`).
std::vector<std::string> reported_digests(const ControlServer& server, const std::string& id) {
  const auto r = server.cli({"node", "show", id, "--json"});
  if (r.exit_code != 0) return {};
  const auto j = parse_json(r.out, "node show").value_or(Json(nullptr));
  std::vector<std::string> out;
  if (!j.is_object() || !j.contains("heartbeat") || !j["heartbeat"].is_object()) return out;
  for (const auto& m : j["heartbeat"].value("modules", Json::array())) out.push_back(m.value("digest", ""));
  return out;
}

bool desired_names_digest(const Node& node, const std::string& oci_digest) {
  return slurp(node.desired_file()).find(oci_digest) != std::string::npos;
}

}  // namespace

TEST_CASE("a module goes from cairn-module push through cairn-control to the agent's union; a foreign-signed one is refused") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  if (auto why = binaries_missing()) CAIRN_SKIP(*why);
  RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  ControlServer server({"--heartbeat-interval", "1s"});
  TempDir work;

  REQUIRE(cm(work.path(), {"keygen", (work.path() / "fleet").string()}).exit_code == 0);
  REQUIRE(cm(work.path(), {"keygen", (work.path() / "rogue").string()}).exit_code == 0);
  const auto fleet_pub = work.path() / "fleet.pub";
  const auto image_v1 = publish(work.path(), reg.host(), "1.0", "v1", work.path() / "fleet.key");

  // The catalog: the pushed tag, pinned to its digest, verified against the fleet key.
  auto added = server.cli({"module", "add", reg.host() + "/cairn/web:1.0", "--plain-http", "--trust-key", fleet_pub.string(), "--json"});
  REQUIRE_MESSAGE(added.exit_code == 0, std::string(added.out + added.err));
  const auto module = json_of(added, "module add");
  CHECK(module["name"] == "web");
  CHECK(module["version"] == "1.0");
  CHECK(module["image_digest"] == image_v1);
  const auto reference = module["reference"].get<std::string>();
  REQUIRE(reference.find("@sha256:") != std::string::npos);
  const auto oci_v1 = reference.substr(reference.find('@') + 1);
  // The same module from what cairn-module pack and sign left (manifest + .sig beside it) and
  // the tag it was pushed to: pinned to the same digest. A tag holding another module is refused.
  const auto manifest_file = (work.path() / "out-1.0/web.manifest.json").string();
  auto from_file = server.cli({"module", "add", manifest_file, "--reference", reg.host() + "/cairn/web:1.0", "--plain-http",
                               "--trust-key", fleet_pub.string(), "--json"});
  REQUIRE_MESSAGE(from_file.exit_code == 0, from_file.err);
  CHECK(json_of(from_file, "module add")["reference"] == reference);
  CHECK(json_of(from_file, "module add")["manifest_digest"] == module["manifest_digest"]);
  auto no_ref = server.cli({"module", "add", manifest_file, "--trust-key", fleet_pub.string()});
  CHECK(no_ref.exit_code == 64);
  CHECK(no_ref.err.find("needs --reference") != std::string::npos);

  // A node enrolled with role=edge, and the module assigned by that selector.
  const auto token = trimmed(server.cli({"token", "create", "--labels", "role=edge"}).out);
  Node node(server, reg.host(), fleet_pub);
  auto enrolled = node.run({"enroll", "--token", token, "--json"});
  REQUIRE_MESSAGE(enrolled.exit_code == 0, std::string(enrolled.out + enrolled.err));
  auto assigned = server.cli({"module", "assign", "web@1.0", "--selector", "role=edge"});
  REQUIRE_MESSAGE(assigned.exit_code == 0, assigned.err);
  CHECK(assigned.out.find("assigned web@1.0 to selector role=edge") != std::string::npos);
  auto listed = server.cli({"module", "list"});
  REQUIRE(listed.exit_code == 0);
  CHECK(listed.out.find(image_v1) != std::string::npos);
  CHECK(listed.out.find("selector role=edge") != std::string::npos);

  // The heartbeat reply carries the desired set; update fetches, verifies and attaches it.
  node.start_service();
  REQUIRE_MESSAGE(wait_for([&] { return desired_names_digest(node, oci_v1); }, 30s, 100ms), node.log());
  auto updated = node.run({"update", "--json"});
  INFO(updated.out << updated.err);
  REQUIRE(updated.exit_code == 0);
  CHECK(read_text(node.union_dir() / "srv/web/index.html") == "v1");

  // The next heartbeat reports the running digest; node show displays it.
  CHECK_MESSAGE(wait_for([&] { return reported_digests(server, node.id()) == std::vector<std::string>{image_v1}; }, 30s, 200ms),
                node.log());
  auto shown = server.cli({"node", "show", node.id()});
  REQUIRE(shown.exit_code == 0);
  CHECK(shown.out.find(image_v1) != std::string::npos);

  // This kernel has no fs-verity: a warning event once per image digest, and a status line.
  auto status = node.run({"status"});
  CHECK(status.out.find("fs-verity:   unavailable") != std::string::npos);
  const auto events_of_kind = [&](const std::string& kind) {
    auto r = server.cli({"events", "--node", node.id(), "--json"});
    std::vector<Json> out;
    for (const auto& e : json_of(r, "events").value("events", Json::array())) {
      if (e.value("kind", "") == kind) out.push_back(e);
    }
    return out;
  };
  CHECK_MESSAGE(wait_for([&] { return events_of_kind("module.verity_unavailable").size() == 1; }, 30s, 200ms), node.log());

  // Version 2.0 signed by a key outside the policy the agent pins. Control refuses it against
  // the fleet key; an operator who adds it with the rogue key gets it into the catalog, and the
  // agent still refuses it.
  publish(work.path(), reg.host(), "2.0", "v2", work.path() / "rogue.key");
  auto wrong_tag = server.cli({"module", "add", manifest_file, "--reference", reg.host() + "/cairn/web:2.0", "--plain-http",
                               "--trust-key", fleet_pub.string()});
  CHECK(wrong_tag.exit_code == 65);
  CHECK(wrong_tag.err.find("holds another module than") != std::string::npos);
  auto refused = server.cli({"module", "add", reg.host() + "/cairn/web:2.0", "--plain-http", "--trust-key", fleet_pub.string()});
  CHECK(refused.exit_code == 77);
  CHECK(refused.err.find("no signature verifies with the trust keys") != std::string::npos);
  auto added_rogue = server.cli({"module", "add", reg.host() + "/cairn/web:2.0", "--plain-http", "--trust-key",
                                 (work.path() / "rogue.pub").string(), "--json"});
  REQUIRE_MESSAGE(added_rogue.exit_code == 0, added_rogue.err);
  const auto ref_v2 = json_of(added_rogue, "module add")["reference"].get<std::string>();
  const auto oci_v2 = ref_v2.substr(ref_v2.find('@') + 1);
  auto by_node = server.cli({"module", "assign", "web@2.0", "--node", node.id()});
  REQUIRE_MESSAGE(by_node.exit_code == 0, by_node.err);
  REQUIRE_MESSAGE(wait_for([&] { return desired_names_digest(node, oci_v2); }, 30s, 100ms), node.log());

  auto tampered = node.run({"update", "--json"});
  INFO(tampered.out << tampered.err);
  CHECK(tampered.exit_code == 77);
  const auto report = json_of(tampered, "update");
  REQUIRE(report["details"]["failed"].size() == 1);
  CHECK(report["details"]["failed"][0]["reason"].get<std::string>().find("trust policy") != std::string::npos);
  CHECK(read_text(node.union_dir() / "srv/web/index.html") == "v1");  // the old union stays
  CHECK(wait_for([&] { return loops_under(node.root()).size() == 1; }, 5s));
  CHECK(wait_for([&] { return events_of_kind("module.refused").size() == 1; }, 30s, 200ms));
  auto refusals = events_of_kind("module.refused");
  REQUIRE(refusals.size() == 1);
  CHECK(refusals[0].value("message", "").find("web 1.0 stays attached") != std::string::npos);
  CHECK(reported_digests(server, node.id()) == std::vector<std::string>{image_v1});

  // Unassigning 2.0 by NAME@VERSION and node brings back the selector's 1.0: nothing to do.
  auto unassigned = server.cli({"module", "unassign", "web@2.0", "--node", node.id()});
  CHECK_MESSAGE(unassigned.exit_code == 0, unassigned.err);
  CHECK(wait_for([&] { return desired_names_digest(node, oci_v1); }, 30s, 100ms));
  CHECK(node.run({"update"}).exit_code == 0);
  CHECK(read_text(node.union_dir() / "srv/web/index.html") == "v1");
}

// Events of one kind that control holds for the node.
std::vector<Json> node_events(const ControlServer& server, const std::string& node_id, const std::string& kind) {
  auto r = server.cli({"events", "--node", node_id, "--json"});
  std::vector<Json> out;
  for (const auto& e : json_of(r, "events").value("events", Json::array())) {
    if (e.value("kind", "") == kind) out.push_back(e);
  }
  return out;
}

// Adds the pushed web:VERSION to the catalog, trusted with `trust_pub`, and returns its OCI digest.
std::string catalog_add(const ControlServer& server, const std::string& reg, const std::string& version, const fs::path& trust_pub,
                        bool required = false) {
  std::vector<std::string> args{"module", "add", reg + "/cairn/web:" + version, "--plain-http", "--trust-key", trust_pub.string(), "--json"};
  if (required) args.push_back("--required");
  auto added = server.cli(args);
  REQUIRE_MESSAGE(added.exit_code == 0, std::string(added.out + added.err));
  const auto reference = json_of(added, "module add")["reference"].get<std::string>();
  return reference.substr(reference.find('@') + 1);
}

TEST_CASE("a required module the node refuses fails the whole update: the old union stays, module.update_failed names it") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  if (auto why = binaries_missing()) CAIRN_SKIP(*why);
  RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  ControlServer server({"--heartbeat-interval", "1s"});
  TempDir work;
  REQUIRE(cm(work.path(), {"keygen", (work.path() / "fleet").string()}).exit_code == 0);
  REQUIRE(cm(work.path(), {"keygen", (work.path() / "rogue").string()}).exit_code == 0);
  const auto fleet_pub = work.path() / "fleet.pub";
  publish(work.path(), reg.host(), "1.0", "v1", work.path() / "fleet.key");
  publish(work.path(), reg.host(), "2.0", "v2", work.path() / "rogue.key");
  const auto oci_v1 = catalog_add(server, reg.host(), "1.0", fleet_pub, true);
  // 2.0 enters the catalog with the rogue key, required; the node pins only the fleet key.
  const auto oci_v2 = catalog_add(server, reg.host(), "2.0", work.path() / "rogue.pub", true);
  const auto listed = json_of(server.cli({"module", "list", "--json"}), "module list");
  REQUIRE(listed["modules"].size() == 2);
  for (const auto& m : listed["modules"]) CHECK(m["required"] == true);

  const auto token = trimmed(server.cli({"token", "create"}).out);
  Node node(server, reg.host(), fleet_pub);
  REQUIRE(node.run({"enroll", "--token", token}).exit_code == 0);
  REQUIRE(server.cli({"module", "assign", "web@1.0", "--node", node.id()}).exit_code == 0);
  node.start_service();
  REQUIRE_MESSAGE(wait_for([&] { return desired_names_digest(node, oci_v1); }, 30s, 100ms), node.log());
  // The heartbeat reply carried the flag: the stored desired set says so.
  CHECK(slurp(node.desired_file()).find("\"required\": true") != std::string::npos);
  REQUIRE(node.run({"update"}).exit_code == 0);
  CHECK(read_text(node.union_dir() / "srv/web/index.html") == "v1");
  // The union's mount: each overlayfs mount has its own device number (a symlink to a
  // generation dir on kernels without MOVE_MOUNT_BENEATH resolves to it).
  const auto union_dev = [&] {
    struct stat st {};
    return ::stat(node.union_dir().c_str(), &st) == 0 ? st.st_dev : dev_t{0};
  };
  const auto dev_before = union_dev();
  REQUIRE(dev_before != 0);
  const auto loops_before = loops_under(node.root());

  REQUIRE(server.cli({"module", "assign", "web@2.0", "--node", node.id()}).exit_code == 0);
  REQUIRE_MESSAGE(wait_for([&] { return desired_names_digest(node, oci_v2); }, 30s, 100ms), node.log());
  auto refused = node.run({"update", "--json"});
  INFO(refused.out << refused.err);
  CHECK(refused.exit_code == 77);
  const auto report = json_of(refused, "update");
  CHECK(report["error"]["message"].get<std::string>().find("required module web could not be fetched or verified") != std::string::npos);
  // The old union exactly as it was: the same generation, the same loop device, the same file.
  CHECK(union_dev() == dev_before);
  CHECK(loops_under(node.root()) == loops_before);
  CHECK(read_text(node.union_dir() / "srv/web/index.html") == "v1");
  CHECK_MESSAGE(wait_for([&] { return node_events(server, node.id(), "module.update_failed").size() == 1; }, 30s, 200ms), node.log());
  const auto failed = node_events(server, node.id(), "module.update_failed");
  REQUIRE(failed.size() == 1);
  CHECK(failed[0].value("message", "").find("required module web") != std::string::npos);
  CHECK(node_events(server, node.id(), "module.refused").empty());
}

TEST_CASE("a key only the policy distributed by control names is trusted, until a newer policy removes it") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  if (auto why = binaries_missing()) CAIRN_SKIP(*why);
  RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  ControlServer server({"--heartbeat-interval", "1s"});
  TempDir work;
  for (const char* k : {"fleet", "team", "policy"}) REQUIRE(cm(work.path(), {"keygen", (work.path() / k).string()}).exit_code == 0);
  // The node trusts the fleet key itself and pins the policy key; the team key is in neither.
  const auto team_pub = work.path() / "team.pub";
  publish(work.path(), reg.host(), "1.0", "v1", work.path() / "team.key");
  const auto oci_v1 = catalog_add(server, reg.host(), "1.0", team_pub);
  const auto sign_policy = [&](int version, const Json& trust) {
    const auto file = work.path() / ("policy-" + std::to_string(version) + ".json");
    write_text(file, dump_json({{"version", version}, {"trust", trust}}));
    auto r = cm(work.path(), {"policy", "sign", file.string(), "--key", (work.path() / "policy.key").string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    return work.path() / ("policy-" + std::to_string(version) + ".signed.json");
  };
  const auto policy_v1 = sign_policy(1, {{"web*", {"team.pub"}}});
  const auto policy_v2 = sign_policy(2, {{"db", {"team.pub"}}});
  auto set = server.cli({"module", "policy", "set", policy_v1.string()});
  REQUIRE_MESSAGE(set.exit_code == 0, set.err);
  CHECK(set.out.find("version 1") != std::string::npos);
  auto shown = server.cli({"module", "policy", "show", "--json"});
  CHECK(json_of(shown, "policy show")["version"] == 1);

  const auto token = trimmed(server.cli({"token", "create"}).out);
  Node node(server, reg.host(), work.path() / "fleet.pub", work.path() / "policy.pub");
  REQUIRE(node.run({"enroll", "--token", token}).exit_code == 0);
  REQUIRE(server.cli({"module", "assign", "web@1.0", "--node", node.id()}).exit_code == 0);
  node.start_service();
  const auto accepted = [&](int version) {
    return slurp(node.policy_file()).find("\"accepted_version\": " + std::to_string(version)) != std::string::npos;
  };
  REQUIRE_MESSAGE(wait_for([&] { return accepted(1) && desired_names_digest(node, oci_v1); }, 30s, 100ms), node.log());
  auto updated = node.run({"update", "--json"});
  INFO(updated.out << updated.err);
  REQUIRE(updated.exit_code == 0);
  CHECK(read_text(node.union_dir() / "srv/web/index.html") == "v1");
  CHECK(json_of(updated, "update")["details"]["attached"][0]["key_id"] ==
        json_of(cm(work.path(), {"policy", "verify", policy_v1.string(), "--key", (work.path() / "policy.pub").string(), "--json"}),
                "policy verify")["details"]["trust"]["web*"][0]);

  // Control refuses to go back to an older policy; the node would refuse it too.
  REQUIRE(server.cli({"module", "policy", "set", policy_v2.string()}).exit_code == 0);
  auto back = server.cli({"module", "policy", "set", policy_v1.string()});
  CHECK(back.exit_code != 0);
  CHECK(back.err.find("does not follow the stored version 2") != std::string::npos);
  REQUIRE_MESSAGE(wait_for([&] { return accepted(2); }, 30s, 100ms), node.log());

  // Version 2.0, signed by the team key the policy no longer names for web: refused.
  publish(work.path(), reg.host(), "2.0", "v2", work.path() / "team.key");
  const auto oci_v2 = catalog_add(server, reg.host(), "2.0", team_pub);
  REQUIRE(server.cli({"module", "assign", "web@2.0", "--node", node.id()}).exit_code == 0);
  REQUIRE_MESSAGE(wait_for([&] { return desired_names_digest(node, oci_v2); }, 30s, 100ms), node.log());
  auto refused = node.run({"update", "--json"});
  INFO(refused.out << refused.err);
  CHECK(refused.exit_code == 77);
  const auto report = json_of(refused, "update");
  REQUIRE(report["details"]["failed"].size() == 1);
  CHECK(report["details"]["failed"][0]["reason"].get<std::string>().find("which the trust policy does not allow for module web") !=
        std::string::npos);
  CHECK(read_text(node.union_dir() / "srv/web/index.html") == "v1");
  CHECK_MESSAGE(wait_for([&] { return node_events(server, node.id(), "module.policy_accepted").size() == 2; }, 30s, 200ms), node.log());
}

TEST_CASE("cairn-control module commands refuse bad input, naming it") {
  if (auto why = binaries_missing()) CAIRN_SKIP(*why);
  ControlServer server;
  TempDir work;
  auto no_key = server.cli({"module", "add", "127.0.0.1:1/cairn/web:1.0"});
  CHECK(no_key.exit_code == 64);
  CHECK(no_key.err.find("no --trust-key") != std::string::npos);
  write_text(work.path() / "k.pub", "not a key");
  auto bad_key = server.cli({"module", "add", "127.0.0.1:1/cairn/web:1.0", "--trust-key", (work.path() / "k.pub").string()});
  CHECK(bad_key.exit_code != 0);
  CHECK(bad_key.err.find("k.pub") != std::string::npos);
  auto bad_ref = server.cli({"module", "add", "no such thing", "--trust-key", (work.path() / "k.pub").string()});
  CHECK(bad_ref.exit_code != 0);
  auto bad_assign = server.cli({"module", "assign", "web", "--node", random_uuid().str()});
  CHECK(bad_assign.exit_code == 64);
  CHECK(bad_assign.err.find("expected NAME@VERSION") != std::string::npos);
  auto both = server.cli({"module", "assign", "web@1.0"});
  CHECK(both.exit_code == 64);
  CHECK(both.err.find("exactly one of --node and --selector") != std::string::npos);
  auto unknown = server.cli({"module", "assign", "web@1.0", "--selector", "role=edge"});
  CHECK(unknown.exit_code == 65);
  CHECK(unknown.err.find("web@1.0 is not in the catalog") != std::string::npos);
  auto bad_selector = server.cli({"module", "assign", "web@1.0", "--selector", "role"});
  CHECK(bad_selector.exit_code == 64);
  CHECK(bad_selector.err.find("'role' is not key=value") != std::string::npos);
  auto none = server.cli({"module", "unassign", random_uuid().str()});
  CHECK(none.exit_code == 65);
  CHECK(none.err.find("no module assignment") != std::string::npos);
  auto empty = server.cli({"module", "list", "--json"});
  REQUIRE(empty.exit_code == 0);
  CHECK(json_of(empty, "module list")["modules"].empty());
}

}  // namespace cairn::test
