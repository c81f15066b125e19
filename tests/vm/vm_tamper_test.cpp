// VM test 4 of issue 16: a tampered module in the registry. A diskless node boots in QEMU and
// gets its modules the way a fleet does: the operator catalogs and assigns them with
// `cairn-control module add/assign`, the desired set arrives with each heartbeat reply, and the
// node's service applies it by itself (modules.auto_apply, h-apply): nobody runs
// `cairn-agent update`; exec tasks only read the union.
//   1. hello 1.0 is assigned by label: the node fetches, verifies and mounts it; the heartbeat
//      reports its image digest, control shows module.applied, and the union serves its file;
//   2. hello 2.0 is pushed and catalogued (control verifies its signature), then one byte of its
//      image blob is flipped in the registry's own storage (the `data` file under the registry
//      root), and 2.0 is assigned to the node: the node refuses it by itself (sha256 of the
//      blob), `cairn-control events` shows module.refused with the reason, the union still
//      serves 1.0's file and the heartbeat still reports 1.0's digest only.
// The relay from the guest's loopback to the registry runs from the test hook of /init.
#include <doctest/doctest.h>

#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "common/json.hpp"
#include "common/uuid.hpp"
#include "tests/integration/module/registry_fixture.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/vm/qemu.hpp"
#include "tests/vm/vm_control.hpp"
#include "tests/vm/vm_support.hpp"

