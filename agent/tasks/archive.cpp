#include "agent/tasks/archive.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/dynamic_library.hpp"
#include "common/fd.hpp"

namespace cairn::agent::tasks {
namespace {

constexpr std::uint64_t kRatioFloor = 1 << 20;  // below this, any ratio is fine (tiny archives)

// libarchive is loaded the first time a service archive is unpacked (dlopen, the way systemd
// loads its optional libraries), so the agent does not need it for anything else: the
// initramfs leaves it out, and with it libxml2 and libicu (~30 MiB of libicudata) that it
// pulls in. Only the declarations of <archive.h> are used here, for the function types.
constexpr const char* kLibArchive = "libarchive.so.13";  // the soname since libarchive 3.0

struct LibArchive {
  decltype(&::archive_read_new) read_new = nullptr;
  decltype(&::archive_read_free) read_free = nullptr;
  decltype(&::archive_read_support_format_tar) support_format_tar = nullptr;
  decltype(&::archive_read_support_format_gnutar) support_format_gnutar = nullptr;
  decltype(&::archive_read_support_format_zip) support_format_zip = nullptr;
  decltype(&::archive_read_support_filter_gzip) support_filter_gzip = nullptr;
  decltype(&::archive_read_support_filter_xz) support_filter_xz = nullptr;
  decltype(&::archive_read_support_filter_zstd) support_filter_zstd = nullptr;
  decltype(&::archive_read_support_filter_bzip2) support_filter_bzip2 = nullptr;
  decltype(&::archive_read_open_filename) read_open_filename = nullptr;
  decltype(&::archive_error_string) error_string = nullptr;
  decltype(&::archive_read_next_header) read_next_header = nullptr;
  decltype(&::archive_read_data) read_data = nullptr;
  decltype(&::archive_entry_pathname) entry_pathname = nullptr;
  decltype(&::archive_entry_filetype) entry_filetype = nullptr;
  decltype(&::archive_entry_hardlink) entry_hardlink = nullptr;
  decltype(&::archive_entry_symlink) entry_symlink = nullptr;
  decltype(&::archive_entry_perm) entry_perm = nullptr;
};

Result<LibArchive> load_libarchive() {
  auto so = DynamicLibrary::open(kLibArchive, "unpacking a service archive",
                                 "install libarchive13 on the node (the initramfs leaves it out)");
  if (!so) return fail(so.error());
  LibArchive lib;
  MissingSymbols missing;
  const auto bind = [&](auto& fn, const char* name) { so->bind(fn, name, missing); };
  bind(lib.read_new, "archive_read_new");
  bind(lib.read_free, "archive_read_free");
  bind(lib.support_format_tar, "archive_read_support_format_tar");
  bind(lib.support_format_gnutar, "archive_read_support_format_gnutar");
  bind(lib.support_format_zip, "archive_read_support_format_zip");
  bind(lib.support_filter_gzip, "archive_read_support_filter_gzip");
  bind(lib.support_filter_xz, "archive_read_support_filter_xz");
  bind(lib.support_filter_zstd, "archive_read_support_filter_zstd");
  bind(lib.support_filter_bzip2, "archive_read_support_filter_bzip2");
  bind(lib.read_open_filename, "archive_read_open_filename");
  bind(lib.error_string, "archive_error_string");
  bind(lib.read_next_header, "archive_read_next_header");
  bind(lib.read_data, "archive_read_data");
  bind(lib.entry_pathname, "archive_entry_pathname");
  bind(lib.entry_filetype, "archive_entry_filetype");
  bind(lib.entry_hardlink, "archive_entry_hardlink");
  bind(lib.entry_symlink, "archive_entry_symlink");
  bind(lib.entry_perm, "archive_entry_perm");
  if (auto ok = missing.check(kLibArchive, "install libarchive13 3.3 or later on the node"); !ok) return fail(ok.error());
  return lib;
}

// Loaded once per process; a failure is remembered (the node's libraries do not change).
Result<const LibArchive*> libarchive() {
  static const Result<LibArchive> loaded = load_libarchive();
  if (!loaded) return fail(loaded.error());
  return &*loaded;
}

struct ArchiveDeleter {
  decltype(&::archive_read_free) read_free = nullptr;
  void operator()(struct archive* a) const {
    if (a != nullptr) read_free(a);
  }
};
using ArchivePtr = std::unique_ptr<struct archive, ArchiveDeleter>;

Error bad(const std::string& entry, const std::string& why) {
  return Error{Errc::data, "archive entry '" + entry.substr(0, 200) + "': " + why,
               "rebuild the archive with relative paths inside one directory tree"};
}

// The entry's path as components, without "." and empty parts; empty on a refused path.
std::optional<std::vector<std::string>> split_entry(const std::string& path) {
  if (path.empty() || path.front() == '/') return std::nullopt;
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= path.size()) {
    const auto end = std::min(path.find('/', start), path.size());
    std::string part = path.substr(start, end - start);
    if (part == "..") return std::nullopt;
    if (!part.empty() && part != ".") parts.push_back(std::move(part));
    start = end + 1;
  }
  return parts;
}

std::string join(const std::vector<std::string>& parts, std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out += (i ? "/" : "") + parts[i];
  return out;
}

// Makes the parent directories of parts under dirfd, refusing to go through anything that is
// not a real directory (a symlink made by an earlier entry must never be written through).
Result<UniqueFd> open_parent(int root_fd, const std::vector<std::string>& parts, const std::string& entry) {
  UniqueFd dir(::fcntl(root_fd, F_DUPFD_CLOEXEC, 0));
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    if (::mkdirat(dir.get(), parts[i].c_str(), 0755) != 0 && errno != EEXIST) {
      return fail(Errc::io, "archive entry '" + entry + "': mkdir " + join(parts, i + 1) + ": " + std::strerror(errno));
    }
    UniqueFd next(::openat(dir.get(), parts[i].c_str(), O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_RDONLY));
    if (!next) return fail(bad(entry, "its parent " + join(parts, i + 1) + " is not a directory (a symlink?)"));
    ::fchmod(next.get(), 0755);  // the umask does not decide the service's modes (the agent's is 0077)
    dir = std::move(next);
  }
  return dir;
}

