// fs-verity digest and file SHA-256 in one pass. Format: Documentation/filesystems/fsverity.rst
// ("fs-verity descriptor", "Merkle tree") and fsverity-utils lib/compute_digest.c.
#include "common/module/fsverity.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "common/crypto.hpp"
#include "common/fd.hpp"
#include "common/ssl.hpp"

namespace cairn::module {
namespace {

constexpr std::size_t kHashSize = 32;
constexpr std::size_t kHashesPerBlock = kVerityBlockSize / kHashSize;

// Fetched once: an implicit fetch per EVP_DigestInit costs more than hashing a 4 KiB block.
const EVP_MD* sha256_md() {
  static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  if (md == nullptr) throw std::runtime_error("OpenSSL has no SHA256");
  return md;
}

using Hash = std::array<unsigned char, kHashSize>;

class BlockHasher {
 public:
  BlockHasher() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_) throw std::bad_alloc();
  }
  void hash(const unsigned char* data, std::size_t size, unsigned char* out) {
    unsigned int len = 0;
    if (EVP_DigestInit_ex2(ctx_.get(), sha256_md(), nullptr) != 1 ||
        EVP_DigestUpdate(ctx_.get(), data, size) != 1 || EVP_DigestFinal_ex(ctx_.get(), out, &len) != 1) {
      throw std::runtime_error("SHA-256 failed: " + openssl_error());
    }
  }

 private:
  EvpMdCtx ctx_;
};

}  // namespace

struct Sha256Stream::Impl {
  EvpMdCtx ctx{EVP_MD_CTX_new()};
};

Sha256Stream::Sha256Stream() : impl_(std::make_unique<Impl>()) {
  if (!impl_->ctx || EVP_DigestInit_ex2(impl_->ctx.get(), sha256_md(), nullptr) != 1) {
    throw std::runtime_error("SHA-256 init failed");
  }
}
Sha256Stream::~Sha256Stream() = default;
Sha256Stream::Sha256Stream(Sha256Stream&&) noexcept = default;
Sha256Stream& Sha256Stream::operator=(Sha256Stream&&) noexcept = default;

void Sha256Stream::update(const void* data, std::size_t size) {
  if (size == 0) return;
  if (EVP_DigestUpdate(impl_->ctx.get(), data, size) != 1) throw std::runtime_error("SHA-256 update failed");
  size_ += size;
}

std::string Sha256Stream::finish_hex() {
  Hash out{};
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(impl_->ctx.get(), out.data(), &len) != 1) throw std::runtime_error("SHA-256 final failed");
  return hex_encode(out.data(), out.size());
}

// levels[i] is the pending (not yet full) block of tree level i; level 0 holds the hashes of
// data blocks. A full block is hashed at once into the level above, so memory stays one
// block per level whatever the file size.
struct FsverityStream::Impl {
  BlockHasher hasher;
  std::array<unsigned char, kVerityBlockSize> data_block{};
  std::size_t data_fill = 0;
  struct Level {
    std::array<unsigned char, kVerityBlockSize> block{};
    std::size_t fill = 0;  // bytes used
  };
  std::vector<Level> levels;

  void push_hash(std::size_t level, const unsigned char* hash) {
    if (levels.size() <= level) levels.resize(level + 1);
    Level& l = levels[level];
    std::memcpy(l.block.data() + l.fill, hash, kHashSize);
    l.fill += kHashSize;
    if (l.fill == kVerityBlockSize) {
      Hash h{};
      hasher.hash(l.block.data(), kVerityBlockSize, h.data());
      l.fill = 0;
      push_hash(level + 1, h.data());
    }
  }
  void hash_data_block(const unsigned char* block) {
    Hash h{};
    hasher.hash(block, kVerityBlockSize, h.data());
    push_hash(0, h.data());
  }
};

void FsverityStream::hash_blocks(const void* data, std::size_t count, unsigned char* hashes) {
  BlockHasher hasher;
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < count; ++i) hasher.hash(p + i * kVerityBlockSize, kVerityBlockSize, hashes + i * kHashSize);
}

