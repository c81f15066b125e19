// The real VolumeHost's parts that run without device-mapper: mkfs.ext4 with 4 KiB blocks and
// verity, e2fsck, mountinfo and the device-mapper probe, on a fake root.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>

#include "agent/persist/host.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent::persist;

namespace {

// A clock whose sleeps end at once by jumping to their deadline: a wait with a deadline runs
// its whole course in no time.
class JumpClock final : public Clock {
 public:
  [[nodiscard]] WallTime now() const override { return WallTime{}; }
  [[nodiscard]] MonoTime monotonic() const override { return mono_; }
  bool sleep_until(MonoTime deadline, int /*wake_fd*/) const override {
    mono_ = std::max(mono_, deadline);
    ++sleeps;
    return false;
  }
  mutable MonoTime mono_{};
  mutable int sleeps = 0;
};

}  // namespace

TEST_CASE("the filesystem is ext4 with 4 KiB blocks and the verity feature, and e2fsck passes it") {
  test::TempDir dir;
  const Root root(dir.path());
  std::filesystem::create_directories(dir.path() / "dev/mapper");
  const auto image = dir.path() / "dev/mapper/cairn-persist";
  { std::ofstream(image, std::ios::binary); }
  std::filesystem::resize_file(image, 64 * 1024 * 1024);  // small: mke2fs alone would pick 1 KiB blocks
  auto host = make_system_host(root, SystemClock::instance());
  auto made = host->make_filesystem("/dev/mapper/cairn-persist");
  if (!made && made.error().code == Errc::unavailable) CAIRN_SKIP("mkfs.ext4 is not installed: " + made.error().message);
  REQUIRE_MESSAGE(made.has_value(), made.error().message);

  auto dump = test::run_capture({"/usr/sbin/dumpe2fs", "-h", image.string()}, dir.path());
  REQUIRE(dump.exit_code == 0);
  CHECK(dump.out.find("Block size:               4096") != std::string::npos);
  CHECK(dump.out.find(" verity") != std::string::npos);
  CHECK(dump.out.find("Filesystem volume name:   cairn-persist") != std::string::npos);

  auto checked = host->check_filesystem("/dev/mapper/cairn-persist");
  CHECK_MESSAGE(checked.has_value(), checked.error().message);
}

TEST_CASE("e2fsck on something that is not ext4 is an error naming the device") {
  test::TempDir dir;
  const Root root(dir.path());
  std::filesystem::create_directories(dir.path() / "dev");
  std::ofstream(dir.path() / "dev/junk") << std::string(8192, 'j');
  auto host = make_system_host(root, SystemClock::instance());
  auto checked = host->check_filesystem("/dev/junk");
  if (!checked && checked.error().code == Errc::unavailable) CAIRN_SKIP("e2fsck is not installed");
  REQUIRE_FALSE(checked.has_value());
  CHECK(checked.error().message.find("/dev/junk") != std::string::npos);
}

TEST_CASE("mountinfo says whether /persist is mounted; device-mapper is probed through the root") {
  test::TempDir dir;
  const Root root(dir.path());
  CHECK_FALSE(is_mount_point(root, "/persist").value_or(true));
  std::filesystem::create_directories(dir.path() / "proc/self");
  std::ofstream(dir.path() / "proc/self/mountinfo")
      << "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
      << "40 1 253:0 / /persist rw,nosuid,nodev - ext4 /dev/mapper/cairn-persist rw\n";
  CHECK(is_mount_point(root, "/persist").value_or(false));
  CHECK_FALSE(is_mount_point(root, "/persist/cairn").value_or(true));

  CHECK_FALSE(device_mapper_available(root));
  std::ofstream(dir.path() / "proc/misc") << "237 loop-control\n236 device-mapper\n";
  CHECK(device_mapper_available(root));
}

TEST_CASE("waiting for a partition's device node ends at its deadline with a hint") {
  test::TempDir dir;
  const Root root(dir.path());
  JumpClock clock;
  auto host = make_system_host(root, clock);
  auto waited = host->wait_for_device("/dev/vda1");
  REQUIRE_FALSE(waited.has_value());
  CHECK(clock.sleeps >= 100);  // polled every 50 ms for 10 s
  CHECK(waited.error().code == Errc::temporary);
  CHECK(waited.error().message.find("/dev/vda1") != std::string::npos);
  std::filesystem::create_directories(dir.path() / "dev");
  std::ofstream(dir.path() / "dev/vda1") << "";
  CHECK(host->wait_for_device("/dev/vda1").has_value());
}

TEST_CASE("a partition is blank only if it holds zeros: a LUKS volume with zeroed headers is not blank") {
  test::TempDir dir;
  const Root root(dir.path());
  std::filesystem::create_directories(dir.path() / "dev");
  const auto part = dir.path() / "dev/vda1";
  { std::ofstream(part, std::ios::binary); }
  std::filesystem::resize_file(part, 40 * 1024 * 1024);
  auto host = make_system_host(root, SystemClock::instance());
  auto blank = host->signature("/dev/vda1");
  REQUIRE_MESSAGE(blank.has_value(), blank.error().message);
  CHECK(blank->empty());

  {
    std::fstream f(part, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(16 * 1024 * 1024 + 4096);
    f.write("\x5a", 1);  // one byte of "encrypted data" behind zeroed headers
  }
  auto data = host->signature("/dev/vda1");
  REQUIRE(data.has_value());
  CHECK(data->find("non-zero bytes at offset 16781312") != std::string::npos);
}
