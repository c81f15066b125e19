// The DMI platform hint: which clouds can be present, read from the SMBIOS strings the
// kernel exports under /sys/class/dmi/id (the idea of cloud-init's ds-identify), so the
// cascade never waits on a metadata server that cannot exist.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/root.hpp"
#include "common/uuid.hpp"

namespace cairn::identity {

// Every cloud source, in cascade order.
inline constexpr std::array<std::string_view, 6> kClouds = {
    "aws", "gcp", "azure", "digitalocean", "hetzner", "openstack"};
bool is_cloud_name(std::string_view name);

struct DmiStrings {
  std::string sys_vendor;
  std::string product_name;
  std::string chassis_asset_tag;
  std::string bios_vendor;
};

struct PlatformHint {
  DmiStrings dmi;                     // trimmed; empty when absent
  std::optional<Uuid> product_uuid;   // DMI product_uuid when readable and a real identity
  std::vector<std::string> clouds;    // clouds the DMI strings name, in cascade order
  [[nodiscard]] bool names(std::string_view cloud) const;
  // "aws", ... when exactly one cloud is named; "qemu" for QEMU's vendor; else "unknown".
  [[nodiscard]] std::string platform() const;
};

// The clouds the strings point at (pure: table-tested).
std::vector<std::string> clouds_from_dmi(const DmiStrings& dmi);

// Reads <root>/sys/class/dmi/id/{sys_vendor,product_name,chassis_asset_tag,bios_vendor,
// product_uuid}. Missing or unreadable files are empty: a hint never fails.
PlatformHint read_platform_hint(const Root& root);

}  // namespace cairn::identity