void FsverityStream::add_block_hashes(const unsigned char* hashes, std::size_t count) {
  if (impl_->data_fill != 0) throw std::logic_error("FsverityStream::add_block_hashes after a partial block");
  for (std::size_t i = 0; i < count; ++i) impl_->push_hash(0, hashes + i * kHashSize);
  size_ += static_cast<std::uint64_t>(count) * kVerityBlockSize;
}

FsverityStream::FsverityStream() : impl_(std::make_unique<Impl>()) { impl_->levels.reserve(12); }
FsverityStream::~FsverityStream() = default;
FsverityStream::FsverityStream(FsverityStream&&) noexcept = default;
FsverityStream& FsverityStream::operator=(FsverityStream&&) noexcept = default;

void FsverityStream::update(const void* data, std::size_t size) {
  Impl& s = *impl_;
  const auto* p = static_cast<const unsigned char*>(data);
  size_ += size;
  if (s.data_fill > 0) {
    const std::size_t take = std::min(size, kVerityBlockSize - s.data_fill);
    std::memcpy(s.data_block.data() + s.data_fill, p, take);
    s.data_fill += take;
    p += take;
    size -= take;
    if (s.data_fill < kVerityBlockSize) return;
    s.hash_data_block(s.data_block.data());
    s.data_fill = 0;
  }
  while (size >= kVerityBlockSize) {  // whole blocks straight from the caller's buffer
    s.hash_data_block(p);
    p += kVerityBlockSize;
    size -= kVerityBlockSize;
  }
  if (size > 0) {
    std::memcpy(s.data_block.data(), p, size);
    s.data_fill = size;
  }
}

std::string FsverityStream::finish_hex() {
  Impl& s = *impl_;
  Hash root{};  // an empty file's root hash is all zeros (fsverity.rst)
  if (size_ > 0) {
    if (s.data_fill > 0) {  // the last data block, zero-padded
      std::memset(s.data_block.data() + s.data_fill, 0, kVerityBlockSize - s.data_fill);
      s.hash_data_block(s.data_block.data());
      s.data_fill = 0;
    }
    // Tree height: levels until one block's hash remains, as the kernel counts them.
    std::size_t height = 0;
    for (std::uint64_t blocks = (size_ + kVerityBlockSize - 1) / kVerityBlockSize; blocks > 1;
         blocks = (blocks + kHashesPerBlock - 1) / kHashesPerBlock) {
      ++height;
    }
    for (std::size_t i = 0; i < height; ++i) {  // pad and hash each partial block upwards
      if (s.levels.size() <= i) s.levels.resize(i + 1);
      auto& l = s.levels[i];
      if (l.fill == 0) continue;
      std::memset(l.block.data() + l.fill, 0, kVerityBlockSize - l.fill);
      Hash h{};
      s.hasher.hash(l.block.data(), kVerityBlockSize, h.data());
      l.fill = 0;
      s.push_hash(i + 1, h.data());
    }
    // Level `height` now holds exactly one hash: the root.
    std::memcpy(root.data(), s.levels.at(height).block.data(), kHashSize);
  }
  root_hex_ = hex_encode(root.data(), root.size());

  // struct fsverity_descriptor (256 bytes, little-endian): version 1, hash_algorithm 1
  // (SHA-256), log_blocksize 12, salt_size 0, reserved u32, data_size le64, root_hash[64],
  // salt[32], reserved[144].
  std::array<unsigned char, 256> desc{};
  desc[0] = 1;
  desc[1] = 1;
  desc[2] = 12;
  desc[3] = 0;
  for (int i = 0; i < 8; ++i) desc[8 + i] = static_cast<unsigned char>(size_ >> (8 * i));
  std::memcpy(desc.data() + 16, root.data(), kHashSize);
  Hash digest{};
  s.hasher.hash(desc.data(), desc.size(), digest.data());
  return hex_encode(digest.data(), digest.size());
}

