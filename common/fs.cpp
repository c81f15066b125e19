#include "common/fs.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "common/fd.hpp"

namespace cairn {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

Result<std::string> read_open_fd(const UniqueFd& fd, const std::filesystem::path& path,
                                 std::size_t max_bytes) {
  std::string out;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::io, "read " + path.string() + ": " + errno_text(errno));
    }
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > max_bytes) {
      return fail(Errc::data,
                  path.string() + ": larger than the limit of " + std::to_string(max_bytes) +
                      " bytes",
                  "check that the file is the one expected");
    }
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

Status write_all(int fd, std::string_view data, const std::filesystem::path& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::io, "write " + path.string() + ": " + errno_text(errno));
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

}  // namespace

Result<std::optional<std::string>> read_file_if_exists(const std::filesystem::path& path,
                                                       std::size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    if (errno == ENOENT || errno == ENOTDIR) return std::optional<std::string>{};
    return fail(Errc::io, "open " + path.string() + ": " + errno_text(errno));
  }
  auto content = read_open_fd(fd, path, max_bytes);
  if (!content) return fail(content.error());
  return std::optional<std::string>(std::move(*content));
}

Result<std::string> read_file(const std::filesystem::path& path, std::size_t max_bytes) {
  auto content = read_file_if_exists(path, max_bytes);
  if (!content) return fail(content.error());
  if (!*content) return fail(Errc::io, path.string() + ": no such file");
  return std::move(**content);
}

Status fsync_dir(const std::filesystem::path& dir) {
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd || ::fsync(dfd.get()) != 0) {
    return fail(Errc::io, "fsync directory " + dir.string() + ": " + errno_text(errno));
  }
  return {};
}

Status make_dirs(const std::filesystem::path& dir, mode_t mode) {
  if (dir.empty()) return {};
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return {};
    return fail(Errc::io, dir.string() + ": exists and is not a directory");
  }
  if (auto parent = make_dirs(dir.parent_path(), 0755); !parent) return parent;
  if (::mkdir(dir.c_str(), mode) != 0 && errno != EEXIST) {
    return fail(Errc::io, "mkdir " + dir.string() + ": " + errno_text(errno));
  }
  return {};
}

Status write_file_atomic(const std::filesystem::path& path, std::string_view data, mode_t mode) {
  const auto dir = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
  if (auto made = make_dirs(dir); !made) return made;

  std::random_device rd;
  const auto tmp = dir / ("." + path.filename().string() + ".tmp" + std::to_string(rd()));
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd) return fail(Errc::io, "create " + tmp.string() + ": " + errno_text(errno));
  auto cleanup_on_error = [&](Error e) {
    ::unlink(tmp.c_str());
    return fail(std::move(e));
  };
  // The umask may have narrowed the mode; state files get exactly the mode asked for.
  if (::fchmod(fd.get(), mode) != 0) {
    return cleanup_on_error({Errc::io, "chmod " + tmp.string() + ": " + errno_text(errno), {}});
  }
  if (auto w = write_all(fd.get(), data, tmp); !w) return cleanup_on_error(w.error());
  if (::fsync(fd.get()) != 0) {
    return cleanup_on_error({Errc::io, "fsync " + tmp.string() + ": " + errno_text(errno), {}});
  }
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return cleanup_on_error(
        {Errc::io, "rename " + tmp.string() + " to " + path.string() + ": " + errno_text(errno),
         {}});
  }
  return fsync_dir(dir);
}

}  // namespace cairn
