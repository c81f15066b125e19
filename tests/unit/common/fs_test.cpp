#include <doctest/doctest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "common/fs.hpp"
#include "common/root.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;

TEST_CASE("root joins host paths under its base, with or without a leading slash") {
  const Root root("/tmp/x");
  CHECK((root / "/proc/cmdline").string() == "/tmp/x/proc/cmdline");
  CHECK((root / "sys/class").string() == "/tmp/x/sys/class");
  CHECK((Root() / "/proc/cmdline").string() == "/proc/cmdline");
}

TEST_CASE("an atomic write creates parents, sets the exact mode and leaves no temp file") {
  test::TempDir dir;
  const auto path = dir.path() / "a/b/node.key";
  ::umask(022);
  REQUIRE(write_file_atomic(path, "secret", 0600));
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(*read_file(path, 100) == "secret");
  REQUIRE(write_file_atomic(path, "second", 0600));
  CHECK(*read_file(path, 100) == "second");
  int entries = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(path.parent_path())) ++entries;
  CHECK(entries == 1);
}

TEST_CASE("a read over the cap is an error, never a truncated value") {
  test::TempDir dir;
  const auto path = dir.path() / "big";
  std::ofstream(path) << std::string(100, 'x');
  auto r = read_file(path, 99);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::data);
  CHECK(r.error().message.find("larger than") != std::string::npos);
  CHECK(read_file(path, 100)->size() == 100);
}

TEST_CASE("a missing file is nullopt for read_file_if_exists and an io error for read_file") {
  test::TempDir dir;
  auto opt = read_file_if_exists(dir.path() / "nope", 10);
  REQUIRE(opt);
  CHECK_FALSE(opt->has_value());
  auto r = read_file(dir.path() / "nope", 10);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::io);
}
