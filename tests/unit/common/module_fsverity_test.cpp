// Our fs-verity digest equals fsverity-utils' `fsverity digest` (the kernel's format), and the
// one-pass file digests agree whether computed on one thread or two.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>
#include <vector>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/fsverity.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::module;

namespace {

// Deterministic, non-repeating content, so a misplaced block changes the digest.
void write_pattern(const std::filesystem::path& path, std::uint64_t size) {
  std::ofstream out(path, std::ios::binary);
  std::mt19937_64 rng(size);
  std::vector<char> buf(1 << 16);
  while (size > 0) {
    for (std::size_t i = 0; i < buf.size(); i += 8) {
      const auto v = rng();
      std::memcpy(buf.data() + i, &v, 8);
    }
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(size, buf.size()));
    out.write(buf.data(), static_cast<std::streamsize>(n));
    size -= n;
  }
}

}  // namespace

TEST_CASE("the fs-verity digest equals fsverity-utils for empty, tiny, block-edge and large files") {
  const std::string fsverity = test::which("fsverity");
  if (fsverity.empty()) CAIRN_SKIP("fsverity (fsverity-utils) is not installed; run tools/install-deps");
  test::TempDir dir;
  const std::uint64_t sizes[] = {0, 1, 4095, 4096, 4097, 4096 * 128, 4096 * 128 + 1, (1 << 20) + 1, 100ULL << 20};
  for (const auto size : sizes) {
    CAPTURE(size);
    const auto path = dir.path() / ("f" + std::to_string(size));
    write_pattern(path, size);
    const auto tool = test::run_capture({fsverity, "digest", path.string()}, dir.path());
    REQUIRE(tool.exit_code == 0);
    auto ours = digest_file(path, 2);
    REQUIRE(ours.has_value());
    CHECK(tool.out == fsverity_display(ours->fsverity) + " " + path.string() + "\n");
    CHECK(ours->size == size);
    std::filesystem::remove(path);
  }
}

TEST_CASE("one thread and two threads give the same digests, and the sha256 is the file's") {
  test::TempDir dir;
  // Around the 1 MiB read chunks, their 128 KiB read pieces (either thread reads any piece) and
  // the 64 KiB groups of Merkle leaves (either thread hashes any group).
  const std::uint64_t sizes[] = {(3 << 20) + 12345, (1 << 20) + 700000, 2 << 20, (2 << 20) - 1, (2 << 20) + 1,
                                 512 << 10, (512 << 10) + 1, (5 << 17) + 1, (7 << 17) - 4096, (1 << 20) + (3 << 16) + 4095,
                                 4096, 4095, 1, (16 << 20) + 4097 /* two rounds of the mapped path */};
  for (const auto size : sizes) {
    CAPTURE(size);
    const auto path = dir.path() / ("img" + std::to_string(size));
    write_pattern(path, size);
    auto one = digest_file(path, 1);
    auto two = digest_file(path, 2);
    REQUIRE(one.has_value());
    REQUIRE(two.has_value());
    CHECK(one->sha256 == two->sha256);
    CHECK(one->fsverity == two->fsverity);
    CHECK(two->size == size);
    auto whole = read_file(path, 32 << 20);
    REQUIRE(whole.has_value());
    CHECK(one->sha256 == sha256_hex(*whole));
    FsverityStream stream;
    stream.update(*whole);
    CHECK(stream.finish_hex() == two->fsverity);
  }
}

TEST_CASE("a file whose size is not known ahead (/proc) is read instead of mapped, with the same digests") {
  // Regular files with a size are hashed through mmap (h-modpolicy); the read path stays for
  // the rest: /proc files report size 0.
  for (const char* path : {"/proc/version", "/proc/self/cmdline"}) {
    CAPTURE(path);
    auto text = read_file(path, 4 << 20);
    REQUIRE(text);
    REQUIRE_FALSE(text->empty());
    for (const int threads : {1, 2}) {
      auto got = digest_file(path, threads);
      REQUIRE_MESSAGE(got, (got ? "" : got.error().message));
      CHECK(got->size == text->size());
      CHECK(got->sha256 == sha256_hex(*text));
      FsverityStream stream;
      stream.update(*text);
      CHECK(got->fsverity == stream.finish_hex());
    }
  }
}

TEST_CASE("the streaming digest does not depend on how the bytes are chunked") {
  std::string data(4096 * 3 + 77, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 7);
  FsverityStream whole;
  whole.update(data);
  FsverityStream pieces;
  for (std::size_t i = 0; i < data.size(); i += 1000) pieces.update(std::string_view(data).substr(i, 1000));
  CHECK(whole.finish_hex() == pieces.finish_hex());
}

TEST_CASE("block hashes computed apart and added in file order give the streaming digest") {
  std::string data(4096 * 40 + 123, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 131 + (i >> 12));
  FsverityStream whole;
  whole.update(data);
  const std::string expected = whole.finish_hex();

  // 40 whole blocks hashed in two groups, out of order, then the 123-byte tail through update().
  std::vector<unsigned char> hashes(40 * 32);
  FsverityStream::hash_blocks(data.data() + 16 * 4096, 24, hashes.data() + 16 * 32);
  FsverityStream::hash_blocks(data.data(), 16, hashes.data());
  FsverityStream apart;
  apart.add_block_hashes(hashes.data(), 16);
  apart.add_block_hashes(hashes.data() + 16 * 32, 24);
  apart.update(std::string_view(data).substr(40 * 4096));
  CHECK(apart.size() == data.size());
  CHECK(apart.finish_hex() == expected);

  // Hashes in the wrong order give another digest: the order is the caller's to keep.
  FsverityStream swapped;
  swapped.add_block_hashes(hashes.data() + 16 * 32, 24);
  swapped.add_block_hashes(hashes.data(), 16);
  swapped.update(std::string_view(data).substr(40 * 4096));
  CHECK(swapped.finish_hex() != expected);

  // After a partial block, whole-block hashes no longer line up with the file: refused.
  FsverityStream partial;
  partial.update(std::string_view(data).substr(0, 100));
  CHECK_THROWS_AS(partial.add_block_hashes(hashes.data(), 1), std::logic_error);
}

TEST_CASE("one flipped bit changes both digests") {
  test::TempDir dir;
  const auto path = dir.path() / "img";
  write_pattern(path, 3 << 20);
  auto before = digest_file(path);
  REQUIRE(before.has_value());
  // In the first chunk, and in a later one (read by either thread, hashed by either).
  for (const std::streamoff at : {std::streamoff{700000}, std::streamoff{(2 << 20) + 300000}}) {
    CAPTURE(at);
    auto flip = [&] {
      std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(at);
      char c = 0;
      f.read(&c, 1);
      c = static_cast<char>(c ^ 0x10);
      f.seekp(at);
      f.write(&c, 1);
    };
    flip();
    auto after = digest_file(path);
    REQUIRE(after.has_value());
    CHECK(after->sha256 != before->sha256);
    CHECK(after->fsverity != before->fsverity);
    flip();  // back
    auto again = digest_file(path);
    REQUIRE(again.has_value());
    CHECK(again->fsverity == before->fsverity);
  }
}

TEST_CASE("a file over the size cap and a missing file are refused") {
  test::TempDir dir;
  const auto path = dir.path() / "img";
  write_pattern(path, 5000);
  auto big = digest_file(path, 2, 4096);
  REQUIRE_FALSE(big.has_value());
  CHECK(big.error().code == Errc::data);
  auto missing = digest_file(dir.path() / "nope");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Errc::io);
  CHECK(missing.error().message.find("nope") != std::string::npos);
}
