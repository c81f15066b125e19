// Disk mode end to end in QEMU (issues 15 and 16): the parts this machine's kernel cannot run
// (device-mapper, fs-verity) proved in Debian's kernel inside the VM. One machine, modelled by
// a raw disk file (virtio-blk) and a swtpm state dir, boots three times:
//   1. first boot: the agent partitions the blank disk, seals a key to the TPM (PCR 7), formats
//      LUKS2, opens it with dm-crypt, makes ext4 with the verity feature, mounts /persist,
//      enrolls and becomes Ready; a signed module is attached from docker-registry into the
//      store on that ext4, where the kernel enables and measures fs-verity (the measurement
//      must equal the manifest's digest); an exec task runs in the VM;
//   2. reboot (same disk, same TPM state): the volume unlocks through the TPM, the identity is
//      the same, no second enrollment, the module is mounted from the local store with no
//      registry reachable;
//   3. another TPM (a fresh swtpm state: its seeds differ, so the sealed key cannot load): the
//      volume stays locked, the console carries the critical persist.unlock_failed, and the
//      disk is not reformatted (LUKS UUID read from the disk file on the host, and every byte
//      of the disk file unchanged);
//   4. the same other TPM, and the operator's recovery (the key boot 1 added with `persist
//      add-recovery`): `persist reseal` binds a new TPM key, `volume-setup` opens the volume
//      with its data.
// A second case, a machine with no TPM and key_source escrow, boots twice: the volume key comes
// from control over mTLS after an enrollment into tmpfs, and the reboot re-enrolls (the
// operator's allow-reenroll) and opens the same LUKS2 volume.
// The test hook of /init (cairn.debug=hook, fw-cfg opt/org.cairn/hook) runs between the boot
// stages and the service loop: it relays the registry to the guest's loopback (the agent speaks
// plain http only to a loopback registry) and runs `cairn-agent attach` directly, because the
// desired module set from control (h-modctl's `cairn-control module assign`) is not on main.
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <regex>
#include <initializer_list>
#include <sstream>

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

using vm::agent_exited;
using vm::cairn_module;
using vm::env_or_empty;
using vm::file_sha256;
using vm::has;
using vm::luks_uuid;
using vm::with_fw_cfg;
using vm::write_text;

constexpr std::uint64_t kDiskBytes = 2ull << 30;  // sparse; the persist rule wants >= 1 GiB

// The text between two marker lines the hook printed on the console ("" when absent).
std::string between(const std::string& log, const std::string& begin, const std::string& end) {
  const auto b = log.find(begin);
  if (b == std::string::npos) return "";
  const auto from = log.find('\n', b);
  const auto e = log.find(end, from);
  if (from == std::string::npos || e == std::string::npos) return "";
  return log.substr(from + 1, e - from - 1);
}

// The `cairn-agent modules --json` object the hook printed between its markers.
Json modules_json(const std::string& log, const std::string& tag) {
  const auto text = between(log, "cairn-hook: " + tag + " begin", "cairn-hook: " + tag + " end");
  std::string clean;  // the serial console ends lines with \r\n
  for (char c : text) {
    if (c != '\r') clean += c;
  }
  return parse_json(clean, "modules --json on the console").value_or(Json(nullptr));
}

// The first attached module of a `modules --json` answer, or null.
Json first_attached(const Json& j) {
  if (!j.is_object() || !j.contains("details") || !j["details"].contains("attached")) return nullptr;
  const auto& a = j["details"]["attached"];
  return a.is_array() && !a.empty() ? a[0] : Json(nullptr);
}

// One boot of the machine: a swtpm on `tpm_state` for this boot, QEMU with the disk file.
struct Boot {
  std::optional<vm::Swtpm> tpm;
  std::optional<vm::Vm> vm;
  vm::VmSpec spec;
  void stop() {
    if (vm) vm->stop();
    if (tpm) tpm->stop();
  }
  ~Boot() { stop(); }
};

// Everything the boots of one machine share.
struct Machine {
  vm::Host host;
  TempDir dir;
  fs::path initrd;
  fs::path disk;
  std::string uuid = random_uuid().str();
  std::string accel;