std::string fsverity_display(std::string_view hex) { return "sha256:" + std::string(hex); }

namespace {

// The second thread of digest_file: runs one job at a time for the caller. A round of
// digest_file lasts a few hundred microseconds, and waking a sleeping thread (a halted vCPU in a
// VM even more so) can cost tens of them, so each side first spins up to kSpin for the other,
// then sleeps on a condition variable. (Not std::atomic::wait: libstdc++'s calls sched_yield
// before sleeping, which on a busy machine hands the core to another process for a time slice.)
constexpr auto kSpin = std::chrono::microseconds(50);
class Worker {
 public:
  Worker() : thread_([this] { run(); }) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    wait();
    stop_.store(true, std::memory_order_relaxed);
    publish(posted_, posted_.load(std::memory_order_relaxed) + 1);
    thread_.join();
  }
  // The job must stay valid until wait() returns.
  void start(const std::function<void()>& job) {
    job_ = &job;
    publish(posted_, posted_.load(std::memory_order_relaxed) + 1);
  }
  void wait() {
    const auto want = posted_.load(std::memory_order_relaxed);
    await([&] { return done_.load(std::memory_order_acquire) == want; });
  }

 private:
  void run() {
    std::uint32_t seen = 0;
    for (;;) {
      await([&] { return posted_.load(std::memory_order_acquire) != seen; });
      seen = posted_.load(std::memory_order_acquire);
      if (stop_.load(std::memory_order_relaxed)) return;
      (*job_)();
      publish(done_, seen);
    }
  }
  // Stored under the mutex, so a waiter that checked before sleeping cannot miss the change.
  void publish(std::atomic<std::uint32_t>& word, std::uint32_t value) {
    {
      std::lock_guard lock(mutex_);
      word.store(value, std::memory_order_release);
    }
    cv_.notify_all();
  }
  template <class Pred>
  void await(Pred pred) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    for (unsigned i = 1; !pred(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
      if (i % 64 == 0 && std::chrono::steady_clock::now() > until) {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, pred);
        return;
      }
    }
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  std::atomic<std::uint32_t> posted_{0};
  std::atomic<std::uint32_t> done_{0};
  std::atomic<bool> stop_{false};
  const std::function<void()>* job_ = nullptr;
  std::thread thread_;  // last: starts once the members above exist
};

// Reads up to `want` bytes at `offset`; fewer only at end of file. Returns errno on failure.
struct ReadResult {
  std::size_t got = 0;
  int error = 0;
};
ReadResult read_at(int fd, unsigned char* dst, std::size_t want, std::uint64_t offset) {
  ReadResult r;
  while (r.got < want) {
    const ssize_t n = ::pread(fd, dst + r.got, want - r.got, static_cast<off_t>(offset + r.got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      r.error = errno;
      break;
    }
    if (n == 0) break;
    r.got += static_cast<std::size_t>(n);
  }
  return r;
}

// Reading: a chunk is read as kPieces pieces, each by whichever thread is free. Hashing: the
// Merkle tree's data blocks (level 0, almost all of its work) in groups of kLeafGroup blocks,
// also by whichever thread is free. Small items keep the two threads' finishing times close (the
// first to finish a round waits for the other); two 1 MiB chunks stay in the caches meanwhile.
constexpr std::size_t kChunk = std::size_t{1} << 20;
constexpr std::size_t kPieces = 8;
constexpr std::size_t kPiece = kChunk / kPieces;
constexpr std::size_t kLeafGroup = 8;
constexpr std::size_t kChunkBlocks = kChunk / kVerityBlockSize;
static_assert(kChunk % kPieces == 0 && kPiece % kVerityBlockSize == 0);

// The mapped path's rounds: larger than the read path's chunks (nothing is copied, so no
// buffer to keep in the caches), so the two threads meet, and wait for each other, 16 times
// less often. Measured on 256 MiB (busier thread's CPU, % of openssl speed): 1 MiB rounds
// 80-85%, 4 MiB 85-90%, 16 MiB 93-96%, 64 MiB 96-97%.
constexpr std::size_t kMapChunk = std::size_t{16} << 20;
constexpr std::size_t kMapChunkBlocks = kMapChunk / kVerityBlockSize;

// A read-only mapping of a whole file, unmapped when it goes.
class FileMapping {
 public:
  FileMapping(int fd, std::size_t size) : size_(size) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      data_ = static_cast<const unsigned char*>(p);
      ::madvise(p, size, MADV_SEQUENTIAL);  // aggressive readahead on a cold page cache
    }
  }
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;
  ~FileMapping() {
    if (data_ != nullptr) ::munmap(const_cast<unsigned char*>(data_), size_);
  }
  [[nodiscard]] const unsigned char* data() const { return data_; }

 private:
  const unsigned char* data_ = nullptr;
  std::size_t size_;
};

