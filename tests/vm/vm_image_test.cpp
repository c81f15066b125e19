// VM test 3 (issue 16): the artifacts of image/build boot through the firmware, as a fleet
// operator boots them, and the node becomes Ready at a real cairn-control on 127.0.0.1:
//   - PXE: QEMU's own iPXE ROM (Debian's ipxe-qemu) gets boot.ipxe from user networking's
//     TFTP server (tftp=DIR,bootfile=boot.ipxe), then the kernel and the initrd (diskless),
//     under SeaBIOS and, when OVMF is installed, under EFI;
//   - ISO: -cdrom cairn.iso under SeaBIOS (BIOS), and under OVMF (EFI) when it is installed;
//     and the same ISO as a raw disk (dd to a USB stick) under SeaBIOS, through its MBR;
//   - disk: the qcow2 under OVMF (EFI), when OVMF is installed, with a TPM (swtpm): its boot
//     entry says cairn.persist=disk cairn.disk=boot-disk-free, so the first boot creates the
//     LUKS /persist partition in the free space of that one disk, sealed to the TPM (h-userdata).
// The bootstrap parameters (control URL, CA pin, token) reach the agent only through the
// kernel command line image/build pinned into the artifact (no fw-cfg config): the console
// says so, and the token never appears on it. fw-cfg gives only the instance UUID (identity).
// Skips, naming what is missing, without QEMU, the cached kernel, the iPXE ROMs or the ISO
// and disk tools; never downloads.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <optional>
#include <sstream>

#include "common/uuid.hpp"
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
using vm::has;
using vm::node_state;
using vm::trimmed;
using vm::VmControl;

std::string image_build() {
  const char* p = std::getenv("CAIRN_IMAGE_BUILD");
  return p != nullptr ? p : "";
}

// The initramfs, built once for every boot of this process (it takes a minute).
struct Shared {
  TempDir dir;
  std::filesystem::path initrd;
  std::string error;
};
Shared& shared_initrd() {
  static Shared shared;
  static std::once_flag once;
  std::call_once(once, [] {
    auto r = vm::build_initramfs(shared.dir.path() / "initrd.cpio.zst", shared.dir.path());
    if (r) {
      shared.initrd = *r;
    } else {
      shared.error = r.error().message;
    }
  });
  return shared;
}

// Why the image tests cannot run here ("" when they can): QEMU and the kernel (probe_host),
// image/build, and what the target needs.
std::string missing_for(const vm::Host& host, const std::string& target) {
  if (!host.missing.empty()) return host.missing;
  if (image_build().empty()) return "CAIRN_IMAGE_BUILD is not set (run through meson test)";
  if (target == "pxe") {
    // QEMU loads the NIC's option ROM (iPXE) from its data dir; Debian ships it in ipxe-qemu.
    if (vm::first_existing({"/usr/share/qemu/efi-virtio.rom", "/usr/lib/ipxe/qemu/efi-virtio.rom"}).empty()) {
      return "no iPXE ROM for virtio-net (apt-get install ipxe-qemu)";
    }
  } else if (target == "iso") {
    for (const char* p : {"grub-mkimage", "xorriso", "mkfs.fat", "mcopy"}) {
      if (vm::program_path(p).empty()) {
        return std::string("no ") + p + " (apt-get install grub-common xorriso dosfstools mtools)";
      }
    }
    if (vm::first_existing({"/usr/lib/grub/i386-pc/boot_hybrid.img"}).empty()) return "no GRUB BIOS modules (apt-get install grub-pc-bin)";
    if (vm::first_existing({"/usr/lib/grub/x86_64-efi"}).empty()) return "no GRUB EFI modules (apt-get install grub-efi-amd64-bin)";
  } else if (target == "disk") {
    for (const char* p : {"grub-mkimage", "mkfs.fat", "mcopy", "mtype", "sfdisk", "qemu-img"}) {
      if (vm::program_path(p).empty()) {
        return std::string("no ") + p + " (apt-get install grub-common dosfstools mtools fdisk qemu-utils)";
      }
    }
    if (vm::first_existing({"/usr/lib/grub/x86_64-efi"}).empty()) return "no GRUB EFI modules (apt-get install grub-efi-amd64-bin)";
    if (vm::swtpm_path().empty()) return "no swtpm (apt-get install swtpm): the disk image's /persist is sealed to a TPM";
  }
  return "";
}