  void start(Boot& boot, const std::string& name, const fs::path& tpm_state, std::vector<vm::FwCfg> fw_cfg,
             std::vector<vm::GuestForward> forwards, const std::string& append) {
    if (!tpm_state.empty()) {  // empty: a machine with no TPM (the escrow case)
      auto tpm = vm::Swtpm::start(tpm_state, dir.path() / (name + ".swtpm.sock"), dir.path() / (name + ".swtpm.log"));
      REQUIRE_MESSAGE(tpm.has_value(), (tpm ? "" : tpm.error().message));
      boot.tpm.emplace(std::move(*tpm));
    }
    fw_cfg.insert(fw_cfg.begin(), vm::FwCfg{.name = "opt/org.cairn/instance_uuid", .value = uuid});
    boot.spec = vm::VmSpec{
        .kernel = host.kernel,
        .initrd = initrd,
        .append = "quiet cairn.persist=disk " + append,
        .fw_cfg = std::move(fw_cfg),
        .forwards = std::move(forwards),
        .serial_log = dir.path() / (name + ".serial"),
        .qemu_log = dir.path() / (name + ".qemu"),
        .memory_mib = 768,
        .accel = accel,
        .disk = disk,
        .tpm_socket = boot.tpm ? boot.tpm->socket() : fs::path(),
    };
    auto v = vm::Vm::start(host, boot.spec);
    REQUIRE_MESSAGE(v.has_value(), (v ? "" : v.error().message));
    boot.vm.emplace(std::move(*v));
  }
};

// The recovery key `persist add-recovery` showed: 8 groups of 8 hex digits joined by dashes.
std::string find_recovery_key(const std::string& log) {
  static const std::regex key("[0-9a-f]{8}(-[0-9a-f]{8}){7}");
  std::smatch match;
  return std::regex_search(log, match, key) ? match.str() : "";
}

std::string why_skip(const vm::Host& host) {
  if (!host.missing.empty()) return host.missing;
  if (vm::swtpm_path().empty()) return "no swtpm (apt-get install swtpm): disk mode needs a TPM";
  if (env_or_empty("CAIRN_MODULE").empty()) return "CAIRN_MODULE is not set (run through meson test)";
  return "";
}