// Both digests of `size` bytes in memory (a mapped file). Two threads: per 16 MiB round the
// worker runs the file's SHA-256 (one sequential hash) and then helps with the chunk's Merkle
// leaves, which the caller hashes meanwhile in groups; nothing is copied.
FileDigests digest_mapped(const unsigned char* data, std::uint64_t size, int threads) {
  Sha256Stream sha;
  FsverityStream verity;
  if (threads <= 1) {
    for (std::uint64_t off = 0; off < size; off += kChunk) {
      const auto len = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, size - off));
      sha.update(data + off, len);
      verity.update(data + off, len);
    }
  } else {
    Worker worker;
    std::vector<Hash> leaves(kMapChunkBlocks);
    for (std::uint64_t off = 0; off < size; off += kMapChunk) {
      const unsigned char* chunk = data + off;
      const auto len = static_cast<std::size_t>(std::min<std::uint64_t>(kMapChunk, size - off));
      const std::size_t blocks = len / kVerityBlockSize;  // whole blocks: every chunk but the last is all whole
      const std::size_t items = (blocks + kLeafGroup - 1) / kLeafGroup;
      std::atomic<std::size_t> taken{0};
      auto work = [&] {
        for (std::size_t i = taken.fetch_add(1); i < items; i = taken.fetch_add(1)) {
          const std::size_t b = i * kLeafGroup;
          FsverityStream::hash_blocks(chunk + b * kVerityBlockSize, std::min(kLeafGroup, blocks - b), leaves[b].data());
        }
      };
      const std::function<void()> job = [&] {
        sha.update(chunk, len);
        work();
      };
      worker.start(job);
      {
        struct WaitOnExit {
          Worker& worker;
          ~WaitOnExit() { worker.wait(); }
        } wait_on_exit{worker};
        work();
      }
      verity.add_block_hashes(leaves[0].data(), blocks);
      verity.update(chunk + blocks * kVerityBlockSize, len - blocks * kVerityBlockSize);
    }
  }
  FileDigests out;
  out.size = size;
  out.sha256 = sha.finish_hex();
  out.fsverity = verity.finish_hex();
  return out;
}

}  // namespace

