// The Linux Mounter: loop devices (LOOP_CTL_GET_FREE + LOOP_CONFIGURE), mount(2),
// move_mount(2) and umount2(2). The only file of Cairn that mounts anything.
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "agent/modules/mounter.hpp"
#include "common/fd.hpp"
#include "common/fs.hpp"

// Linux 6.5 (uapi linux/mount.h); glibc 2.36's <sys/mount.h> predates it.
#ifndef MOVE_MOUNT_BENEATH
#define MOVE_MOUNT_BENEATH 0x00000200
#endif

namespace cairn::agent::modules {
namespace {

constexpr int kLoopMajor = 7;
constexpr int kLoopAttempts = 8;  // LOOP_CTL_GET_FREE races with other attachers: EBUSY -> next
constexpr std::size_t kMaxMountinfoBytes = 4 << 20;

std::string errno_text(int err) { return std::strerror(err); }

// overlayfs splits its options on ',' and its lowerdir on ':'; '\\' escapes. Our paths are
// built from validated module names, so any of those is a bug or a hostile config: refuse.
Status check_option_path(const std::filesystem::path& p) {
  if (p.string().find_first_of(",:\\\n") != std::string::npos) {
    return fail(Errc::config, "path '" + p.string() + "' holds ',', ':' or '\\', which overlayfs options cannot carry",
                "choose a union mount point and persist directory without those characters");
  }
  return {};
}

// A move_mount(2) that cannot succeed: on a kernel without MOVE_MOUNT_BENEATH the unknown
// flag fails first (EINVAL; ENOSYS before Linux 5.2), on one with it the empty path does
// (ENOENT). Nothing is moved either way.
bool probe_move_beneath() {
  if (::move_mount(AT_FDCWD, "", AT_FDCWD, "", MOVE_MOUNT_BENEATH) == 0) return true;
  const int err = errno;
  return err != EINVAL && err != ENOSYS;
}

class LinuxMounter final : public Mounter {
 public:
  LinuxMounter(Root root, LinuxMounterOptions options) : root_(std::move(root)), options_(options) {}

  bool can_move_beneath() override {
    if (!options_.allow_move_beneath) return false;
    if (!beneath_) beneath_ = probe_move_beneath();
    return *beneath_;
  }

