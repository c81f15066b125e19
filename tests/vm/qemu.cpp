#include "tests/vm/qemu.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <sstream>

namespace cairn::test::vm {
namespace {

using namespace std::chrono_literals;

std::string env_or(const char* name, std::string fallback = {}) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

std::string find_in_path(const std::string& name) {
  std::stringstream path(env_or("PATH", "/usr/bin:/bin"));
  std::string dir;
  while (std::getline(path, dir, ':')) {
    const auto p = std::filesystem::path(dir) / name;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  return {};
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The relay of a guestfwd connection: busybox's nc (busybox-static, needed for the initramfs).
std::string busybox_path() {
  for (const char* p : {"/bin/busybox", "/usr/bin/busybox"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "busybox";
}

}  // namespace

Host probe_host() {
  Host host;
  host.qemu = find_in_path("qemu-system-x86_64");
  if (host.qemu.empty()) {
    host.missing = "no qemu-system-x86_64 (apt-get install qemu-system-x86)";
    return host;
  }
  if (busybox_path() == "busybox") {
    host.missing = "no busybox (apt-get install busybox-static)";
    return host;
  }
  // The sanitizer build (CI) carries an ASan agent of several times the size: its initramfs
  // does not unpack in the guest's RAM ("Initramfs unpacking failed: write error"), and a
  // -O0 ASan agent under TCG is no measure of the boot. The plain build runs these tests.
  if (!env_or("CAIRN_SANITIZED").empty()) {
    host.missing = "the agent is built with sanitizers (" + env_or("CAIRN_SANITIZED") +
                   "): the VM boot tests run in the plain build (./tools/test without CI)";
    return host;
  }
  const std::string build = env_or("CAIRN_INITRAMFS_BUILD");
  if (build.empty()) {
    host.missing = "CAIRN_INITRAMFS_BUILD is not set (run through meson test)";
    return host;
  }
  if (const auto k = env_or("CAIRN_VM_KERNEL"); !k.empty()) {
    host.kernel = k;
  } else {
    // --offline: a test never downloads; the kernel is fetched once by `initramfs/build`.
    const auto tmp = std::filesystem::temp_directory_path();
    const auto r = run_capture({build, "--kernel-only", "--offline"}, tmp, 30s);
    if (r.exit_code != 0) {
      host.missing = "no Debian kernel in the cache: " + trim(r.err);
      return host;
    }
    host.kernel = trim(r.out);
  }
  if (!std::filesystem::exists(host.kernel)) host.missing = "no kernel at " + host.kernel.string();
  return host;
}

Result<std::filesystem::path> build_initramfs(const std::filesystem::path& out, const std::filesystem::path& scratch) {
  const auto agent = env_or("CAIRN_AGENT");
  const auto r = run_capture({env_or("CAIRN_INITRAMFS_BUILD"), "--agent", agent, "--out", out.string()}, scratch, 300s);
  if (r.exit_code != 0) {
    return fail(Errc::internal, "initramfs/build failed (" + std::to_string(r.exit_code) + "): " + r.err + r.out, "");
  }
  return out;
}

std::vector<std::string> qemu_argv(const std::string& qemu, const VmSpec& spec) {
  std::string netdev = "user,id=n0,restrict=on";
  if (!spec.tftp_root.empty()) netdev += ",tftp=" + spec.tftp_root.string();
  if (!spec.bootfile.empty()) netdev += ",bootfile=" + spec.bootfile;
  // cmd: spawns the relay once per guest connection; the chardev form (tcp:HOST:PORT)
  // connects once when QEMU starts and serves a single guest connection.
  for (const auto& f : spec.forwards) {
    netdev += ",guestfwd=tcp:" + f.guest_ip + ":" + std::to_string(f.guest_port) + "-cmd:" + busybox_path() +
              " nc 127.0.0.1 " + std::to_string(f.host_port);
  }
  std::vector<std::string> argv = {qemu,
                                   "-machine", "q35",
                                   "-accel", spec.accel,
                                   "-m", std::to_string(spec.memory_mib),
                                   "-smp", "1",
                                   "-nodefaults", "-nographic", "-no-reboot",
                                   "-monitor", "none",
                                   "-serial", "file:" + spec.serial_log.string()};
  if (!spec.kernel.empty()) {
    argv.insert(argv.end(), {"-kernel", spec.kernel.string(), "-initrd", spec.initrd.string(), "-append",
                             "console=ttyS0 panic=-1 " + spec.append});
  }
  if (!spec.firmware.empty()) argv.insert(argv.end(), {"-bios", spec.firmware.string()});
  if (!spec.boot_order.empty()) argv.insert(argv.end(), {"-boot", spec.boot_order});
  if (!spec.cdrom.empty()) argv.insert(argv.end(), {"-cdrom", spec.cdrom.string()});
  if (!spec.boot_disk.empty()) {
    argv.insert(argv.end(), {"-drive", "file=" + spec.boot_disk.string() + ",format=" + spec.boot_disk_format +
                                           ",if=none,id=boot0,snapshot=" + (spec.boot_disk_snapshot ? "on" : "off"),
                             "-device", "virtio-blk-pci,drive=boot0,bootindex=0"});
  }
  argv.insert(argv.end(), {"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci"});
  if (!spec.disk.empty()) {
    argv.insert(argv.end(), {"-drive", "file=" + spec.disk.string() + ",format=raw,if=none,id=d0,cache=writeback",
                             "-device", "virtio-blk-pci,drive=d0"});
  }
  if (!spec.tpm_socket.empty()) {
    argv.insert(argv.end(), {"-chardev", "socket,id=chrtpm,path=" + spec.tpm_socket.string(), "-tpmdev",
                             "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0"});
  }
  for (const auto& f : spec.fw_cfg) {
    argv.emplace_back("-fw_cfg");
    argv.push_back("name=" + f.name + (f.file.empty() ? ",string=" + f.value : ",file=" + f.file.string()));
  }
  return argv;
}

Result<Vm> Vm::start(const Host& host, VmSpec spec) {
  auto p = Process::spawn(qemu_argv(host.qemu, spec), {}, spec.qemu_log);
  if (!p) return fail(p.error());
  return Vm(std::move(spec), std::move(*p));
}

bool Vm::wait_serial(const std::string& text, std::chrono::milliseconds timeout) {
  return wait_for([&] { return serial().find(text) != std::string::npos || !process_->running(); }, timeout, 100ms) &&
         serial().find(text) != std::string::npos;
}

void Vm::stop() {
  if (process_ && process_->running()) {
    process_->kill(SIGKILL);
    process_->wait_exit(10s);
  }
}

std::string swtpm_path() { return find_in_path("swtpm"); }

std::string program_path(const std::string& program) {
  if (auto p = find_in_path(program); !p.empty()) return p;
  for (const char* dir : {"/usr/sbin", "/sbin"}) {  // mkfs.fat, sfdisk: not on a user's PATH
    const auto p = std::filesystem::path(dir) / program;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  return {};
}

std::filesystem::path first_existing(const std::vector<std::filesystem::path>& candidates) {
  for (const auto& c : candidates) {
    std::error_code ec;
    if (std::filesystem::exists(c, ec)) return c;
  }
  return {};
}

Result<Swtpm> Swtpm::start(const std::filesystem::path& state_dir, const std::filesystem::path& socket,
                           const std::filesystem::path& log) {
  const auto program = swtpm_path();
  if (program.empty()) return fail(Errc::unavailable, "no swtpm on PATH", "apt-get install swtpm");
  std::error_code ec;
  std::filesystem::create_directories(state_dir, ec);
  std::filesystem::remove(socket, ec);
  auto p = Process::spawn({program, "socket", "--tpm2", "--tpmstate", "dir=" + state_dir.string(), "--ctrl",
                           "type=unixio,path=" + socket.string(), "--terminate", "--log", "level=1"},
                          {}, log);
  if (!p) return fail(p.error());
  if (!wait_for([&] { return std::filesystem::exists(socket) || !p->running(); }, 10s) || !p->running()) {
    return fail(Errc::unavailable, "swtpm did not open " + socket.string() + ": " + slurp(log), "");
  }
  return Swtpm(socket, std::move(*p));
}

void Swtpm::stop() {
  if (process_ && process_->running()) {
    process_->kill(SIGTERM);
    if (!process_->wait_exit(5s)) process_->kill(SIGKILL);
    process_->wait_exit(5s);
  }
}

std::string choose_accel(const Host& host, const std::filesystem::path& initrd, const std::filesystem::path& scratch) {
  static std::mutex mutex;
  static std::string chosen;
  const std::lock_guard lock(mutex);
  if (!chosen.empty()) return chosen;
  chosen = env_or("CAIRN_VM_ACCEL");
  if (!chosen.empty()) return chosen;
  chosen = "tcg";
  const int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return chosen;
  ::close(fd);
  VmSpec probe{.kernel = host.kernel, .initrd = initrd, .append = "cairn.debug=shell",
               .serial_log = scratch / "kvm-probe.serial", .qemu_log = scratch / "kvm-probe.qemu",
               .memory_mib = 256, .accel = "kvm"};
  auto vm = Vm::start(host, probe);
  if (vm && vm->wait_serial("cairn-init: event=init.start", 10s)) chosen = "kvm";
  if (vm) vm->stop();
  return chosen;
}

std::int64_t event_field(const std::string& log, const std::string& event, const std::string& key,
                         const std::string& also) {
  std::stringstream lines(log);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.find("event=" + event + " ") == std::string::npos && !line.ends_with("event=" + event)) continue;
    if (!also.empty() && line.find(also) == std::string::npos) continue;
    const auto at = line.find(" " + key + "=");
    if (at == std::string::npos) continue;
    try {
      return std::stoll(line.substr(at + key.size() + 2));
    } catch (const std::exception&) {
      return -1;
    }
  }
  return -1;
}

std::string boot_figures(const std::string& log) {
  std::ostringstream out;
  const auto handoff = event_field(log, "boot.handoff", "uptime_ms");
  const auto rtt = event_field(log, "heartbeat.ok", "ms");
  out << "init_start_ms=" << event_field(log, "init.start", "uptime_ms")
      << " network_ms=" << event_field(log, "init.network", "uptime_ms")
      << " agent_start_ms=" << event_field(log, "boot.start", "uptime_ms");
  for (const char* stage : {"identity", "persist", "enroll", "modules"}) {
    out << " " << stage << "_ms=" << event_field(log, "boot.stage", "duration_ms", std::string("stage=") + stage);
  }
  out << " handoff_ms=" << handoff << " first_heartbeat_rtt_ms=" << rtt
      << " first_heartbeat_at_ms~=" << (handoff >= 0 && rtt >= 0 ? handoff + rtt : -1);
  return out.str();
}

}  // namespace cairn::test::vm
