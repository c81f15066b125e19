// Choosing the /persist disk on a fake host tree (sysfs, /dev/disk links, disk images as
// regular files) and partitioning it with the real libfdisk.
#include <doctest/doctest.h>

#include <fstream>

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

struct FakeHostTree {
  test::TempDir dir;
  Root root{dir.path()};

  std::filesystem::path add_disk(const std::string& name, std::uint64_t mib) {
    const auto sys = root / ("sys/block/" + name);
    std::filesystem::create_directories(sys);
    std::ofstream(sys / "size") << (mib * kMiB / 512) << "\n";
    std::ofstream(sys / "ro") << "0\n";
    std::filesystem::create_directories(root / "dev");
    const auto dev = root / ("dev/" + name);
    { std::ofstream(dev, std::ios::binary); }
    std::filesystem::resize_file(dev, mib * kMiB);
    return dev;
  }
  void add_link(const std::string& dir_name, const std::string& link, const std::string& name) {
    std::filesystem::create_directories(root / ("dev/disk/" + dir_name));
    std::filesystem::create_symlink("../../" + name, root / ("dev/disk/" + dir_name + "/" + link));
  }
};

std::string digest(const std::filesystem::path& p) { return sha256_hex(read_file(p, 1024 * kMiB).value_or("")); }

}  // namespace

TEST_CASE("disk rules parse and print back") {
  for (const char* text : {"largest-empty", "by-path:pci-0000:00:05.0", "by-id:virtio-data", "device:/dev/vdb"}) {
    auto r = parse_disk_rule(text);
    REQUIRE(r.has_value());
    CHECK(to_string(*r) == text);
  }
  for (const char* bad : {"", "biggest", "by-path:", "device:vdb", "by-uuid:x"}) {
    auto r = parse_disk_rule(bad);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Errc::config);
  }
}

TEST_CASE("partition device names follow the kernel's") {
  CHECK(partition_path("sda", 1) == "/dev/sda1");
  CHECK(partition_path("vdb", 2) == "/dev/vdb2");
  CHECK(partition_path("nvme0n1", 1) == "/dev/nvme0n1p1");
  CHECK(partition_path("mmcblk0", 1) == "/dev/mmcblk0p1");
}

TEST_CASE("largest-empty picks the largest empty disk and skips loop devices") {
  FakeHostTree t;
  t.add_disk("vda", 64);
  t.add_disk("vdb", 96);
  t.add_disk("loop0", 512);
  auto target = choose_target(t.root, DiskRule{}, 32 * kMiB);
  REQUIRE_MESSAGE(target.has_value(), target.error().message);
  CHECK(target->disk.name == "vdb");
  CHECK_FALSE(target->exists);
  CHECK(target->partition_host_path == "/dev/vdb1");
}

TEST_CASE("the partition is created with libfdisk, and later boots find it by its label") {
  FakeHostTree t;
  t.add_disk("vda", 64);
  auto target = choose_target(t.root, DiskRule{}, 32 * kMiB);
  REQUIRE(target.has_value());
  auto made = create_partition(t.root, *target);
  REQUIRE_MESSAGE(made.has_value(), made.error().message);

  auto layout = read_layout(t.root, target->disk);
  REQUIRE(layout.has_value());
  CHECK(layout->label_type == "gpt");
  REQUIRE(layout->parts.size() == 1);
  CHECK(layout->parts[0].name == "cairn-persist");
  CHECK(layout->parts[0].number == 1);
  CHECK(layout->parts[0].size_bytes > 60 * kMiB);

  // Another, larger empty disk appears: the existing volume still wins.
  t.add_disk("vdb", 128);
  auto later = choose_target(t.root, DiskRule{}, 32 * kMiB);
  REQUIRE(later.has_value());
  CHECK(later->exists);
  CHECK(later->disk.name == "vda");
  CHECK(later->partition_host_path == "/dev/vda1");

  // Creating again on a disk that is no longer empty is refused.
  auto twice = create_partition(t.root, *target);
  REQUIRE_FALSE(twice.has_value());
  CHECK(twice.error().code == Errc::refused);
}

TEST_CASE("a named disk with a filesystem that is not Cairn's is left alone, byte for byte") {
  FakeHostTree t;
  const auto dev = t.add_disk("vdb", 64);
  t.add_link("by-id", "virtio-data", "vdb");
  auto mkfs = test::run_capture({"/usr/sbin/mkfs.ext4", "-q", "-F", dev.string()}, t.dir.path());
  if (mkfs.exit_code != 0) CAIRN_SKIP("mkfs.ext4 (e2fsprogs) is not available: " + mkfs.err);
  const auto before = digest(dev);
  auto target = choose_target(t.root, DiskRule{DiskRule::Kind::by_id, "virtio-data"}, 32 * kMiB);
  REQUIRE_FALSE(target.has_value());
  CHECK(target.error().code == Errc::refused);
  CHECK(target.error().message.find("ext4") != std::string::npos);
  CHECK(target.error().message.find("left alone") != std::string::npos);
  CHECK(digest(dev) == before);
}

TEST_CASE("a named disk with another partition table is left alone") {
  FakeHostTree t;
  const auto dev = t.add_disk("vdc", 64);
  // An MBR with one Linux partition (type 0x83) at LBA 2048, 65536 sectors long.
  std::string mbr(512, '\0');
  mbr[446 + 4] = '\x83';
  mbr[446 + 9] = '\x08';   // start LBA 0x00000800, little endian
  mbr[446 + 14] = '\x01';  // 0x00010000 sectors
  mbr[510] = '\x55';
  mbr[511] = '\xaa';
  {
    std::fstream f(dev, std::ios::in | std::ios::out | std::ios::binary);
    f.write(mbr.data(), static_cast<std::streamsize>(mbr.size()));
  }
  const auto before = digest(dev);
  auto refused = choose_target(t.root, DiskRule{DiskRule::Kind::device, "/dev/vdc"}, 32 * kMiB);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Errc::refused);
  CHECK(refused.error().message.find("dos partition table") != std::string::npos);
  CHECK(refused.error().message.find("partition 1") != std::string::npos);
  CHECK(digest(dev) == before);

  // largest-empty passes over it too, and says why.
  auto none = choose_target(t.root, DiskRule{}, 32 * kMiB);
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error().message.find("vdc") != std::string::npos);
  CHECK(digest(dev) == before);
}

TEST_CASE("a disk too small is refused with both sizes") {
  FakeHostTree t;
  t.add_disk("vda", 64);
  t.add_link("by-path", "pci-0000:00:05.0", "vda");
  auto target = choose_target(t.root, DiskRule{DiskRule::Kind::by_path, "pci-0000:00:05.0"}, 1024 * kMiB);
  REQUIRE_FALSE(target.has_value());
  CHECK(target.error().code == Errc::refused);
  CHECK(target.error().message.find("64 MiB") != std::string::npos);
  CHECK(target.error().message.find("1024 MiB") != std::string::npos);
}

TEST_CASE("no empty disk, or a missing link, is said clearly") {
  FakeHostTree t;
  t.add_disk("vda", 16);
  auto none = choose_target(t.root, DiskRule{}, 32 * kMiB);
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error().message.find("no empty disk") != std::string::npos);
  CHECK(none.error().message.find("vda") != std::string::npos);

  auto missing = choose_target(t.root, DiskRule{DiskRule::Kind::by_id, "nope"}, 32 * kMiB);
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Errc::config);
  CHECK(missing.error().message.find("/dev/disk/by-id/nope") != std::string::npos);
}
