// The sealed base end to end in QEMU (issue 16): the base OS module (image/base/build, from
// its cached Debian root filesystem: tests never download) is signed and pushed to
// docker-registry on 127.0.0.1; a diskless VM boots with cairn.base=base@<its OCI manifest
// digest>. The initramfs' agent enrolls, fetches and verifies exactly that base, mounts the
// union at /sysroot, /init switch_roots into it, systemd starts cairn-agent.service and that
// agent (same credentials, no second enrollment) runs an exec task that shows PID 1 is
// systemd and the task runs in the agent's unit, then installs a service through that
// systemd (service.install over sd-bus) and removes it. A second VM pinned to another digest is
// refused: no switch_root, the reason on the console.
// The test registry is reached by the guest only through a guestfwd; a pre-boot hook
// (cairn.debug=prehook) relays it onto the guest's loopback, where the agent speaks plain http.
#include <doctest/doctest.h>

#include <chrono>
#include <fstream>
#include <iostream>

#include "common/crypto.hpp"
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
using vm::kControlGuestIp;
using vm::kControlGuestPort;
using vm::node_state;
using vm::trimmed;
using vm::VmControl;

namespace fs = std::filesystem;

using vm::env_or_empty;
using vm::has;
using vm::kRegistryGuestIp;
using vm::kRegistryGuestPort;
using vm::write_text;

