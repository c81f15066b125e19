// Mounter: the privileged boundary of the modules domain (loop devices, EROFS, overlayfs,
// moving mounts). One real implementation (mount_linux.cpp) and a fake in the unit tests,
// so the union's rules are tested without root. Every path given here is a host path the
// caller already resolved through its Root.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "common/root.hpp"

namespace cairn::agent::modules {

class Mounter {
 public:
  virtual ~Mounter() = default;

  // Attaches `image` read-only to a free loop device (LOOP_CTL_GET_FREE + LOOP_CONFIGURE,
  // read-only, autoclear) and mounts it as EROFS read-only at `target`. The loop device lives
  // exactly as long as the mount: on any failure nothing stays attached.
  virtual Status mount_image(const std::filesystem::path& image, const std::filesystem::path& target) = 0;

  // A tmpfs at `target` (the ephemeral upper layer).
  virtual Status mount_tmpfs(const std::filesystem::path& target) = 0;

  // overlayfs at `target`; `lowers` top-most first (overlayfs' lowerdir order).
  virtual Status mount_overlay(const std::vector<std::filesystem::path>& lowers, const std::filesystem::path& upper,
                               const std::filesystem::path& work, const std::filesystem::path& target) = 0;

  // Binds `dir` onto itself and makes it a private mount, so mounts below it can be moved
  // (MS_MOVE refuses a mount whose parent is shared, as / is under systemd).
  virtual Status make_private_mount(const std::filesystem::path& dir) = 0;

  // Moves the mount at `from` to `to`. With `beneath`, `to` already carries a mount and the
  // moved one goes beneath it (MOVE_MOUNT_BENEATH, Linux 6.5): unmounting the top then
  // reveals it, so a reader of `to` sees the old tree or the new one, never an empty
  // directory.
  virtual Status move_mount(const std::filesystem::path& from, const std::filesystem::path& to, bool beneath) = 0;

  // Unmounts the top mount at `target`; `lazy` detaches it (MNT_DETACH) when it may be busy.
  virtual Status unmount(const std::filesystem::path& target, bool lazy) = 0;

  // Whether a mount sits on `target` (from /proc/self/mountinfo).
  virtual Result<bool> is_mount_point(const std::filesystem::path& target) = 0;

  // Whether move_mount(MOVE_MOUNT_BENEATH) works here (Linux 6.5+). Without it the union
  // switches through generation directories and a symlink swapped with rename(2) (union.hpp).
  virtual bool can_move_beneath() { return true; }
};

struct LinuxMounterOptions {
  // false: behave as a kernel without MOVE_MOUNT_BENEATH (tests of the fallback on new kernels).
  bool allow_move_beneath = true;
};

// The real one; `root` locates /dev/loop-control, /dev/loopN and /proc/self/mountinfo.
// MOVE_MOUNT_BENEATH support is probed once, on first use.
std::unique_ptr<Mounter> make_linux_mounter(const Root& root, LinuxMounterOptions options = {});

// Mount points of a mountinfo text (the fifth field, octal escapes decoded), in file order.
std::vector<std::filesystem::path> parse_mount_points(const std::string& mountinfo);

}  // namespace cairn::agent::modules
