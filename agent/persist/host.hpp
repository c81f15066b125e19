// The real VolumeHost: disks through disk.hpp, mkfs.ext4 and e2fsck as programs (e2fsprogs),
// mount(2), /proc/self/mountinfo, /dev/mapper/control; every path through Root.
#pragma once

#include <memory>

#include "agent/persist/volume.hpp"
#include "common/clock.hpp"
#include "common/root.hpp"

namespace cairn::agent::persist {

std::unique_ptr<VolumeHost> make_system_host(const Root& root, const Clock& clock);

// Whether this kernel offers device-mapper (/dev/mapper/control, or "device-mapper" in
// /proc/misc): without it nothing can be activated.
bool device_mapper_available(const Root& root);

// The mount point's line in <root>/proc/self/mountinfo: mounted or not.
Result<bool> is_mount_point(const Root& root, const std::filesystem::path& mount_point);

}  // namespace cairn::agent::persist
