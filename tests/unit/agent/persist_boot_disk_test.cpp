// The boot-disk-free rule (h-userdata): /persist in the free space of the disk Cairn booted
// from, on disk images laid out as image/build's `disk` target lays them out (GPT, an EFI
// system partition at 1 MiB made by mkfs.fat -F 32 -n CAIRN-ESP, the rest free), as regular
// files behind a fake sysfs, partitioned with the real libfdisk.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "agent/persist/disk.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent::persist;

namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;
constexpr std::uint64_t kEspMiB = 64;  // image/build's smallest --esp-size

struct BootDiskHost {
  test::TempDir dir;
  Root root{dir.path()};

  std::filesystem::path dev(const std::string& name) const { return root / ("dev/" + name); }

  // Sets the disk's size in sysfs and on the image (a cloud growing the disk does both).
  void set_size(const std::string& name, std::uint64_t mib) const {
    const auto sys = root / ("sys/block/" + name);
    std::filesystem::create_directories(sys);
    std::ofstream(sys / "size") << (mib * kMiB / 512) << "\n";
    std::ofstream(sys / "ro") << "0\n";
    std::filesystem::create_directories(root / "dev");
    if (!std::filesystem::exists(dev(name))) std::ofstream(dev(name), std::ios::binary).flush();
    std::filesystem::resize_file(dev(name), mib * kMiB);
  }

  // A disk as image/build makes it: sfdisk writes the GPT with the ESP at 2048 (plus `extra`
  // sfdisk lines), and an ESP made by mkfs.fat is copied in at 1 MiB. Skips without the tools.
  void make_image_disk(const std::string& name, std::uint64_t mib, const std::string& fat_label = "CAIRN-ESP",
                       const std::string& extra = "") const {
    set_size(name, mib);
    std::ostringstream script;
    script << "label: gpt\nfirst-lba: 2048\nstart=2048, size=" << kEspMiB * 2048
           << ", type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI System\"\n"
           << extra;
    const auto script_path = dir.path() / (name + ".sfdisk");
    std::ofstream(script_path) << script.str();
    auto sfdisk = test::run_capture({"/bin/sh", "-c", "/usr/sbin/sfdisk -q '" + dev(name).string() + "' < '" +
                                                          script_path.string() + "'"},
                                    dir.path());
    if (sfdisk.exit_code != 0) CAIRN_SKIP("sfdisk (fdisk) is not usable: " + sfdisk.err);
    const auto esp = dir.path() / (name + ".esp");
    auto mkfs = test::run_capture({"/usr/sbin/mkfs.fat", "-C", "-F", "32", "-n", fat_label, esp.string(),
                                   std::to_string(kEspMiB * 1024)},
                                  dir.path());
    if (mkfs.exit_code != 0) CAIRN_SKIP("mkfs.fat (dosfstools) is not usable: " + mkfs.err);
    const auto fat = read_file(esp, kEspMiB * kMiB).value();
    std::fstream f(dev(name), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(kMiB));
    f.write(fat.data(), static_cast<std::streamsize>(fat.size()));
  }

  // sfdisk's line for each partition ("/dev/...1 : start=..., size=..., type=..., uuid=..., name=...").
  std::vector<std::string> table(const std::string& name) const {
    auto dump = test::run_capture({"/usr/sbin/sfdisk", "--dump", dev(name).string()}, dir.path());
    REQUIRE_MESSAGE(dump.exit_code == 0, dump.err);
    std::vector<std::string> lines;
    std::istringstream in(dump.out);
    for (std::string line; std::getline(in, line);) {
      if (line.find(" : start=") != std::string::npos) lines.push_back(line);
    }
    return lines;
  }

  std::string esp_digest(const std::string& name) const {
    std::ifstream in(dev(name), std::ios::binary);
    in.seekg(static_cast<std::streamoff>(kMiB));
    std::string esp(kEspMiB * kMiB, '\0');
    in.read(esp.data(), static_cast<std::streamsize>(esp.size()));
    return sha256_hex(esp);
  }
};

bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

// The number after `key=` in an sfdisk --dump line (it pads numbers with spaces).
std::uint64_t dump_number(const std::string& line, const std::string& key) {
  const auto at = line.find(key + "=");
  REQUIRE(at != std::string::npos);
  return std::stoull(line.substr(at + key.size() + 1));
}

const DiskRule kBootDiskFree{DiskRule::Kind::boot_disk_free, ""};

}  // namespace

TEST_CASE("boot-disk-free parses and prints back") {
  auto r = parse_disk_rule("boot-disk-free");
  REQUIRE(r.has_value());
  CHECK(r->kind == DiskRule::Kind::boot_disk_free);
  CHECK(to_string(*r) == "boot-disk-free");
}