std::filesystem::path ovmf() {
  return vm::first_existing({"/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"});
}

std::uintmax_t size_of(const std::filesystem::path& p) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(p, ec);
  return ec ? 0 : n;
}

std::string control_url() { return "https://" + std::string(kControlGuestIp) + ":" + std::to_string(kControlGuestPort); }

// image/build TARGET into `out` with control's URL and CA pin and a new token pinned on the
// artifact's command line; returns the token. Checks that image/build never printed it and
// that the artifacts holding it are owner-only.
std::string build_artifacts(const std::string& target, VmControl& control, const vm::Host& host,
                            const std::filesystem::path& initrd, const std::filesystem::path& dir,
                            const std::filesystem::path& out, const std::vector<std::string>& artifacts) {
  const auto token = control.cli({"token", "create"});
  REQUIRE_MESSAGE(token.exit_code == 0, token.err);
  const std::string token_value = trimmed(token.out);
  const auto token_file = dir / "token";
  std::ofstream(token_file) << token_value << "\n";
  const auto built = run_capture({image_build(), target, "--kernel", host.kernel.string(), "--initrd", initrd.string(),
                                  "--control", control_url(), "--ca", control.fingerprint(), "--token-file",
                                  token_file.string(), "--append", "cairn.debug=verbose", "--size",
                                  // disk: room for /persist (min_size_mib 1024) after the 128 MiB ESP
                                  target == "disk" ? "2G" : "1G", "--out", out.string()},
                                 dir, 600s);
  INFO("image/build " << target << ":\n" << built.out << built.err);
  REQUIRE(built.exit_code == 0);
  CHECK(built.out.find(token_value) == std::string::npos);
  CHECK(built.err.find(token_value) == std::string::npos);
  std::cout << "vm-image " << target << " artifacts:";
  for (const auto& a : artifacts) {
    REQUIRE_MESSAGE(std::filesystem::exists(out / a), a);
    CHECK((std::filesystem::status(out / a).permissions() & std::filesystem::perms::others_read) ==
          std::filesystem::perms::none);
    std::cout << " " << a << "=" << size_of(out / a);
  }
  std::cout << "\n";
  return token_value;
}