namespace cairn::test {
namespace {

using namespace std::chrono_literals;
using vm::has;
using vm::kControlGuestIp;
using vm::kControlGuestPort;
using vm::node_state;
using vm::trimmed;
using vm::VmControl;
using vm::write_text;

namespace fs = std::filesystem;

constexpr const char* kGreeting = "/run/cairn/union/usr/share/hello/greeting";

// Runs an exec task (`/bin/sh -c SCRIPT`) on the node to its end.
Json run_exec(const VmControl& control, const std::string& node, const std::string& script) {
  return vm::run_task(control, node, {"--kind", "exec"}, {"/bin/sh", "-c", script});
}

// The image digests the node's last heartbeat reported as running (`node show --json`).
std::vector<std::string> reported_digests(const VmControl& control, const std::string& node) {
  const auto r = control.cli({"node", "show", node, "--json"});
  const auto j = parse_json(r.out, "node show").value_or(Json(nullptr));
  std::vector<std::string> out;
  if (!j.is_object() || !j.contains("heartbeat") || !j["heartbeat"].is_object()) return out;
  for (const auto& m : j["heartbeat"].value("modules", Json::array())) out.push_back(m.value("digest", ""));
  return out;
}

// The node's events of one kind (`cairn-control events --node --json`).
std::vector<Json> events_of_kind(const VmControl& control, const std::string& node, const std::string& kind) {
  const auto r = control.cli({"events", "--node", node, "--json"});
  const auto j = parse_json(r.out, "events").value_or(Json(nullptr));
  std::vector<Json> out;
  if (!j.is_object()) return out;
  for (const auto& e : j.value("events", Json::array())) {
    if (e.value("kind", "") == kind) out.push_back(e);
  }
  return out;
}

// The OCI manifest digest control pinned for a module (`module add --json` "reference": ...@sha256:...).
std::string oci_digest_of(const RunResult& added) {
  const auto j = parse_json(added.out, "module add").value_or(Json(nullptr));
  const auto ref = j.is_object() ? j.value("reference", "") : "";
  const auto at = ref.find('@');
  return at == std::string::npos ? "" : ref.substr(at + 1);
}

std::string hex_of(std::string digest) { return digest.starts_with("sha256:") ? digest.substr(7) : digest; }

TEST_CASE("a module tampered in the registry is refused in the VM; the node stays on its last good union and control shows why") {
  const auto host = vm::probe_host();
  if (!host.missing.empty()) CAIRN_SKIP(host.missing);
  if (vm::env_or_empty("CAIRN_MODULE").empty()) CAIRN_SKIP("CAIRN_MODULE is not set (run through meson test)");
  RegistryProcess registry;
  if (!registry.error().empty()) CAIRN_SKIP(registry.error());

  TempDir dir;
  const auto initrd = vm::build_initramfs(dir.path() / "initrd.cpio.lz4", dir.path());
  REQUIRE_MESSAGE(initrd.has_value(), (initrd ? "" : initrd.error().message));

  // hello 1.0, signed with the fleet key, catalogued and assigned to the nodes labelled role=vm.
  const fs::path work = dir.path() / "module";
  fs::create_directories(work);
  REQUIRE(vm::cairn_module(work, {"keygen", (work / "fleet").string()}).exit_code == 0);
  write_text(work / "v1/usr/share/hello/greeting", "hello from 1.0\n");
  const Json v1 = vm::publish_module(work, registry.host(), work / "v1", "hello", "1.0", work / "fleet.key");
  const std::string image_v1 = "sha256:" + hex_of(v1.value("sha256", ""));

  VmControl control;
  const auto add_v1 = control.cli({"module", "add", registry.host() + "/cairn/hello:1.0", "--plain-http", "--trust-key",
                                   (work / "fleet.pub").string(), "--json"});
  REQUIRE_MESSAGE(add_v1.exit_code == 0, add_v1.err);
  const auto assign_v1 = control.cli({"module", "assign", "hello@1.0", "--selector", "role=vm"});
  REQUIRE_MESSAGE(assign_v1.exit_code == 0, assign_v1.err);
  const auto token = control.cli({"token", "create", "--labels", "role=vm"});
  REQUIRE_MESSAGE(token.exit_code == 0, token.err);

  // The node: diskless, its identity and token from fw-cfg, the agent's modules config and the
  // fleet key in /etc/cairn (fw-cfg), the registry relay started by the hook.
  const std::string uuid = random_uuid().str();
  const fs::path fw_config = dir.path() / "cairn-config.json";
  write_text(fw_config, dump_json(Json{{"token", trimmed(token.out)}}, -1));
  const fs::path agent_json = dir.path() / "agent.json";
  vm::write_modules_agent_config(agent_json, "hello", "keys/fleet.pub");
  const fs::path hook = dir.path() / "hook.sh";
  write_text(hook, "[ \"$1\" = 0 ] || exit 0\n" + vm::registry_relay_script() + "echo 'cairn-hook: relay up'\n");
  vm::VmSpec spec{
      .kernel = host.kernel,
      .initrd = *initrd,
      .append = "quiet cairn.control=https://" + std::string(kControlGuestIp) + ":" + std::to_string(kControlGuestPort) +
                " cairn.ca=" + control.fingerprint() + " cairn.debug=verbose cairn.debug=hook",
      .fw_cfg = {{.name = "opt/org.cairn/instance_uuid", .value = uuid},
                 {.name = "opt/org.cairn/config", .file = fw_config},
                 {.name = "opt/org.cairn/etc/agent.json", .file = agent_json},
                 {.name = "opt/org.cairn/etc/keys/fleet.pub", .file = work / "fleet.pub"},
                 {.name = "opt/org.cairn/hook", .file = hook}},
      .forwards = {{.guest_ip = kControlGuestIp, .guest_port = kControlGuestPort, .host_port = control.port()},
                   vm::registry_forward(registry.host())},
      .serial_log = dir.path() / "serial.log",
      .qemu_log = dir.path() / "qemu.log",
      .memory_mib = 768,
      .accel = vm::choose_accel(host, *initrd, dir.path()),
  };
  auto vm = vm::Vm::start(host, spec);
  REQUIRE_MESSAGE(vm.has_value(), (vm ? "" : vm.error().message));
  const bool ready = wait_for(
      [&] { return node_state(control, uuid) == "Ready" || !vm->running() || vm::agent_exited(*vm); }, 300s, 500ms);
  INFO("serial console:\n" << vm->serial() << "\nqemu:\n" << slurp(spec.qemu_log) << "\ncontrol:\n" << slurp(control.log()));
  REQUIRE(ready);
  REQUIRE(node_state(control, uuid) == "Ready");
  REQUIRE(vm->wait_serial("cairn-hook: relay up", 30s));

  // ---- 1.0: the desired set from the heartbeat reply, applied by the service itself ----------
  CHECK_MESSAGE(wait_for([&] { return reported_digests(control, uuid) == std::vector<std::string>{image_v1}; }, 240s, 500ms),
                "heartbeat reports: " << dump_json(Json(reported_digests(control, uuid)), -1) << "\nserial:\n" << vm->serial());
  CHECK_MESSAGE(wait_for([&] { return !events_of_kind(control, uuid, "module.applied").empty(); }, 60s, 500ms),
                slurp(control.log()));
  const auto applied = events_of_kind(control, uuid, "module.applied");
  REQUIRE(!applied.empty());
  CHECK(has(applied.back().value("message", ""), "hello@" + image_v1));
  const auto first = run_exec(control, uuid,
                              std::string("grep -q ") + hex_of(oci_digest_of(add_v1)) +
                                  " /persist/cairn/modules/desired.json || echo 'no desired 1.0'\n"
                                  "cat " + kGreeting);
  const std::string out1 = first.value("output", "");
  INFO("after the service applied 1.0: " << out1);
  CHECK(first.value("state", "") == "succeeded");
  CHECK(!has(out1, "no desired 1.0"));
  CHECK(has(out1, "hello from 1.0"));
  CHECK(has(vm->serial(), "event=modules.applied"));

  // ---- 2.0: catalogued while intact, then one byte of its image flipped in the registry --------
  write_text(work / "v2/usr/share/hello/greeting", "hello from 2.0\n");
  const Json v2 = vm::publish_module(work, registry.host(), work / "v2", "hello", "2.0", work / "fleet.key");
  const std::string image_v2 = hex_of(v2.value("sha256", ""));
  const auto add_v2 = control.cli({"module", "add", registry.host() + "/cairn/hello:2.0", "--plain-http", "--trust-key",
                                   (work / "fleet.pub").string(), "--json"});
  REQUIRE_MESSAGE(add_v2.exit_code == 0, add_v2.err);
  const fs::path blob = registry.dir() / "data/docker/registry/v2/blobs/sha256" / image_v2.substr(0, 2) / image_v2 / "data";
  REQUIRE_MESSAGE(fs::exists(blob), blob);
  const auto blob_size = fs::file_size(blob);
  {
    std::fstream f(blob, std::ios::binary | std::ios::in | std::ios::out);
    const auto at = static_cast<std::streamoff>(blob_size / 2);
    char c = 0;
    f.seekg(at);
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x01);
    f.seekp(at);
    f.write(&c, 1);
    REQUIRE(f.good());
  }
  CHECK(fs::file_size(blob) == blob_size);  // same size: only its digest can tell
  const auto assign_v2 = control.cli({"module", "assign", "hello@2.0", "--node", uuid});
  REQUIRE_MESSAGE(assign_v2.exit_code == 0, assign_v2.err);