// Opens `path` relative to root_fd with every step kept beneath it (openat2 RESOLVE_BENEATH),
// symlinks included: EXDEV when a link leads out.
int open_beneath(int root_fd, const std::string& path) {
  open_how how{};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  return static_cast<int>(::syscall(SYS_openat2, root_fd, path.c_str(), &how, sizeof how));
}

}  // namespace

Result<ExtractStats> extract_archive(const std::filesystem::path& archive_path, const std::filesystem::path& dest,
                                     const ArchiveLimits& limits) {
  std::error_code ec;
  const auto packed = std::filesystem::file_size(archive_path, ec);
  if (ec) return fail(Errc::io, "archive " + archive_path.string() + ": " + ec.message());
  if (::mkdir(dest.c_str(), 0755) != 0) {
    return fail(Errc::io, "unpack into " + dest.string() + ": " + std::strerror(errno));
  }
  UniqueFd root(::open(dest.c_str(), O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_RDONLY));
  if (!root) return fail(Errc::io, "open " + dest.string() + ": " + std::strerror(errno));
  // 0755 whatever the umask: the service runs as another (dynamic) user, who must reach its files.
  ::fchmod(root.get(), 0755);

  auto loaded = libarchive();
  if (!loaded) return fail(loaded.error());
  const LibArchive& la = **loaded;
  ArchivePtr a(la.read_new(), ArchiveDeleter{la.read_free});
  if (!a) return fail(Errc::internal, "archive_read_new failed");
  la.support_format_tar(a.get());
  la.support_format_gnutar(a.get());
  la.support_format_zip(a.get());
  la.support_filter_gzip(a.get());
  la.support_filter_xz(a.get());
  la.support_filter_zstd(a.get());
  la.support_filter_bzip2(a.get());
  if (la.read_open_filename(a.get(), archive_path.c_str(), 64 * 1024) != ARCHIVE_OK) {
    return fail(Errc::data, "archive " + archive_path.filename().string() + ": " + la.error_string(a.get()),
                "send a tar (plain, gzip, xz, zstd or bzip2) or a zip");
  }

  ExtractStats stats;
  std::vector<std::string> symlinks;  // checked once the tree is complete
  std::vector<char> buf(64 * 1024);
  archive_entry* entry = nullptr;
  for (;;) {
    const int r = la.read_next_header(a.get(), &entry);
    if (r == ARCHIVE_EOF) break;
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
      return fail(Errc::data, "archive " + archive_path.filename().string() + ": " + la.error_string(a.get()));
    }
    if (++stats.entries > limits.max_entries) {
      return fail(Errc::data, "archive: more than " + std::to_string(limits.max_entries) + " entries",
                  "an archive bomb is refused; pack fewer files");
    }
    const char* raw = la.entry_pathname(entry);
    const std::string name = raw ? raw : "";
    const auto parts = split_entry(name);
    if (!parts) return fail(bad(name, name.starts_with("/") ? "absolute path" : "'..' in the path"));
    if (parts->empty()) continue;  // "./" itself
    const auto type = la.entry_filetype(entry);
    auto parent = open_parent(root.get(), *parts, name);
    if (!parent) return fail(parent.error());
    const std::string& leaf = parts->back();
    const std::string rel = join(*parts, parts->size());

    if (const char* hard = la.entry_hardlink(entry)) {
      const auto target = split_entry(hard);
      if (!target || target->empty()) return fail(bad(name, std::string("hard link to '") + hard + "' outside the archive"));
      UniqueFd t(open_beneath(root.get(), join(*target, target->size())));
      struct stat st {};
      if (!t || ::fstat(t.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
        return fail(bad(name, std::string("hard link to '") + hard + "', not a file unpacked before it"));
      }
      // Without CAP_DAC_READ_SEARCH, AT_EMPTY_PATH fails and the link is made by name: follow
      // a final symlink there (AT_SYMLINK_FOLLOW), then check the new name is the very file
      // open_beneath found, never a second name for a symlink that could point out of the tree.
      if (::linkat(t.get(), "", parent->get(), leaf.c_str(), AT_EMPTY_PATH) != 0 &&
          ::linkat(root.get(), join(*target, target->size()).c_str(), parent->get(), leaf.c_str(), AT_SYMLINK_FOLLOW) != 0) {
        return fail(Errc::io, "archive entry '" + name + "': link: " + std::strerror(errno));
      }
      struct stat made {};
      if (::fstatat(parent->get(), leaf.c_str(), &made, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(made.st_mode) ||
          made.st_dev != st.st_dev || made.st_ino != st.st_ino) {
        ::unlinkat(parent->get(), leaf.c_str(), 0);
        return fail(bad(name, std::string("hard link to '") + hard + "' did not resolve to the file unpacked before it"));
      }
      continue;
    }
    if (type == AE_IFDIR) {
      if (::mkdirat(parent->get(), leaf.c_str(), 0755) != 0 && errno != EEXIST) {
        return fail(Errc::io, "archive entry '" + name + "': mkdir: " + std::strerror(errno));
      }
      UniqueFd d(::openat(parent->get(), leaf.c_str(), O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_RDONLY));
      if (!d) return fail(bad(name, "exists and is not a directory"));
      ::fchmod(d.get(), 0755);
      continue;
    }
    if (type == AE_IFLNK) {
      const char* target = la.entry_symlink(entry);
      if (!target || !*target) return fail(bad(name, "symlink without a target"));
      if (target[0] == '/') return fail(bad(name, std::string("symlink to the absolute path '") + target + "'"));
      if (::symlinkat(target, parent->get(), leaf.c_str()) != 0) {
        return fail(Errc::io, "archive entry '" + name + "': symlink: " + std::strerror(errno));
      }
      symlinks.push_back(rel);
      continue;
    }
    if (type != AE_IFREG) return fail(bad(name, "not a file, directory or link (device, FIFO or socket)"));

    // Regular file: never through a symlink, never over an existing file, no setuid bits.
    const mode_t mode = (la.entry_perm(entry) & 0755) | 0600;
    UniqueFd out(::openat(parent->get(), leaf.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    if (!out) return fail(bad(name, std::string("cannot create: ") + std::strerror(errno) + " (a duplicate entry?)"));
    for (;;) {
      const la_ssize_t n = la.read_data(a.get(), buf.data(), buf.size());
      if (n == 0) break;
      if (n < 0) return fail(Errc::data, "archive entry '" + name + "': " + la.error_string(a.get()));
      stats.bytes += static_cast<std::uint64_t>(n);
      if (stats.bytes > limits.max_total_bytes) {
        return fail(Errc::data, "archive: unpacks to more than " + std::to_string(limits.max_total_bytes) + " bytes",
                    "an archive bomb is refused; ship a smaller service");
      }
      if (stats.bytes > kRatioFloor && stats.bytes / std::max<std::uint64_t>(packed, 1) > limits.max_ratio) {
        return fail(Errc::data, "archive: expands more than " + std::to_string(limits.max_ratio) + " times its size",
                    "an archive bomb is refused");
      }
      const char* p = buf.data();
      std::size_t left = static_cast<std::size_t>(n);
      while (left > 0) {
        const ssize_t w = ::write(out.get(), p, left);
        if (w < 0) {
          if (errno == EINTR) continue;
          return fail(Errc::io, "archive entry '" + name + "': write: " + std::strerror(errno));
        }
        p += w;
        left -= static_cast<std::size_t>(w);
      }
    }
    ::fchmod(out.get(), mode);  // the umask does not decide the service's modes
  }

  // With the tree complete, every symlink must lead to something inside it, following links
  // the way the kernel will when the service runs.
  for (const auto& link : symlinks) {
    UniqueFd resolved(open_beneath(root.get(), link));
    if (!resolved) {
      const bool out = errno == EXDEV || errno == ELOOP;
      return fail(bad(link, out ? "symlink leads out of the service directory" : "dangling symlink (" +
                                                                                    std::string(std::strerror(errno)) + ")"));
    }
  }
  return stats;
}

}  // namespace cairn::agent::tasks