// One boot of an artifact: control and a token, image/build TARGET with the parameters pinned,
// QEMU through its firmware, and the node Ready. `configure` sets how QEMU boots it.
void boot_to_ready(const std::string& target, const std::string& firmware_name, const std::filesystem::path& firmware,
                   const std::function<void(vm::VmSpec&, const std::filesystem::path& out)>& configure,
                   const std::vector<std::string>& artifacts, const std::string& console_proof) {
  const auto host = vm::probe_host();
  if (const auto why = missing_for(host, target); !why.empty()) CAIRN_SKIP(why);
  auto& initrd = shared_initrd();
  REQUIRE_MESSAGE(initrd.error.empty(), initrd.error);
  TempDir dir;
  VmControl control;
  const auto out = dir.path() / "out";
  const std::string token_value = build_artifacts(target, control, host, initrd.initrd, dir.path(), out, artifacts);

  const std::string uuid = random_uuid().str();
  vm::VmSpec spec{
      .fw_cfg = {{.name = "opt/org.cairn/instance_uuid", .value = uuid}},
      .forwards = {{.guest_ip = kControlGuestIp, .guest_port = kControlGuestPort, .host_port = control.port()}},
      .serial_log = dir.path() / "serial.log",
      .qemu_log = dir.path() / "qemu.log",
      .memory_mib = 1024,  // the firmware loads kernel and initrd into RAM before the kernel unpacks it
      .accel = vm::choose_accel(host, initrd.initrd, dir.path()),
      .firmware = firmware,
  };
  configure(spec, out);
  std::optional<vm::Swtpm> tpm;  // disk: /persist on the boot disk, sealed to this TPM (h-userdata)
  if (target == "disk") {
    auto started_tpm = vm::Swtpm::start(dir.path() / "tpm", dir.path() / "swtpm.sock", dir.path() / "swtpm.log");
    REQUIRE_MESSAGE(started_tpm.has_value(), (started_tpm ? "" : started_tpm.error().message));
    tpm.emplace(std::move(*started_tpm));
    spec.tpm_socket = tpm->socket();
  }
  const auto started = std::chrono::steady_clock::now();
  auto vm = vm::Vm::start(host, spec);
  REQUIRE_MESSAGE(vm.has_value(), (vm ? "" : vm.error().message));

  const bool ready = wait_for([&] { return node_state(control, uuid) == "Ready" || !vm->running(); }, 420s, 500ms);
  const auto to_ready = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  const std::string log = vm->serial();
  INFO("serial console:\n" << log << "\nqemu:\n" << slurp(spec.qemu_log) << "\ncontrol:\n" << slurp(control.log()));
  REQUIRE(ready);
  REQUIRE(node_state(control, uuid) == "Ready");

  // The boot went the way it claims (iPXE's TFTP fetch, SeaBIOS's CD boot, GRUB) ...
  CHECK_MESSAGE(log.find(console_proof) != std::string::npos, console_proof);
  // ... and the pinned parameters came from the artifact's kernel command line, not fw-cfg.
  CHECK(log.find("control=" + control_url() + " control_from=\"kernel command line\"") != std::string::npos);
  CHECK(log.find("token_from=\"kernel command line\"") != std::string::npos);
  CHECK(log.find("node " + uuid + " from fw_cfg") != std::string::npos);
  CHECK(log.find("event=boot.stage stage=enroll ok=true") != std::string::npos);
  // The token is on the artifact, never on the console (firmware, GRUB, kernel, agent).
  CHECK(log.find(token_value) == std::string::npos);
  if (target == "disk") {
    // /persist was made in the free space of the boot disk (vda1 is the ESP) and unlocked.
    CHECK(log.find("event=boot.stage stage=persist ok=true") != std::string::npos);
    // ... sealed to what this boot measured: GRUB's tpm module (PCR 8, 9), GRUB (PCR 4).
    CHECK(log.find("formatted /dev/vda2 on /persist (key: TPM PCR 4+7+8+9 sha256)") != std::string::npos);
  }

  std::cout << "vm-image " << target << " (" << firmware_name << ") figures: accel=" << spec.accel
            << " qemu_start_to_ready_ms=" << to_ready.count() << " " << vm::boot_figures(log) << "\n";
  vm->stop();
}

TEST_CASE("the PXE bundle boots through QEMU's iPXE over TFTP and the diskless node becomes Ready") {
  boot_to_ready(
      "pxe", "SeaBIOS + iPXE", {},
      [](vm::VmSpec& spec, const std::filesystem::path& out) {
        spec.boot_order = "n";
        spec.tftp_root = out;
        spec.bootfile = "boot.ipxe";
      },
      {"vmlinuz", "initrd", "boot.ipxe", "README.txt"}, "boot.ipxe : ");
}

TEST_CASE("the PXE bundle boots through the EFI iPXE under OVMF and the node becomes Ready") {
  const auto firmware = ovmf();
  if (firmware.empty()) CAIRN_SKIP("no OVMF (apt-get install ovmf): the EFI network boot is not tried");
  boot_to_ready(
      "pxe", "OVMF + iPXE", firmware,
      [](vm::VmSpec& spec, const std::filesystem::path& out) {
        spec.boot_order = "n";
        spec.tftp_root = out;
        spec.bootfile = "boot.ipxe";
      },
      {"vmlinuz", "initrd", "boot.ipxe", "README.txt"}, "boot.ipxe : ");
}

TEST_CASE("the hybrid ISO boots from -cdrom under SeaBIOS (BIOS) and the node becomes Ready") {
  boot_to_ready(
      "iso", "SeaBIOS", {},
      [](vm::VmSpec& spec, const std::filesystem::path& out) {
        spec.boot_order = "d";
        spec.cdrom = out / "cairn.iso";
      },
      {"cairn.iso"}, "Booting from DVD/CD");
}