  Status mount_image(const std::filesystem::path& image, const std::filesystem::path& target) override {
    UniqueFd backing(::open(image.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
    if (!backing) return fail(Errc::io, "open module image " + image.string() + ": " + errno_text(errno));
    const auto ctl_path = root_ / "dev/loop-control";
    UniqueFd ctl(::open(ctl_path.c_str(), O_RDWR | O_CLOEXEC));
    if (!ctl) {
      return fail(Errc::unavailable, "open " + ctl_path.string() + ": " + errno_text(errno),
                  "load the loop module (modprobe loop) and run as root");
    }
    for (int attempt = 0; attempt < kLoopAttempts; ++attempt) {
      const int n = ::ioctl(ctl.get(), LOOP_CTL_GET_FREE);
      if (n < 0) return fail(Errc::unavailable, "LOOP_CTL_GET_FREE: " + errno_text(errno), "free a loop device (losetup -D)");
      const auto dev = root_ / ("dev/loop" + std::to_string(n));
      // Without udev (containers, the initramfs) the node of a new loop device may be missing.
      if (::mknod(dev.c_str(), S_IFBLK | 0600, makedev(kLoopMajor, static_cast<unsigned>(n))) != 0 && errno != EEXIST) {
        return fail(Errc::io, "mknod " + dev.string() + ": " + errno_text(errno));
      }
      UniqueFd loop(::open(dev.c_str(), O_RDONLY | O_CLOEXEC));
      if (!loop) return fail(Errc::io, "open " + dev.string() + ": " + errno_text(errno));
      loop_config config{};
      config.fd = static_cast<__u32>(backing.get());
      config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
      const auto name = image.string();
      std::memcpy(config.info.lo_file_name, name.data(), std::min(name.size(), sizeof config.info.lo_file_name - 1));
      if (::ioctl(loop.get(), LOOP_CONFIGURE, &config) != 0) {
        if (errno == EBUSY) continue;  // taken between GET_FREE and CONFIGURE
        return fail(Errc::io, "LOOP_CONFIGURE " + dev.string() + " with " + image.string() + ": " + errno_text(errno));
      }
      // The mount holds the device open; closing `loop` afterwards (success or not) lets
      // autoclear detach it when the last user goes.
      if (::mount(dev.c_str(), target.c_str(), "erofs", MS_RDONLY | MS_NODEV, nullptr) != 0) {
        const int err = errno;
        return fail(Errc::data, "mount EROFS image " + image.string() + " (" + dev.string() + ") at " + target.string() + ": " + errno_text(err),
                    err == EINVAL ? "the image is not a valid EROFS filesystem; fetch it again" : "");
      }
      return {};
    }
    return fail(Errc::temporary, "no free loop device after " + std::to_string(kLoopAttempts) + " attempts", "retry");
  }

  Status mount_tmpfs(const std::filesystem::path& target) override {
    if (::mount("cairn-upper", target.c_str(), "tmpfs", MS_NODEV, "mode=0755") != 0) {
      return fail(Errc::io, "mount tmpfs at " + target.string() + ": " + errno_text(errno));
    }
    return {};
  }

  Status mount_overlay(const std::vector<std::filesystem::path>& lowers, const std::filesystem::path& upper,
                       const std::filesystem::path& work, const std::filesystem::path& target) override {
    if (lowers.empty()) return fail(Errc::internal, "overlay at " + target.string() + " without a lower layer");
    std::string options = "lowerdir=";
    for (std::size_t i = 0; i < lowers.size(); ++i) {
      if (auto ok = check_option_path(lowers[i]); !ok) return ok;
      options += (i ? ":" : "") + lowers[i].string();
    }
    if (auto ok = check_option_path(upper); !ok) return ok;
    if (auto ok = check_option_path(work); !ok) return ok;
    // index=off: during a switch the old and the new union share the upper dir for a moment,
    // which overlayfs refuses (EBUSY) only with the inodes index on.
    options += ",upperdir=" + upper.string() + ",workdir=" + work.string() + ",index=off";
    if (options.size() >= 4096) {  // mount(2) copies one page of options
      return fail(Errc::config, "overlay options for " + std::to_string(lowers.size()) + " layers exceed a page",
                  "attach fewer modules or use a shorter run directory");
    }
    if (::mount("cairn-modules", target.c_str(), "overlay", MS_NODEV, options.c_str()) != 0) {
      return fail(Errc::io, "mount overlay at " + target.string() + " (" + options + "): " + errno_text(errno),
                  "see the kernel log (dmesg) for overlayfs' reason");
    }
    return {};
  }

  Status make_private_mount(const std::filesystem::path& dir) override {
    auto mounted = is_mount_point(dir);
    if (!mounted) return fail(mounted.error());
    if (!*mounted && ::mount(dir.c_str(), dir.c_str(), nullptr, MS_BIND, nullptr) != 0) {
      return fail(Errc::io, "bind " + dir.string() + " onto itself: " + errno_text(errno));
    }
    if (::mount(nullptr, dir.c_str(), nullptr, MS_PRIVATE, nullptr) != 0) {
      return fail(Errc::io, "make " + dir.string() + " a private mount: " + errno_text(errno));
    }
    return {};
  }

  Status move_mount(const std::filesystem::path& from, const std::filesystem::path& to, bool beneath) override {
    const unsigned flags = beneath ? MOVE_MOUNT_BENEATH : 0;
    if (::move_mount(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags) != 0) {
      const int err = errno;
      return fail(Errc::io, std::string("move mount ") + from.string() + (beneath ? " beneath " : " to ") + to.string() + ": " + errno_text(err),
                  beneath && err == EINVAL ? "the kernel needs MOVE_MOUNT_BENEATH (Linux 6.5 or newer)" : "");
    }
    return {};
  }

  Status unmount(const std::filesystem::path& target, bool lazy) override {
    if (::umount2(target.c_str(), UMOUNT_NOFOLLOW | (lazy ? MNT_DETACH : 0)) != 0) {
      return fail(Errc::io, "unmount " + target.string() + ": " + errno_text(errno),
                  errno == EBUSY ? "a process uses it (fuser -m " + target.string() + ")" : "");
    }
    return {};
  }

  Result<bool> is_mount_point(const std::filesystem::path& target) override {
    auto text = read_file(root_ / "proc/self/mountinfo", kMaxMountinfoBytes);
    if (!text) return fail(text.error());
    std::error_code ec;
    auto canonical = std::filesystem::weakly_canonical(target, ec);
    if (ec) canonical = target;
    for (const auto& p : parse_mount_points(*text)) {
      if (p == canonical) return true;
    }
    return false;
  }

 private:
  Root root_;
  LinuxMounterOptions options_;
  std::optional<bool> beneath_;  // probed once
};

std::string unescape_octal(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const auto d = [&](std::size_t k) { return s[i + k] >= '0' && s[i + k] <= '7'; };
      if (d(1) && d(2) && d(3)) {
        out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

}  // namespace

std::vector<std::filesystem::path> parse_mount_points(const std::string& mountinfo) {
  std::vector<std::filesystem::path> out;
  std::size_t pos = 0;
  while (pos < mountinfo.size()) {
    auto end = mountinfo.find('\n', pos);
    if (end == std::string::npos) end = mountinfo.size();
    std::string_view line(mountinfo.data() + pos, end - pos);
    pos = end + 1;
    // id parent major:minor root mountpoint ...
    std::size_t field_start = 0;
    for (int field = 0; field < 4 && field_start != std::string_view::npos; ++field) {
      field_start = line.find(' ', field_start);
      if (field_start != std::string_view::npos) ++field_start;
    }
    if (field_start == std::string_view::npos || field_start >= line.size()) continue;
    auto field_end = line.find(' ', field_start);
    out.emplace_back(unescape_octal(line.substr(field_start, field_end == std::string_view::npos ? line.size() - field_start : field_end - field_start)));
  }
  return out;
}

std::unique_ptr<Mounter> make_linux_mounter(const Root& root, LinuxMounterOptions options) {
  return std::make_unique<LinuxMounter>(root, options);
}

}  // namespace cairn::agent::modules