Result<FileDigests> digest_file(const std::filesystem::path& path, int threads, std::uint64_t max_size) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return fail(Errc::io, path.string() + ": " + std::strerror(errno), "check the path and its permissions");
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  const int raw = fd.get();
  auto read_error = [&](int err) { return fail(Errc::io, path.string() + ": read: " + std::strerror(err)); };
  auto too_big = [&] {
    return fail(Errc::data, path.string() + ": larger than " + std::to_string(max_size) + " bytes",
                "a module image this large is refused; check the file");
  };
  // A regular file is hashed where it lies in the page cache (mmap): copying it out with read()
  // costs as much as a tenth of the hashing (more for a file written in small pieces). The
  // files hashed here are root's (the store, an image being packed or checked); one truncated
  // while it is hashed ends the process with SIGBUS rather than giving a digest. Anything else
  // (a pipe, a mapping refused) is read.
  struct stat st {};
  if (::fstat(raw, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (size > max_size) return too_big();
    if (size <= SIZE_MAX) {
      FileMapping mapping(raw, static_cast<std::size_t>(size));
      if (mapping.data() != nullptr) return digest_mapped(mapping.data(), size, threads);
    }
  }
  std::array<std::vector<unsigned char>, 2> bufs{std::vector<unsigned char>(kChunk), std::vector<unsigned char>(kChunk)};
  Sha256Stream sha;
  FsverityStream verity;
  std::uint64_t total = 0;
  if (threads <= 1) {
    for (;;) {
      const auto r = read_at(raw, bufs[0].data(), kChunk, total);
      if (r.error != 0) return read_error(r.error);
      if (r.got == 0) break;
      total += r.got;
      if (total > max_size) return too_big();
      sha.update(bufs[0].data(), r.got);
      verity.update(bufs[0].data(), r.got);
    }
  } else {
    // The file's SHA-256 is one sequential hash: the worker runs it over the current chunk.
    // Everything else is split in small items that either thread takes when free: the reads of
    // the next chunk, then the Merkle leaves of the current one. Both threads stay busy until
    // the chunk is done whatever the page-cache copy costs, so each does about half of
    // (SHA-256 + Merkle tree + copy) instead of one hash plus a fixed share of the copy.
    Worker worker;
    std::array<Hash, kChunkBlocks> leaves{};
    std::array<ReadResult, kPieces> pieces{};
    auto first = read_at(raw, bufs[0].data(), kChunk, 0);
    if (first.error != 0) return read_error(first.error);
    std::size_t cur = 0;
    std::size_t len = first.got;
    while (len > 0) {
      // Leaves in parallel only while every chunk so far was whole blocks (a short read ended
      // the previous chunk only at end of file, but the file may have grown since).
      const bool aligned = total % kVerityBlockSize == 0;
      total += len;
      if (total > max_size) return too_big();
      const unsigned char* data = bufs[cur].data();
      unsigned char* next = bufs[cur ^ 1].data();
      const std::uint64_t next_offset = total;
      const std::size_t blocks = aligned ? len / kVerityBlockSize : 0;
      const std::size_t items = kPieces + (blocks + kLeafGroup - 1) / kLeafGroup;
      std::atomic<std::size_t> taken{0};
      auto work = [&] {
        for (std::size_t i = taken.fetch_add(1); i < items; i = taken.fetch_add(1)) {
          if (i < kPieces) {
            pieces[i] = read_at(raw, next + i * kPiece, kPiece, next_offset + i * kPiece);
          } else {
            const std::size_t b = (i - kPieces) * kLeafGroup;
            FsverityStream::hash_blocks(data + b * kVerityBlockSize, std::min(kLeafGroup, blocks - b), leaves[b].data());
          }
        }
      };
      const std::function<void()> job = [&] {
        sha.update(data, len);
        work();
      };
      worker.start(job);
      {
        // Even when work() throws (an OpenSSL failure), the worker is done with these locals
        // before they go.
        struct WaitOnExit {
          Worker& worker;
          ~WaitOnExit() { worker.wait(); }
        } wait_on_exit{worker};
        work();
      }
      verity.add_block_hashes(leaves[0].data(), blocks);
      verity.update(data + blocks * kVerityBlockSize, len - blocks * kVerityBlockSize);
      // The next chunk: its pieces up to the first short one (end of file).
      cur ^= 1;
      len = 0;
      for (const auto& piece : pieces) {
        if (piece.error != 0) return read_error(piece.error);
        len += piece.got;
        if (piece.got < kPiece) break;
      }
    }
  }
  FileDigests out;
  out.size = total;
  out.sha256 = sha.finish_hex();
  out.fsverity = verity.finish_hex();
  return out;
}

}  // namespace cairn::module
