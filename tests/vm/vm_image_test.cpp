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

#include "common/uuid.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/vm/qemu.hpp"
#include "tests/vm/vm_control.hpp"

namespace cairn::test {
namespace {

using namespace std::chrono_literals;
using vm::kControlGuestIp;
using vm::kControlGuestPort;
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
    for (const char* p : {"grub-mkimage", "mkfs.fat", "mcopy", "sfdisk", "qemu-img"}) {
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
  const auto token = control.cli({"token", "create"});
  REQUIRE_MESSAGE(token.exit_code == 0, token.err);
  const std::string token_value = trimmed(token.out);
  const auto token_file = dir.path() / "token";
  std::ofstream(token_file) << token_value << "\n";
  const std::string control_url = "https://" + std::string(kControlGuestIp) + ":" + std::to_string(kControlGuestPort);

  const auto out = dir.path() / "out";
  const auto built = run_capture({image_build(), target, "--kernel", host.kernel.string(), "--initrd", initrd.initrd.string(),
                                  "--control", control_url, "--ca", control.fingerprint(), "--token-file",
                                  token_file.string(), "--append", "cairn.debug=verbose", "--size",
                                  // disk: room for /persist (min_size_mib 1024) after the 128 MiB ESP
                                  target == "disk" ? "2G" : "1G", "--out",
                                  out.string()},
                                 dir.path(), 600s);
  INFO("image/build " << target << ":\n" << built.out << built.err);
  REQUIRE(built.exit_code == 0);
  // image/build never prints the token; the artifacts holding it are owner-only.
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
  CHECK(log.find("control=" + control_url + " control_from=\"kernel command line\"") != std::string::npos);
  CHECK(log.find("token_from=\"kernel command line\"") != std::string::npos);
  CHECK(log.find("node " + uuid + " from fw_cfg") != std::string::npos);
  CHECK(log.find("event=boot.stage stage=enroll ok=true") != std::string::npos);
  // The token is on the artifact, never on the console (firmware, GRUB, kernel, agent).
  CHECK(log.find(token_value) == std::string::npos);
  if (target == "disk") {
    // /persist was made in the free space of the boot disk (vda1 is the ESP) and unlocked.
    CHECK(log.find("event=boot.stage stage=persist ok=true") != std::string::npos);
    CHECK(log.find("formatted /dev/vda2 on ") != std::string::npos);
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

}  // namespace
}  // namespace cairn::test
