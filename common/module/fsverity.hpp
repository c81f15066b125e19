// The digests of a module image, computed in one streaming pass: the file's SHA-256 and the
// kernel's fs-verity digest (Documentation/filesystems/fsverity.rst: a salt-less SHA-256
// Merkle tree over 4 KiB blocks, then SHA-256 of the 256-byte fsverity_descriptor), equal
// to what `fsverity digest` (fsverity-utils) prints and FS_IOC_MEASURE_VERITY returns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace cairn::module {

inline constexpr std::size_t kVerityBlockSize = 4096;  // log_blocksize 12, the default

// Streaming SHA-256 (the file digest, OCI blob digests). Not thread-safe; movable.
class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(Sha256Stream&&) noexcept;
  Sha256Stream& operator=(Sha256Stream&&) noexcept;
  void update(const void* data, std::size_t size);
  void update(std::string_view data) { update(data.data(), data.size()); }
  // Lower-case hex of the digest; the stream is then spent (create a new one to reuse).
  std::string finish_hex();
  [[nodiscard]] std::uint64_t size() const { return size_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::uint64_t size_ = 0;
};

// Streaming fs-verity digest: feed the file's bytes in any chunking, then finish_hex().
// Memory: one pending block per tree level (at most ~8 levels), never the whole file.
class FsverityStream {
 public:
  FsverityStream();
  ~FsverityStream();
  FsverityStream(FsverityStream&&) noexcept;
  FsverityStream& operator=(FsverityStream&&) noexcept;
  void update(const void* data, std::size_t size);
  void update(std::string_view data) { update(data.data(), data.size()); }
  // Lower-case hex of SHA-256(fsverity_descriptor); the stream is then spent.
  std::string finish_hex();

  // For hashing the data blocks on several threads: hash_blocks writes the level-0 hash of each
  // of `count` whole 4 KiB blocks (32 bytes each, thread-safe: no shared state), and
  // add_block_hashes appends such hashes in file order, as update() of those blocks would.
  // add_block_hashes needs every update() so far to have been a whole number of blocks.
  static void hash_blocks(const void* data, std::size_t count, unsigned char* hashes);
  void add_block_hashes(const unsigned char* hashes, std::size_t count);
  // The Merkle tree root hash alone (hex), valid after finish_hex(); all zeros for an empty file.
  [[nodiscard]] const std::string& root_hash_hex() const { return root_hex_; }
  [[nodiscard]] std::uint64_t size() const { return size_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::uint64_t size_ = 0;
  std::string root_hex_;
};

struct FileDigests {
  std::uint64_t size = 0;
  std::string sha256;    // hex
  std::string fsverity;  // hex (print as "sha256:" + hex, as fsverity-utils does)
};

// Reads the file once and computes both digests. A regular file is mapped (mmap) and hashed in
// place, without copying it out of the page cache; other files are read in 1 MiB chunks.
// threads = 2 uses a second thread: it runs the file's SHA-256 (one sequential hash) over each
// round (16 MiB mapped, 1 MiB read) while the caller hashes its Merkle leaves (and, reading, the
// next chunk);
// each of the two takes what is left of that work when it is free, so both stay busy (every
// byte is hashed twice, for two different hashes). threads = 1 does both on the caller's.
// max_size caps the file (a larger one is Errc::data). Errors: Errc::io naming the path.
Result<FileDigests> digest_file(const std::filesystem::path& path, int threads = 2,
                                std::uint64_t max_size = UINT64_MAX);

// "sha256:<hex>", the form `fsverity digest` prints and manifests carry.
std::string fsverity_display(std::string_view hex);

}  // namespace cairn::module