  // The node refuses 2.0 by itself; control shows why. (Only the refusal of 2.0's digest counts:
  // an attempt before the registry relay answered may have left one for 1.0.)
  const std::string oci_v2 = oci_digest_of(add_v2);
  const auto refusals_of_v2 = [&] {
    std::vector<Json> out;
    for (const auto& e : events_of_kind(control, uuid, "module.refused")) {
      if (has(e.value("message", ""), oci_v2)) out.push_back(e);
    }
    return out;
  };
  std::vector<Json> refused;
  CHECK_MESSAGE(wait_for([&] { return !(refused = refusals_of_v2()).empty(); }, 240s, 500ms),
                slurp(control.log()) << "\nserial:\n" << vm->serial());
  REQUIRE(refused.size() == 1);
  const std::string message = refused[0].value("message", "");
  INFO("module.refused: " << message);
  CHECK(has(message, "desired module hello"));
  CHECK(has(message, "hello 1.0 stays attached"));
  CHECK((has(message, "sha256") || has(message, "digest")));
  const auto second = run_exec(control, uuid,
                               std::string("grep -q ") + hex_of(oci_v2) +
                                   " /persist/cairn/modules/desired.json || echo 'no desired 2.0'\n"
                                   "cat " + kGreeting);
  const std::string out2 = second.value("output", "");
  INFO("after the refusal: " << out2);
  CHECK(second.value("state", "") == "succeeded");
  CHECK(!has(out2, "no desired 2.0"));
  CHECK(has(out2, "hello from 1.0"));  // the last good union still serves 1.0's file
  CHECK(!has(out2, "hello from 2.0"));
  const auto events = control.cli({"events", "--node", uuid});
  CHECK(has(events.out, "module.refused"));
  std::cout << "vm-tamper: cairn-control events: module.refused: " << message << "\n";
  CHECK(reported_digests(control, uuid) == std::vector<std::string>{image_v1});
  CHECK(!vm::agent_exited(*vm));
  std::cout << "vm-tamper figures: accel=" << spec.accel << " " << vm::boot_figures(vm->serial()) << "\n";
  vm->stop();
}

}  // namespace
}  // namespace cairn::test