// systemd's status line for a started unit. The console shortens it and colours the name
// ("Started \x1b[0;1;39mcairn-agent.servic…"), so: "Started" shortly before the unit's name.
bool systemd_started(const std::string& log, const std::string& unit_prefix) {
  for (auto at = log.find(unit_prefix); at != std::string::npos; at = log.find(unit_prefix, at + 1)) {
    const auto line_start = log.rfind('\n', at);
    const auto from = line_start == std::string::npos ? 0 : line_start + 1;
    if (at - from <= 60 && log.substr(from, at - from).find("Started") != std::string::npos) return true;
  }
  return false;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST_CASE("a sealed base: switch_root into the verified union, systemd runs the agent; another digest is refused") {
  const auto host = vm::probe_host();
  if (!host.missing.empty()) CAIRN_SKIP(host.missing);
  if (!env_or_empty("CAIRN_SANITIZED").empty()) CAIRN_SKIP("sanitizer build: the guest runs the agent of the plain build");
  const std::string cairn_module = env_or_empty("CAIRN_MODULE");
  const std::string base_build = env_or_empty("CAIRN_BASE_BUILD");
  if (cairn_module.empty() || base_build.empty()) CAIRN_SKIP("CAIRN_MODULE / CAIRN_BASE_BUILD not set (run through meson test)");
  RegistryProcess registry;
  if (!registry.error().empty()) CAIRN_SKIP(registry.error());
  TempDir dir;
  const fs::path work = dir.path() / "base";

  // The base module, from the cached Debian tree (exit 69: not cached; tests never download).
  const auto built = run_capture({base_build, "--offline", "--agent", env_or_empty("CAIRN_AGENT"), "--cairn-module",
                                  cairn_module, "--out", (work / "base").string(), "--version", "1.0"},
                                 dir.path(), 600s);
  if (built.exit_code == 69) CAIRN_SKIP("no cached base root filesystem: run image/base/build once online (" + trimmed(built.err) + ")");
  REQUIRE_MESSAGE(built.exit_code == 0, std::string(built.out + built.err));
  const auto base_bytes = fs::file_size(work / "base.erofs");
  REQUIRE(run_capture({cairn_module, "keygen", (work / "fleet").string()}, work, 60s).exit_code == 0);
  const auto sign = run_capture({cairn_module, "sign", "--key", (work / "fleet.key").string(),
                                 (work / "base.manifest.json").string()}, work, 120s);
  REQUIRE_MESSAGE(sign.exit_code == 0, sign.err);
  const auto push = run_capture({cairn_module, "push", registry.host() + "/cairn/base:1.0", "--plain-http", "--image",
                                 (work / "base.erofs").string(), "--manifest", (work / "base.manifest.json").string(),
                                 "--signature", (work / "base.sig").string(), "--json"},
                                work, 300s);
  REQUIRE_MESSAGE(push.exit_code == 0, std::string(push.out + push.err));
  const Json pushed = parse_json(push.out, "push").value_or(Json(nullptr));
  const std::string digest =
      pushed.is_object() && pushed.contains("details") ? pushed["details"].value("manifest_digest", "") : "";
  INFO("push: " << push.out);
  REQUIRE(digest.starts_with("sha256:"));

  auto initrd = vm::build_initramfs(dir.path() / "initrd.cpio.zst", dir.path());
  REQUIRE_MESSAGE(initrd.has_value(), (initrd ? "" : initrd.error().message));
  const std::string accel = vm::choose_accel(host, *initrd, dir.path());

  // The agent's config: the registry on the guest's loopback (relayed) and the base's key.
  const fs::path agent_json = dir.path() / "agent.json";
  write_text(agent_json, dump_json(Json{{"modules",
                                         {{"registry", "127.0.0.1:" + std::to_string(kRegistryGuestPort) + "/cairn"},
                                          {"plain_http", true},
                                          {"trust", {{"base", Json::array({"keys/fleet.pub"})}}}}}},
                                   -1));
  const fs::path prehook = dir.path() / "prehook.sh";
  write_text(prehook, "nc -ll -p " + std::to_string(kRegistryGuestPort) + " -e nc " + kRegistryGuestIp + " " +
                          std::to_string(kRegistryGuestPort) + " &\n"
                          "echo $! > /run/cairn-prehook.pids\n"
                          "for i in 1 2 3 4 5 6 7 8 9 10; do netstat -ltn | grep -q ':" +
                          std::to_string(kRegistryGuestPort) + " ' && break; sleep 0.1; done\n");

  VmControl control;
  const int registry_port = std::stoi(registry.host().substr(registry.host().rfind(':') + 1));
  const auto boot_vm = [&](const std::string& name, const std::string& uuid, const std::string& pinned) {
    const auto token = control.cli({"token", "create"});
    REQUIRE_MESSAGE(token.exit_code == 0, token.err);
    const fs::path fw_config = dir.path() / (name + ".config.json");
    write_text(fw_config, dump_json(Json{{"token", trimmed(token.out)}}, -1));
    vm::VmSpec spec{
        .kernel = host.kernel,
        .initrd = *initrd,
        .append = "quiet systemd.show_status=1 cairn.control=https://" + std::string(kControlGuestIp) + ":" +
                  std::to_string(kControlGuestPort) + " cairn.ca=" + control.fingerprint() + " cairn.base=base@" +
                  pinned + " cairn.debug=prehook",
        .fw_cfg = {{.name = "opt/org.cairn/instance_uuid", .value = uuid},
                   {.name = "opt/org.cairn/config", .file = fw_config},
                   {.name = "opt/org.cairn/etc/agent.json", .file = agent_json},
                   {.name = "opt/org.cairn/etc/keys/fleet.pub", .file = work / "fleet.pub"},
                   {.name = "opt/org.cairn/prehook", .file = prehook}},
        .forwards = {{.guest_ip = kControlGuestIp, .guest_port = kControlGuestPort, .host_port = control.port()},
                     {.guest_ip = kRegistryGuestIp, .guest_port = kRegistryGuestPort, .host_port = registry_port}},
        .serial_log = dir.path() / (name + ".serial"),
        .qemu_log = dir.path() / (name + ".qemu"),
        .memory_mib = 1024,  // diskless: the base image lives in /persist's tmpfs
        .accel = accel,
    };
    auto v = vm::Vm::start(host, spec);
    REQUIRE_MESSAGE(v.has_value(), (v ? "" : v.error().message));
    return std::move(*v);
  };

  // ---- boot 1: the pinned base ----------------------------------------------------------------
  {
    const std::string uuid = random_uuid().str();
    const auto t0 = std::chrono::steady_clock::now();
    auto vm = boot_vm("sealed", uuid, digest);
    const bool switched = vm.wait_serial("event=init.switch_root sysroot=", 600s);
    const double switch_s = seconds_since(t0);
    INFO("serial console:\n" << vm.serial() << "\ncontrol:\n" << slurp(control.log()));
    REQUIRE(switched);
    // systemd says READY for the agent after its first heartbeat (Type=notify).
    const bool started = wait_for([&] { return systemd_started(vm.serial(), "cairn-agent.servic") || !vm.running(); }, 300s,
                                  100ms) &&
                         systemd_started(vm.serial(), "cairn-agent.servic");
    const double agent_ready_s = seconds_since(t0);
    REQUIRE(started);
    CHECK(node_state(control, uuid) == "Ready");

    // run(submit arguments[, argv]): a task on this node, run to its end; the task as shown.
    const auto run = [&](const std::vector<std::string>& args, const std::vector<std::string>& argv = {}) {
      INFO("serial console:\n" << vm.serial());
      const Json task = vm::run_task(control, uuid, args, argv, 180s, [&] { return !vm.running(); });
      INFO("task: " << dump_json(task, 2));
      CHECK(task.value("state", "") == "succeeded");
      return task;
    };
    const auto exec = [&](const std::string& script) { return run({"--kind", "exec"}, {"/bin/sh", "-c", script}); };
    const Json task = exec("echo pid1=$(cat /proc/1/comm) cgroup=$(cat /proc/self/cgroup)");
    const std::string log = vm.serial();
    // PID 1 is systemd, and the task ran inside the agent's unit: the agent under systemd.
    CHECK(has(task.value("output", ""), "pid1=systemd"));
    CHECK(has(task.value("output", ""), "cairn-agent.service"));

    // service.install and service.remove through the real systemd (PID 1 of the base) over
    // sd-bus, from inside the agent's sandboxed unit: the path the unit tests can only run
    // against a fake (tests/unit/agent/service_kinds_test.cpp skips it where PID 1 is not systemd).
    const fs::path svc = dir.path() / "svc";
    write_text(svc / "bin/run", "#!/bin/sh\necho cairn-hello-service up as $(id -un)\nexec sleep 3600\n");
    fs::permissions(svc / "bin/run", fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                         fs::perms::others_read | fs::perms::others_exec);
    const fs::path tarball = dir.path() / "svc.tar";
    const auto tarred = run_capture({vm::program_path("tar"), "-C", svc.string(), "--owner=0", "--group=0", "--format=ustar",
                                     "-cf", tarball.string(), "bin"},
                                    dir.path(), 60s);
    REQUIRE_MESSAGE(tarred.exit_code == 0, tarred.err);
    const auto encoded = run_capture({vm::program_path("base64"), "-w0", tarball.string()}, dir.path(), 60s);
    REQUIRE_MESSAGE(encoded.exit_code == 0, encoded.err);
    const Json install_args = {{"name", "hello"}, {"archive_base64", trimmed(encoded.out)}, {"exec", {"bin/run"}},
                               {"memory_max", "64M"}, {"cpu_quota", "20%"}};
    run({"--kind", "service.install", "--args-json", dump_json(install_args, -1)});
    // The service's first line reaches the journal a moment after systemd says it started.
    const Json status = exec("systemctl is-active cairn-hello.service; systemctl show -p DynamicUser,MemoryMax "
                            "cairn-hello.service; for i in 1 2 3 4 5 6 7 8 9 10; do "
                            "journalctl -b -u cairn-hello.service -o cat --no-pager | grep -q 'service up' && break; "
                            "sleep 1; done; journalctl -b -u cairn-hello.service -o cat --no-pager | tail -n 3");
    const std::string out = status.value("output", "");
    CHECK_MESSAGE(out.starts_with("active\n"), out);
    CHECK_MESSAGE(has(out, "DynamicUser=yes"), out);
    CHECK_MESSAGE(has(out, "MemoryMax=67108864"), out);
    CHECK_MESSAGE(has(out, "cairn-hello-service up as "), out);
    run({"--kind", "service.remove", "--args-json", R"({"name": "hello"})"});
    const Json after = exec("systemctl is-active cairn-hello.service; true");
    CHECK_MESSAGE(!after.value("output", "").starts_with("active\n"), after.value("output", ""));

    // The initramfs' stages, the base fetched and verified, the switch, and one enrollment.
    for (const char* stage : {"identity", "persist", "enroll", "modules"}) {
      CHECK_MESSAGE(has(log, std::string("event=boot.stage stage=") + stage + " ok=true"), stage);
    }
    CHECK(has(log, "(base base@" + digest + ")"));
    CHECK(has(log, "event=boot.handoff to=switch-root"));
    CHECK(has(log, "Welcome to"));  // systemd's banner, from the base
    CHECK(!has(log, "event=init.agent_exit"));
    CHECK(has(log, "enrolled: node " + uuid));
    CHECK(!has(log, "already enrolled"));  // the systemd agent did not enroll again (it never runs enroll)
    const auto shown = control.cli({"node", "show", uuid, "--json"});
    // control shows the running base (the heartbeat reports every attached module's image digest).
    const bool base_shown = has(shown.out, "\"base\"");
    CHECK_MESSAGE(base_shown, shown.out);

    const auto at_switch = vm::event_field(log, "init.switch_root", "uptime_ms");
    // The first heartbeat of systemd's agent: systemd prints "Started" when the agent sends
    // READY=1, right after it; the console has no clock there, so the host's time between the
    // two lines is added to the kernel uptime of the switch_root line.
    const auto first_hb_ms = at_switch + static_cast<std::int64_t>((agent_ready_s - switch_s) * 1000.0);
    std::cout << "vm-base figures: accel=" << accel << " base_image_bytes=" << base_bytes
              << " switch_root_uptime_ms=" << at_switch << " systemd_agent_first_heartbeat_uptime_ms~=" << first_hb_ms
              << " host_s_vm_start_to_switch_root=" << switch_s << " host_s_vm_start_to_agent_ready=" << agent_ready_s
              << " " << vm::boot_figures(log) << "\n";
    vm.stop();
  }

  // ---- boot 2: pinned to a digest the registry does not hold: refused, no switch_root ---------
  {
    const std::string uuid = random_uuid().str();
    const std::string other = "sha256:" + sha256_hex("not the base that was published");
    auto vm = boot_vm("refused", uuid, other);
    const bool refused = vm.wait_serial("event=init.switch_root ok=false", 600s);
    const std::string log = vm.serial();
    INFO("serial console:\n" << log);
    REQUIRE(refused);
    CHECK(has(log, "event=boot.stage stage=modules ok=false"));
    CHECK(has(log, "base@" + other));
    CHECK(!has(log, "event=init.switch_root sysroot="));
    CHECK(!has(log, "Welcome to"));
    CHECK(has(log, "event=init.agent_exit code="));
    vm.stop();
  }
}

}  // namespace
}  // namespace cairn::test