TEST_CASE("disk mode in a VM: LUKS2 sealed by the TPM, fs-verity on /persist, reboot unlocks, another TPM does not") {
  Machine m;
  m.host = vm::probe_host();
  if (const auto why = why_skip(m.host); !why.empty()) CAIRN_SKIP(why);
  RegistryProcess registry;
  if (!registry.error().empty()) CAIRN_SKIP(registry.error());

  auto initrd = vm::build_initramfs(m.dir.path() / "initrd.cpio.lz4", m.dir.path());
  REQUIRE_MESSAGE(initrd.has_value(), (initrd ? "" : initrd.error().message));
  m.initrd = *initrd;
  m.accel = vm::choose_accel(m.host, m.initrd, m.dir.path());
  m.disk = m.dir.path() / "disk.raw";
  std::ofstream(m.disk).close();
  fs::resize_file(m.disk, kDiskBytes);
  const fs::path tpm_state = m.dir.path() / "tpm-state";

  // A signed module in the registry, and the agent's config naming the registry and the key.
  const fs::path work = m.dir.path() / "module";
  write_text(work / "tree/usr/share/hello/greeting", "hello from a verified module\n");
  REQUIRE(cairn_module(work, {"keygen", (work / "fleet").string()}).exit_code == 0);
  const Json manifest = vm::publish_module(work, registry.host(), work / "tree", "hello", "1.0", work / "fleet.key");
  const std::string manifest_fsverity = manifest.value("fsverity", "");
  REQUIRE(manifest_fsverity.size() == 64);

  const fs::path agent_json = m.dir.path() / "agent.json";
  vm::write_modules_agent_config(agent_json, "hello", "keys/fleet.pub");
  const std::vector<vm::FwCfg> etc = {{.name = "opt/org.cairn/etc/agent.json", .file = agent_json},
                                      {.name = "opt/org.cairn/etc/keys/fleet.pub", .file = work / "fleet.pub"}};

  VmControl control;
  const auto token = control.cli({"token", "create"});
  REQUIRE_MESSAGE(token.exit_code == 0, token.err);
  const fs::path fw_config = m.dir.path() / "cairn-config.json";
  write_text(fw_config, dump_json(Json{{"token", trimmed(token.out)}}, -1));
  const std::string append = "cairn.control=https://" + std::string(kControlGuestIp) + ":" +
                             std::to_string(kControlGuestPort) + " cairn.ca=" + control.fingerprint() +
                             " cairn.debug=verbose cairn.debug=hook";
  const vm::GuestForward control_fwd{.guest_ip = kControlGuestIp, .guest_port = kControlGuestPort,
                                     .host_port = control.port()};

  std::string recovery_key;

  // ---- boot 1: first boot of a blank disk ----------------------------------------------------
  const fs::path hook1 = m.dir.path() / "hook1.sh";
  write_text(hook1,
             "[ \"$1\" = 0 ] || exit 0\n" +
             vm::registry_relay_script() +
             "cairn-agent attach hello@1.0 && echo 'cairn-hook: attach ok'\n"
             "echo 'cairn-hook: modules begin'; cairn-agent modules --json; echo 'cairn-hook: modules end'\n"
             // A file with fs-verity on is read-only for everyone, root included (EPERM on open for write).
             "for f in $(find /persist/cairn/modules -type f); do\n"
             "  if (: >> $f) 2>/dev/null; then echo \"cairn-hook: writable $f\"; else echo \"cairn-hook: read-only $f\"; fi\n"
             "done\n"
             "kill $relay\n"
             // The operator's recovery key for boot 4 (shown once, here on the console).
             "cairn-agent persist add-recovery && echo 'cairn-hook: recovery added'\n");
  {
    Boot boot;
    m.start(boot, "boot1", tpm_state,
            with_fw_cfg(etc, {{.name = "opt/org.cairn/config", .file = fw_config}, {.name = "opt/org.cairn/hook", .file = hook1}}),
            {control_fwd, vm::registry_forward(registry.host())},
            append);
    const bool ready = wait_for(
        [&] { return node_state(control, m.uuid) == "Ready" || !boot.vm->running() || agent_exited(*boot.vm); }, 300s,
        500ms);
    INFO("boot 1 serial console:\n" << boot.vm->serial() << "\nqemu:\n" << slurp(boot.spec.qemu_log)
                                    << "\nswtpm:\n" << slurp(m.dir.path() / "boot1.swtpm.log"));
    REQUIRE(ready);
    REQUIRE(boot.vm->wait_serial("event=heartbeat.ok", 60s));
    const std::string log = boot.vm->serial();

    // Every stage, and the persist stage formatted the blank disk through dm-crypt.
    for (const char* stage : {"identity", "persist", "enroll", "modules"}) {
      CHECK_MESSAGE(log.find(std::string("event=boot.stage stage=") + stage + " ok=true") != std::string::npos, stage);
    }
    CHECK(log.find("event=init.persist mode=disk") != std::string::npos);
    CHECK(log.find("note=\"formatted /dev/vda1 on /persist (key: TPM PCR 7 sha256)\"") != std::string::npos);
    CHECK(log.find("enrolled: node " + m.uuid) != std::string::npos);
    CHECK(!luks_uuid(m.disk).empty());

    // fs-verity: the kernel enabled it on the store file and measured the manifest's digest.
    CHECK(log.find("cairn-hook: attach ok") != std::string::npos);
    const Json attached = first_attached(modules_json(log, "modules"));
    REQUIRE_MESSAGE(attached.is_object(), "no module in `cairn-agent modules --json` on the console");
    CHECK(attached.value("name", "") == "hello");
    CHECK(attached.value("verity", "") == "enabled");
    CHECK(attached.value("fsverity_digest", "") == "sha256:" + manifest_fsverity);
    CHECK(attached.value("mounted", false));
    // The image blob (named by its sha256) refuses a write open.
    CHECK(has(log, "cairn-hook: read-only /persist/cairn/modules/blobs/sha256/" +
                       attached.value("image_digest", "").substr(7)));

    CHECK(has(log, "cairn-hook: recovery added"));
    recovery_key = find_recovery_key(log);
    CHECK(!recovery_key.empty());

    // An exec task runs in the VM; it also flushes the disk before this boot ends.
    const Json task = vm::run_task(control, m.uuid, {"--kind", "exec"},
                                   {"/bin/sh", "-c", "echo exec-in-vm $(cat /proc/sys/kernel/osrelease); sync"}, 120s);
    INFO("task: " << dump_json(task, 2));
    CHECK(task.value("state", "") == "succeeded");
    CHECK(task.value("output", "").find("exec-in-vm 6.1.") != std::string::npos);
    std::cout << "vm-disk figures: boot=first accel=" << m.accel << " " << vm::boot_figures(log) << "\n";
    boot.stop();
  }
  const std::string uuid_after_first = luks_uuid(m.disk);
  REQUIRE(!uuid_after_first.empty());

  // ---- boot 2: the same machine again ---------------------------------------------------------
  const fs::path hook2 = m.dir.path() / "hook2.sh";
  write_text(hook2, "[ \"$1\" = 0 ] || exit 0\n"
                    "echo 'cairn-hook: modules begin'; cairn-agent modules --json; echo 'cairn-hook: modules end'\n");
  {
    Boot boot;
    // No registry forward: the module can only come from the local store.
    m.start(boot, "boot2", tpm_state,
            with_fw_cfg(etc, {{.name = "opt/org.cairn/config", .file = fw_config}, {.name = "opt/org.cairn/hook", .file = hook2}}),
            {control_fwd}, append);
    const bool hb = wait_for([&] { return has(boot.vm->serial(), "event=heartbeat.ok") || agent_exited(*boot.vm); }, 300s,
                             250ms) &&
                    has(boot.vm->serial(), "event=heartbeat.ok");
    const std::string log = boot.vm->serial();
    INFO("boot 2 serial console:\n" << log << "\nqemu:\n" << slurp(boot.spec.qemu_log));
    REQUIRE(hb);
    CHECK(log.find("note=\"opened /dev/vda1 on /persist (key: TPM PCR 7 sha256)\"") != std::string::npos);
    CHECK(log.find("already enrolled: node " + m.uuid) != std::string::npos);
    CHECK(log.find("1 module(s) re-verified and mounted") != std::string::npos);
    const Json attached = first_attached(modules_json(log, "modules"));
    REQUIRE(attached.is_object());
    CHECK(attached.value("verity", "") == "enabled");
    CHECK(attached.value("mounted", false));
    CHECK(node_state(control, m.uuid) == "Ready");
    const auto list = control.cli({"node", "list", "--json"});
    const auto nodes = parse_json(list.out, "node list").value_or(Json(nullptr));
    INFO("node list: " << list.out);
    REQUIRE(nodes.is_object());
    CHECK(nodes["nodes"].size() == 1);  // one node, enrolled once
    std::cout << "vm-disk figures: boot=reboot accel=" << m.accel << " " << vm::boot_figures(log) << "\n";
    boot.stop();
  }
  CHECK(luks_uuid(m.disk) == uuid_after_first);

  // ---- boot 3: another TPM (fresh swtpm state) -------------------------------------------------
  const std::string disk_before = file_sha256(m.disk);
  {
    Boot boot;
    m.start(boot, "boot3", m.dir.path() / "other-tpm-state", etc, {control_fwd},
            "cairn.control=https://" + std::string(kControlGuestIp) + ":" + std::to_string(kControlGuestPort) +
                " cairn.ca=" + control.fingerprint());
    const bool exited = boot.vm->wait_serial("event=init.agent_exit", 300s);
    const std::string log = boot.vm->serial();
    INFO("boot 3 serial console:\n" << log << "\nqemu:\n" << slurp(boot.spec.qemu_log));
    REQUIRE(exited);
    CHECK(log.find("persist.unlock_failed") != std::string::npos);
    CHECK(log.find("critical") != std::string::npos);
    CHECK(log.find("event=boot.stage stage=persist ok=false") != std::string::npos);
    CHECK(log.find("event=boot.stage stage=enroll") == std::string::npos);
    CHECK(log.find("event=init.agent_exit code=77") != std::string::npos);
    std::stringstream lines(log);
    for (std::string line; std::getline(lines, line);) {
      if (has(line, "level=critical")) std::cout << "vm-disk boot 3 console: " << line << "\n";
    }
    boot.stop();
  }
  CHECK(luks_uuid(m.disk) == uuid_after_first);
  CHECK(file_sha256(m.disk) == disk_before);  // not one byte of the disk changed

  // ---- boot 4: the same other TPM; the operator recovers with the recovery key -----------------
  REQUIRE(!recovery_key.empty());
  const fs::path key_file = m.dir.path() / "recovery.key";
  write_text(key_file, recovery_key + "\n");
  const fs::path hook4 = m.dir.path() / "hook4.sh";
  write_text(hook4, "[ \"$1\" = 77 ] || exit 0\n"
                    "cairn-agent persist reseal --recovery-key-file /etc/cairn/recovery.key && echo 'cairn-hook: resealed'\n"
                    "cairn-agent volume-setup && echo 'cairn-hook: volume open'\n"
                    "[ -f /persist/cairn/enrollment.json ] && echo 'cairn-hook: the data is there'\n");
  {
    Boot boot;
    m.start(boot, "boot4", m.dir.path() / "other-tpm-state",
            with_fw_cfg(etc, {{.name = "opt/org.cairn/etc/recovery.key", .file = key_file}, {.name = "opt/org.cairn/hook", .file = hook4}}),
            {control_fwd}, append);
    const bool done = boot.vm->wait_serial("event=init.hook done=true", 300s);
    const std::string log = boot.vm->serial();
    INFO("boot 4 serial console:\n" << log << "\nqemu:\n" << slurp(boot.spec.qemu_log));
    REQUIRE(done);
    CHECK(has(log, "persist.unlock_failed"));  // still the other TPM, until the operator acts
    CHECK(has(log, "cairn-hook: resealed"));
    CHECK(has(log, "cairn-hook: volume open"));
    CHECK(has(log, "cairn-hook: the data is there"));
    boot.stop();
  }
  CHECK(luks_uuid(m.disk) == uuid_after_first);
}

