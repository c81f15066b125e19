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

// The integer value of `key=` in the first serial line holding `event=NAME` (and `also` when
// given), or -1.
std::int64_t event_field(const std::string& log, const std::string& event, const std::string& key,
                         const std::string& also = "");

}  // namespace cairn::test::vm