TEST_CASE("the hybrid ISO boots from -cdrom under OVMF (EFI) and the node becomes Ready") {
  const auto firmware = ovmf();
  if (firmware.empty()) CAIRN_SKIP("no OVMF (apt-get install ovmf): the EFI boot of the ISO is not tried");
  boot_to_ready(
      "iso", "OVMF", firmware,
      [](vm::VmSpec& spec, const std::filesystem::path& out) {
        spec.boot_order = "d";
        spec.cdrom = out / "cairn.iso";
      },
      {"cairn.iso"}, "Booting `Cairn'");
}

TEST_CASE("the hybrid ISO written to a USB stick (a raw disk) boots under SeaBIOS through its MBR") {
  boot_to_ready(
      "iso", "SeaBIOS, ISO as a disk", {},
      [](vm::VmSpec& spec, const std::filesystem::path& out) {
        spec.boot_order = "c";
        spec.boot_disk = out / "cairn.iso";
        spec.boot_disk_format = "raw";
      },
      {"cairn.iso"}, "GRUB loading");  // boot_hybrid.img's message: the MBR, not El Torito
}

TEST_CASE("the EFI disk image (qcow2) boots under OVMF and the node becomes Ready") {
  const auto firmware = ovmf();
  if (firmware.empty()) CAIRN_SKIP("no OVMF (apt-get install ovmf): the EFI disk image is not tried");
  boot_to_ready(
      "disk", "OVMF", firmware,
      [](vm::VmSpec& spec, const std::filesystem::path& out) {
        spec.boot_order = "c";
        spec.boot_disk = out / "cairn-disk.qcow2";
      },
      {"cairn-disk.raw", "cairn-disk.qcow2"}, "Booting `Cairn'");
}