// The LUKS version of the header luks_uuid reads (big-endian u16 at 6), or 0.
int luks_version(const fs::path& disk) {
  const auto uuid = luks_uuid(disk);  // also checks the GPT and the magic
  if (uuid.empty()) return 0;
  std::ifstream in(disk, std::ios::binary);
  std::string gpt(92, '\0');
  in.seekg(512);
  in.read(gpt.data(), 92);
  auto le64 = [](const std::string& b, std::size_t at) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + static_cast<std::size_t>(i)]);
    return v;
  };
  std::string entry(128, '\0');
  in.seekg(static_cast<std::streamoff>(le64(gpt, 72) * 512));
  in.read(entry.data(), 128);
  std::string hdr(8, '\0');
  in.seekg(static_cast<std::streamoff>(le64(entry, 32) * 512));
  in.read(hdr.data(), 8);
  return in ? (static_cast<unsigned char>(hdr[6]) << 8) | static_cast<unsigned char>(hdr[7]) : 0;
}

// The line of the console holding `text`, or "".
std::string line_with(const std::string& log, const std::string& text) {
  const auto at = log.find(text);
  if (at == std::string::npos) return "";
  const auto b = log.rfind('\n', at);
  const auto e = log.find('\n', at);
  return log.substr(b == std::string::npos ? 0 : b + 1, e == std::string::npos ? std::string::npos : e - b - 1);
}

