// The QEMU harness of the VM tests: Debian's kernel and our initramfs in qemu-system-x86_64,
// the serial console in a file the test polls with deadlines, identity and configuration over
// fw-cfg, and the network only through user networking with restrict=on: the guest reaches
// nothing but the guestfwd ports the test names (services it started on 127.0.0.1), each
// guest connection relayed by `busybox nc 127.0.0.1 PORT`.
#pragma once

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "tests/support/process.hpp"

namespace cairn::test::vm {

// What the tests need from the host; `missing` says why a VM test must skip.
struct Host {
  std::string qemu;                 // path of qemu-system-x86_64
  std::filesystem::path kernel;     // Debian's vmlinuz (from initramfs/build's cache)
  std::string missing;              // non-empty: the reason to skip
};
Host probe_host();

// Builds the initramfs with initramfs/build into `out` from the agent at $CAIRN_AGENT.
Result<std::filesystem::path> build_initramfs(const std::filesystem::path& out, const std::filesystem::path& scratch);

struct GuestForward {
  std::string guest_ip = "10.0.2.100";
  int guest_port = 0;
  int host_port = 0;  // on 127.0.0.1
};

struct FwCfg {
  std::string name{};               // opt/org.cairn/...
  std::string value{};              // string=... (no commas)
  std::filesystem::path file{};     // or file=...
};

struct VmSpec {
  std::filesystem::path kernel{};
  std::filesystem::path initrd{};
  std::string append{};             // kernel command line (console=ttyS0 is added)
  std::vector<FwCfg> fw_cfg{};
  std::vector<GuestForward> forwards{};
  std::filesystem::path serial_log{};
  std::filesystem::path qemu_log{};
  int memory_mib = 512;
  std::string accel = "tcg";
  std::filesystem::path disk{};        // a raw disk image, attached as virtio-blk (disk mode)
  std::filesystem::path tpm_socket{};  // swtpm's control socket: a TPM 2.0 on CRB (-tpmdev emulator)
  // Boot through the firmware instead of -kernel/-initrd (image/build's artifacts, test 3);
  // used when `kernel` is empty.
  std::string boot_order{};            // -boot: "n" network (iPXE), "d" CD-ROM, "c" disk
  std::filesystem::path cdrom{};       // -cdrom: an ISO (image/build iso)
  std::filesystem::path boot_disk{};   // a disk image to boot (virtio-blk, bootindex 0)
  std::string boot_disk_format = "qcow2";
  bool boot_disk_snapshot = true;      // snapshot=on: the boot's writes are thrown away
  std::filesystem::path tftp_root{};   // user networking's TFTP server: tftp=DIR
  std::string bootfile{};              // and the DHCP boot file it names: bootfile=FILE
  std::filesystem::path firmware{};    // -bios FILE (OVMF for EFI); empty: SeaBIOS
};

std::vector<std::string> qemu_argv(const std::string& qemu, const VmSpec& spec);

// "kvm" when /dev/kvm opens and a short boot of `initrd` reaches /init within a few seconds,
// else "tcg" (nested KVM on these machines aborts or hangs). $CAIRN_VM_ACCEL overrides.
// The answer is kept for the rest of the process.
std::string choose_accel(const Host& host, const std::filesystem::path& initrd, const std::filesystem::path& scratch);

class Vm {
 public:
  static Result<Vm> start(const Host& host, VmSpec spec);
  [[nodiscard]] const VmSpec& spec() const { return spec_; }
  [[nodiscard]] std::string serial() const { return slurp(spec_.serial_log); }
  // Polls the serial log until it contains `text` or the deadline passes.
  bool wait_serial(const std::string& text, std::chrono::milliseconds timeout);
  [[nodiscard]] bool running() { return process_->running(); }
  void stop();

 private:
  Vm(VmSpec spec, Process process) : spec_(std::move(spec)), process_(std::move(process)) {}
  VmSpec spec_;
  std::optional<Process> process_;
};

// swtpm as the VM's TPM, one per boot: `swtpm socket --tpm2 --tpmstate dir=STATE --ctrl
// type=unixio,path=SOCK --terminate`, so it ends when QEMU disconnects. The state dir is the
// TPM's persistent state (its seeds): the same dir on the next boot is the same machine, a
// fresh one is another TPM (every sealed blob fails to load).
class Swtpm {
 public:
  static Result<Swtpm> start(const std::filesystem::path& state_dir, const std::filesystem::path& socket,
                             const std::filesystem::path& log);
  [[nodiscard]] const std::filesystem::path& socket() const { return socket_; }
  void stop();

 private:
  Swtpm(std::filesystem::path socket, Process process) : socket_(std::move(socket)), process_(std::move(process)) {}
  std::filesystem::path socket_;
  std::optional<Process> process_;
};
// Path of swtpm on PATH, or "" (the disk-mode tests skip without it).
std::string swtpm_path();

// Path of PROGRAM on PATH, or "".
std::string program_path(const std::string& program);
// The first of `candidates` that exists, or "".
std::filesystem::path first_existing(const std::vector<std::filesystem::path>& candidates);

// The integer value of `key=` in the first serial line holding `event=NAME` (and `also` when
// given), or -1.
std::int64_t event_field(const std::string& log, const std::string& event, const std::string& key,
                         const std::string& also = "");

// One line of figures from a boot's console: kernel uptime (ms) at /init, network, agent
// start and handoff, each boot stage's duration, the first heartbeat's round trip, and
// handoff + round trip as the time of the first heartbeat accepted.
std::string boot_figures(const std::string& log);

}  // namespace cairn::test::vm