TEST_CASE("boot-disk-free puts cairn-persist in the free space after the ESP, and a second boot finds it") {
  BootDiskHost h;
  // The ESP, then a partition that is not Cairn's (an operator's): both must stay as they are.
  h.make_image_disk("vda", 256, "CAIRN-ESP",
                    "start=" + std::to_string((1 + kEspMiB) * 2048) + ", size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"customer\"\n");
  h.set_size("vdb", 512);  // an empty second disk: not the boot disk, never chosen by this rule
  const auto before = h.table("vda");
  REQUIRE(before.size() == 2);
  const auto esp_before = h.esp_digest("vda");

  auto target = choose_target(h.root, kBootDiskFree, 64 * kMiB);
  REQUIRE_MESSAGE(target.has_value(), target.error().message);
  CHECK(target->disk.name == "vda");
  CHECK_FALSE(target->exists);
  CHECK(target->in_free_space);
  CHECK(target->partition_number == 3);
  CHECK(target->partition_host_path == "/dev/vda3");
  const std::uint64_t free_start = (1 + kEspMiB) * 2048 + 16384;  // 1 MiB aligned already
  CHECK(target->start == free_start);

  auto created = create_partition(h.root, *target);
  REQUIRE_MESSAGE(created.has_value(), created.error().message);
  const auto after = h.table("vda");
  REQUIRE(after.size() == 3);
  CHECK(after[0] == before[0]);  // the ESP's entry: start, size, type, uuid, name
  CHECK(after[1] == before[1]);  // the operator's partition
  CHECK(h.esp_digest("vda") == esp_before);
  CHECK(dump_number(after[2], "start") == free_start);
  CHECK(has(after[2], "name=\"cairn-persist\""));
  CHECK(has(after[2], "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"));
  auto layout = read_layout(h.root, target->disk);
  REQUIRE(layout.has_value());
  REQUIRE(layout->cairn_partition().has_value());
  // It takes the space up to the backup GPT, less than 1 MiB of alignment.
  CHECK(layout->cairn_partition()->size_bytes + free_start * 512 + 2 * kMiB > 256 * kMiB);

  auto later = choose_target(h.root, kBootDiskFree, 64 * kMiB);
  REQUIRE(later.has_value());
  CHECK(later->exists);
  CHECK(later->partition_number == 3);
  CHECK(later->partition_host_path == "/dev/vda3");
  // The other disk was not touched: still no partition table.
  auto vdb = read_layout(h.root, Disk{"vdb", "/dev/vdb", 512 * kMiB, false, {}});
  REQUIRE(vdb.has_value());
  CHECK(vdb->empty());
}

TEST_CASE("boot-disk-free uses all the space a cloud grew the disk to") {
  BootDiskHost h;
  h.make_image_disk("vda", 80);
  const auto before = h.table("vda");
  h.set_size("vda", 400);  // the instance's disk is larger than the image: the backup GPT is not at the end
  auto target = choose_target(h.root, kBootDiskFree, 256 * kMiB);
  REQUIRE_MESSAGE(target.has_value(), target.error().message);
  REQUIRE(target->in_free_space);
  auto created = create_partition(h.root, *target);
  REQUIRE_MESSAGE(created.has_value(), created.error().message);
  const auto after = h.table("vda");
  REQUIRE(after.size() == 2);
  CHECK(after[0] == before[0]);
  auto layout = read_layout(h.root, target->disk);
  REQUIRE(layout.has_value());
  REQUIRE(layout->cairn_partition().has_value());
  CHECK(layout->cairn_partition()->size_bytes >= (400 - 66) * kMiB - kMiB);
}

TEST_CASE("a boot disk without room for /persist is refused, naming the disk and the size missing") {
  BootDiskHost h;
  h.make_image_disk("vda", 100);
  const auto before = h.table("vda");
  auto target = choose_target(h.root, kBootDiskFree, 1024 * kMiB);
  REQUIRE_FALSE(target.has_value());
  CHECK(target.error().code == Errc::refused);
  CHECK(has(target.error().message, "/dev/vda"));
  CHECK(has(target.error().message, "1024 MiB needed"));
  CHECK(has(target.error().message, "MiB missing"));
  CHECK(has(target.error().hint, "larger disk"));
  CHECK(h.table("vda") == before);
}

TEST_CASE("boot-disk-free touches no disk without Cairn's ESP, nor one of several") {
  BootDiskHost h;
  h.make_image_disk("vda", 128, "OTHER-OS");  // an ESP, but not Cairn's
  const auto before = h.table("vda");
  auto none = choose_target(h.root, kBootDiskFree, 16 * kMiB);
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error().code == Errc::config);
  CHECK(has(none.error().message, "no disk holds Cairn's EFI system partition"));
  CHECK(h.table("vda") == before);

  h.make_image_disk("vdb", 128);
  h.make_image_disk("vdc", 128);
  auto two = choose_target(h.root, kBootDiskFree, 16 * kMiB);
  REQUIRE_FALSE(two.has_value());
  CHECK(two.error().code == Errc::refused);
  CHECK(has(two.error().message, "/dev/vdb"));
  CHECK(has(two.error().message, "/dev/vdc"));
}

TEST_CASE("a boot disk whose table changed after the choice is left alone") {
  BootDiskHost h;
  h.make_image_disk("vda", 128);
  auto target = choose_target(h.root, kBootDiskFree, 16 * kMiB);
  REQUIRE(target.has_value());
  // Something else took the free space in between.
  std::ofstream(h.dir.path() / "take.sfdisk") << "start=" << target->start << ", size=8192, name=\"intruder\"\n";
  auto add = test::run_capture({"/bin/sh", "-c", "/usr/sbin/sfdisk -q --append '" + h.dev("vda").string() + "' < '" +
                                                     (h.dir.path() / "take.sfdisk").string() + "'"},
                               h.dir.path());
  REQUIRE_MESSAGE(add.exit_code == 0, add.err);
  const auto before = h.table("vda");
  auto created = create_partition(h.root, *target);
  REQUIRE_FALSE(created.has_value());
  CHECK(created.error().code == Errc::refused);
  CHECK(has(created.error().message, "left alone"));
  CHECK(h.table("vda") == before);
}