// Issue 15, key_source escrow: a machine with no TPM. Boot 1 enrolls into tmpfs, fetches the
// escrow key over mTLS, formats LUKS2 on the blank disk and opens it with dm-crypt, moves the
// credentials onto /persist; control keeps the escrow row. Boot 2 (same disk): the operator
// allows the re-enrollment, the node enrolls again into tmpfs and opens the same volume with
// the escrowed key (same LUKS UUID: no reformat), Ready with the same id.
TEST_CASE("escrow in a VM: no TPM, the volume key from control, LUKS2 formatted then reopened after a re-enrollment") {
  Machine m;
  m.host = vm::probe_host();
  if (!m.host.missing.empty()) CAIRN_SKIP(m.host.missing);
  auto initrd = vm::build_initramfs(m.dir.path() / "initrd.cpio.lz4", m.dir.path());
  REQUIRE_MESSAGE(initrd.has_value(), (initrd ? "" : initrd.error().message));
  m.initrd = *initrd;
  m.accel = vm::choose_accel(m.host, m.initrd, m.dir.path());
  m.disk = m.dir.path() / "disk.raw";
  std::ofstream(m.disk).close();
  fs::resize_file(m.disk, kDiskBytes);

  const fs::path agent_json = m.dir.path() / "agent.json";
  write_text(agent_json, R"({"persist": {"key_source": "escrow"}})");
  VmControl control;
  // A fleet token good for both boots (a used single-use token is refused before the
  // re-enrollment rule is asked).
  const auto token = control.cli({"token", "create", "--uses", "5"});
  REQUIRE_MESSAGE(token.exit_code == 0, token.err);
  const fs::path fw_config = m.dir.path() / "cairn-config.json";
  write_text(fw_config, dump_json(Json{{"token", trimmed(token.out)}}, -1));
  // After the boot stages: what is mounted on /persist, the device-mapper devices, no TPM,
  // and a sync so the disk file holds everything before QEMU is stopped.
  const fs::path hook = m.dir.path() / "hook.sh";
  write_text(hook, "[ \"$1\" = 0 ] || exit 0\n"
                   "while read dev mnt type rest; do [ \"$mnt\" = /persist ] && echo \"cairn-hook: mount $dev $type\"; done < /proc/mounts\n"
                   "for d in /sys/block/dm-*; do echo \"cairn-hook: dm $(cat $d/dm/name) $(cat $d/dm/uuid)\"; done\n"
                   "ls /dev/tpm0 /dev/tpmrm0 >/dev/null 2>&1 && echo 'cairn-hook: tpm present' || echo 'cairn-hook: no tpm'\n"
                   "sync; echo 'cairn-hook: synced'\n");
  const std::vector<vm::FwCfg> fw_cfg = {{.name = "opt/org.cairn/etc/agent.json", .file = agent_json},
                                         {.name = "opt/org.cairn/config", .file = fw_config},
                                         {.name = "opt/org.cairn/hook", .file = hook}};
  const std::string append = "cairn.control=https://" + std::string(kControlGuestIp) + ":" +
                             std::to_string(kControlGuestPort) + " cairn.ca=" + control.fingerprint() +
                             " cairn.debug=verbose cairn.debug=hook";
  const vm::GuestForward control_fwd{.guest_ip = kControlGuestIp, .guest_port = kControlGuestPort,
                                     .host_port = control.port()};
  const fs::path control_db = control.log().parent_path() / "state" / "control.db";

  // The checks both boots share: escrow order (enroll before persist), the volume on dm-crypt.
  auto check_escrow_boot = [&](const std::string& log, const std::string& action) {
    const auto enroll_at = log.find("event=boot.stage stage=enroll ok=true");
    const auto persist_at = log.find("event=boot.stage stage=persist ok=true");
    REQUIRE(enroll_at != std::string::npos);
    REQUIRE(persist_at != std::string::npos);
    CHECK(enroll_at < persist_at);  // identity -> enroll (tmpfs) -> persist
    CHECK(has(line_with(log, "event=boot.stage stage=enroll ok=true"), "node " + m.uuid + " (credentials in tmpfs"));
    const auto persist_line = line_with(log, "event=boot.stage stage=persist ok=true");
    CHECK_MESSAGE(has(persist_line, action + " /dev/vda1 on /persist with the escrow key; credentials (serial "),
                  persist_line);
    CHECK(has(log, "event=persist.credentials_moved"));
    CHECK(has(log, "event=boot.stage stage=modules ok=true"));
    CHECK(has(log, "cairn-hook: no tpm"));
    CHECK(has(log, "cairn-hook: mount /dev/mapper/cairn-persist ext4"));
    const std::string luks = luks_uuid(m.disk);
    std::string hex;
    for (char c : luks) {
      if (c != '-') hex += c;
    }
    CHECK_MESSAGE(has(log, "cairn-hook: dm cairn-persist CRYPT-LUKS2-" + hex + "-cairn-persist"), luks);
    CHECK(has(log, "cairn-hook: synced"));
    std::cout << "vm-disk escrow console: " << persist_line << "\n";
  };
  auto escrow_rows = [&] {
    // sqlite3 found on PATH by the shell (the control service keeps running: WAL, read-only here).
    const auto r = run_capture({"/bin/sh", "-c", "exec sqlite3 -readonly \"$0\" \"$1\"", control_db.string(),
                                "SELECT node_id || ' ' || length(key) FROM escrow_keys"}, m.dir.path(), 20s);
    return trimmed(r.out + r.err);
  };

  // ---- boot 1: a blank disk, no TPM ------------------------------------------------------------
  std::string escrow_row;
  {
    Boot boot;
    m.start(boot, "escrow1", {}, fw_cfg, {control_fwd}, append);
    const bool ready = wait_for(
        [&] { return node_state(control, m.uuid) == "Ready" || !boot.vm->running() || agent_exited(*boot.vm); }, 300s,
        500ms);
    INFO("escrow boot 1 serial console:\n" << boot.vm->serial() << "\nqemu:\n" << slurp(boot.spec.qemu_log)
                                           << "\ncontrol:\n" << slurp(control.log()));
    REQUIRE(ready);
    REQUIRE(boot.vm->wait_serial("event=heartbeat.ok", 60s));
    const std::string log = boot.vm->serial();
    CHECK(has(log, "event=init.persist mode=disk"));
    check_escrow_boot(log, "formatted");
    CHECK(has(line_with(log, "event=boot.stage stage=enroll ok=true"), "note=\"enrolled: node " + m.uuid));
    CHECK(has(slurp(control.log()), "control.escrow_key_created"));
    std::cout << "vm-disk figures: boot=escrow-first accel=" << m.accel << " " << vm::boot_figures(log) << "\n";
    boot.stop();
  }
  const std::string uuid_after_first = luks_uuid(m.disk);
  REQUIRE(!uuid_after_first.empty());
  CHECK(luks_version(m.disk) == 2);
  escrow_row = escrow_rows();
  CHECK_MESSAGE(escrow_row.rfind(m.uuid + " ", 0) == 0, escrow_row);  // one row, this node's
  CHECK(escrow_row.find('\n') == std::string::npos);
  std::cout << "vm-disk escrow row (node, sealed length): " << escrow_row << "; LUKS UUID " << uuid_after_first << "\n";

  // ---- boot 2: the same disk; the operator allows the re-enrollment first ----------------------
  const auto allow = control.cli({"node", "allow-reenroll", m.uuid});
  REQUIRE_MESSAGE(allow.exit_code == 0, std::string(allow.out + allow.err));
  {
    Boot boot;
    m.start(boot, "escrow2", {}, fw_cfg, {control_fwd}, append);
    const bool hb = wait_for([&] { return has(boot.vm->serial(), "event=heartbeat.ok") || agent_exited(*boot.vm); },
                             300s, 250ms) &&
                    has(boot.vm->serial(), "event=heartbeat.ok");
    const std::string log = boot.vm->serial();
    INFO("escrow boot 2 serial console:\n" << log << "\nqemu:\n" << slurp(boot.spec.qemu_log) << "\ncontrol:\n"
                                           << slurp(control.log()));
    REQUIRE(hb);
    check_escrow_boot(log, "opened");
    CHECK(!has(log, "formatted /dev/vda1"));
    CHECK(node_state(control, m.uuid) == "Ready");
    const auto list = control.cli({"node", "list", "--json"});
    const auto nodes = parse_json(list.out, "node list").value_or(Json(nullptr));
    INFO("node list: " << list.out);
    REQUIRE(nodes.is_object());
    CHECK(nodes["nodes"].size() == 1);  // the same node, enrolled again
    std::cout << "vm-disk figures: boot=escrow-reboot accel=" << m.accel << " " << vm::boot_figures(log) << "\n";
    boot.stop();
  }
  CHECK(luks_uuid(m.disk) == uuid_after_first);  // opened, not reformatted
  CHECK(escrow_rows() == escrow_row);             // the same escrowed key
}

}  // namespace
}  // namespace cairn::test