// Measured boot (h-pcr): the disk image's GRUB carries its `tpm` module and its boot entry says
// cairn.pcrs=4+7+8+9, so /persist's key is sealed to GRUB (PCR 4, measured by OVMF), the GRUB
// commands and the kernel command line (PCR 8) and the files GRUB read: grub.cfg, kernel,
// initrd (PCR 9). Boot 1 seals; boot 2 (same disk, same TPM) unlocks; boot 3 runs the same
// disk with one word added to the kernel command line on the ESP, as anyone with the disk or
// GRUB's editor could (`cairn.debug=rescue`, the operators' shell): the key stays sealed, the
// volume is not reformatted, the console says why; boot 4 with the entry put back unlocks
// again, so it was the command line and nothing else.
TEST_CASE("the disk image seals /persist to its measured boot: a reboot unlocks, an edited command line does not") {
  const auto host = vm::probe_host();
  if (const auto why = missing_for(host, "disk"); !why.empty()) CAIRN_SKIP(why);
  const auto firmware = ovmf();
  if (firmware.empty()) CAIRN_SKIP("no OVMF (apt-get install ovmf): the EFI disk image is not tried");
  auto& initrd = shared_initrd();
  REQUIRE_MESSAGE(initrd.error.empty(), initrd.error);
  TempDir dir;
  VmControl control;
  const auto out = dir.path() / "out";
  build_artifacts("disk", control, host, initrd.initrd, dir.path(), out, {"cairn-disk.raw"});
  // The machine's disk: the raw image, written through (no snapshot) from boot to boot.
  const auto disk = dir.path() / "machine.raw";
  std::filesystem::copy_file(out / "cairn-disk.raw", disk);
  const auto esp = disk.string() + "@@" + std::to_string(1024 * 1024);  // mtools: the ESP at 1 MiB
  const auto original_cfg = run_capture({vm::program_path("mtype"), "-i", esp, "::/EFI/BOOT/grub.cfg"}, dir.path(), 30s);
  REQUIRE_MESSAGE(original_cfg.exit_code == 0, original_cfg.err);
  REQUIRE(has(original_cfg.out, " cairn.pcrs=4+7+8+9"));
  const auto put_cfg = [&](const std::string& text) {
    const auto file = dir.path() / "grub.cfg";
    vm::write_text(file, text);
    const auto r = run_capture({vm::program_path("mcopy"), "-o", "-i", esp, file.string(), "::/EFI/BOOT/grub.cfg"}, dir.path(), 30s);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  };

  const std::string uuid = random_uuid().str();
  const auto accel = vm::choose_accel(host, initrd.initrd, dir.path());
  // One boot: a swtpm on the machine's TPM state, OVMF from the disk; returns the console once
  // `until` is on it (or the VM ended, or 420 s passed).
  const auto boot = [&](const std::string& name, const std::string& until) {
    auto tpm = vm::Swtpm::start(dir.path() / "tpm", dir.path() / (name + ".sock"), dir.path() / (name + ".swtpm.log"));
    REQUIRE_MESSAGE(tpm.has_value(), (tpm ? "" : tpm.error().message));
    vm::VmSpec spec{
        .fw_cfg = {{.name = "opt/org.cairn/instance_uuid", .value = uuid}},
        .forwards = {{.guest_ip = kControlGuestIp, .guest_port = kControlGuestPort, .host_port = control.port()}},
        .serial_log = dir.path() / (name + ".serial.log"),
        .qemu_log = dir.path() / (name + ".qemu.log"),
        .memory_mib = 1024,
        .accel = accel,
        .tpm_socket = tpm->socket(),
        .boot_order = "c",
        .boot_disk = disk,
        .boot_disk_format = "raw",
        .boot_disk_snapshot = false,
        .firmware = firmware,
    };
    const auto started = std::chrono::steady_clock::now();
    auto vm = vm::Vm::start(host, spec);
    REQUIRE_MESSAGE(vm.has_value(), (vm ? "" : vm.error().message));
    const bool seen = wait_for([&] { return has(vm->serial(), until) || !vm->running(); }, 420s, 500ms);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
    const std::string log = vm->serial();
    INFO(name << " serial console:\n" << log << "\nqemu:\n" << slurp(spec.qemu_log));
    CHECK_MESSAGE(seen, until);
    std::cout << "vm-image measured " << name << ": qemu_start_to_mark_ms=" << ms.count() << "\n";
    vm->stop();
    tpm->stop();
    return log;
  };

  // Boot 1: the first boot makes /persist and seals its key to what this boot measured.
  {
    const auto log = boot("boot1", "event=heartbeat.ok");
    CHECK(has(log, "note=\"formatted /dev/vda2 on /persist (key: TPM PCR 4+7+8+9 sha256)\""));
    CHECK(has(log, "enrolled: node " + uuid));
  }
  const auto luks = vm::luks_uuid(disk, 1);  // partition 2: after the ESP
  REQUIRE(!luks.empty());
  // Boot 2: the same machine, the same boot: the TPM unseals the key; no enrollment again.
  {
    const auto log = boot("boot2", "event=heartbeat.ok");
    CHECK(has(log, "note=\"opened /dev/vda2 on /persist (key: TPM PCR 4+7+8+9 sha256)\""));
    CHECK(has(log, "already enrolled: node " + uuid));
  }
  // Boot 3: one word more on the kernel command line in grub.cfg.
  std::string edited = original_cfg.out;
  const auto linux_at = edited.find("  linux /cairn/vmlinuz ");
  REQUIRE(linux_at != std::string::npos);
  edited.insert(edited.find('\n', linux_at), " cairn.debug=rescue");
  put_cfg(edited);
  const std::string disk_before = vm::file_sha256(disk);
  {
    const auto log = boot("boot3", "event=init.rescue_shell");
    CHECK(has(log, "event=boot.stage stage=persist ok=false"));
    CHECK(has(log, "persist.unlock_failed"));
    CHECK(has(log, "PCR 4+7+8+9"));
    CHECK(!has(log, "event=boot.stage stage=enroll"));
    CHECK(has(log, "event=init.rescue_shell"));  // the shell it asked for, without /persist's key
    std::stringstream lines(log);
    for (std::string line; std::getline(lines, line);) {
      if (has(line, "level=critical")) std::cout << "vm-image measured boot3 console: " << line << "\n";
    }
  }
  CHECK(vm::file_sha256(disk) == disk_before);  // not one byte of the disk changed
  CHECK(vm::luks_uuid(disk, 1) == luks);
  // Boot 4: the boot entry as built: the key unseals again.
  put_cfg(original_cfg.out);
  {
    const auto log = boot("boot4", "event=heartbeat.ok");
    CHECK(has(log, "note=\"opened /dev/vda2 on /persist (key: TPM PCR 4+7+8+9 sha256)\""));
  }
  CHECK(vm::luks_uuid(disk, 1) == luks);
}

}  // namespace
}  // namespace cairn::test
