// fs-verity digest and file SHA-256 in one pass. Format: Documentation/filesystems/fsverity.rst
// ("fs-verity descriptor", "Merkle tree") and fsverity-utils lib/compute_digest.c.
#include "common/module/fsverity.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
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

// The second thread of digest_file: runs one job at a time for the reader.
class Worker {
 public:
  Worker() : thread_([this] { run(); }) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void start(std::function<void()> job) {
    {
      std::lock_guard lock(mutex_);
      job_ = std::move(job);
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return !job_; });
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      cv_.wait(lock, [this] { return job_ || stop_; });
      if (job_) {
        auto job = job_;
        lock.unlock();
        job();
        lock.lock();
        job_ = nullptr;
        cv_.notify_all();
      } else if (stop_) {
        return;
      }
    }
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool stop_ = false;
  std::thread thread_;
};

// Reads up to buf.size() bytes; fewer only at end of file.
Result<std::size_t> read_full(int fd, std::vector<unsigned char>& buf, const std::filesystem::path& path) {
  std::size_t got = 0;
  while (got < buf.size()) {
    const ssize_t n = ::read(fd, buf.data() + got, buf.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(Errc::io, path.string() + ": read: " + std::strerror(errno));
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  return got;
}

}  // namespace

Result<FileDigests> digest_file(const std::filesystem::path& path, int threads, std::uint64_t max_size) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return fail(Errc::io, path.string() + ": " + std::strerror(errno), "check the path and its permissions");
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  constexpr std::size_t kChunk = 1 << 20;  // 1 MiB: in L2/L3 for both threads
  std::array<std::vector<unsigned char>, 2> bufs{std::vector<unsigned char>(kChunk),
                                                 std::vector<unsigned char>(kChunk)};
  Sha256Stream sha;
  FsverityStream verity;
  std::uint64_t total = 0;
  auto too_big = [&] {
    return fail(Errc::data, path.string() + ": larger than " + std::to_string(max_size) + " bytes",
                "a module image this large is refused; check the file");
  };
  if (threads <= 1) {
    for (;;) {
      auto n = read_full(fd.get(), bufs[0], path);
      if (!n) return fail(n.error());
      if (*n == 0) break;
      total += *n;
      if (total > max_size) return too_big();
      sha.update(bufs[0].data(), *n);
      verity.update(bufs[0].data(), *n);
    }
  } else {
    // Copying from the page cache costs about a sixth of hashing the bytes, so each thread
    // reads half of the next chunk (pread, disjoint) beside its hash: the worker the SHA-256,
    // this thread the Merkle tree. The two sides stay about even.
    Worker worker;
    const int raw = fd.get();
    auto read_at = [&](unsigned char* dst, std::size_t want, std::uint64_t offset) -> Result<std::size_t> {
      std::size_t got = 0;
      while (got < want) {
        const ssize_t n = ::pread(raw, dst + got, want - got, static_cast<off_t>(offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail(Errc::io, path.string() + ": read: " + std::strerror(errno));
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
      }
      return got;
    };
    constexpr std::size_t kHalf = kChunk / 2;
    auto n = read_at(bufs[0].data(), kChunk, 0);
    if (!n) return fail(n.error());
    std::size_t cur = 0;
    std::size_t len = *n;
    while (len > 0) {
      total += len;
      if (total > max_size) return too_big();
      const std::uint64_t next_offset = total;
      Result<std::size_t> first = 0;
      worker.start([&, cur, len, next_offset] {
        sha.update(bufs[cur].data(), len);
        first = read_at(bufs[cur ^ 1].data(), kHalf, next_offset);
      });
      verity.update(bufs[cur].data(), len);
      auto second = read_at(bufs[cur ^ 1].data() + kHalf, kHalf, next_offset + kHalf);
      worker.wait();
      if (!first) return fail(first.error());
      if (!second) return fail(second.error());
      cur ^= 1;
      // A short first half is the end of the file: the second half then holds nothing of it.
      len = *first < kHalf ? *first : kHalf + *second;
    }
  }
  FileDigests out;
  out.size = total;
  out.sha256 = sha.finish_hex();
  out.fsverity = verity.finish_hex();
  return out;
}

}  // namespace cairn::module
