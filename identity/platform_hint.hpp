// The DMI platform hint: which clouds can be present, read from the SMBIOS strings the
// kernel exports under /sys/class/dmi/id and from /sys/hypervisor/uuid, on the evidence
// cloud-init's ds-identify uses, so the cascade never waits on a metadata server that
// cannot exist and never misses one that does.
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

// The host's evidence, trimmed, valid UTF-8; empty when absent or a firmware placeholder.
struct DmiStrings {
  std::string sys_vendor;
  std::string product_name;
  std::string chassis_asset_tag;
  std::string bios_vendor;
  std::string bios_version;
  std::string product_serial;
  std::string product_uuid;     // as the kernel prints it (root-only on a real host)
  std::string hypervisor_uuid;  // /sys/hypervisor/uuid: Xen guests only
};

struct PlatformHint {
  DmiStrings dmi;
  std::optional<Uuid> product_uuid;   // DMI product_uuid when readable and a real identity
  std::vector<std::string> clouds;    // clouds the evidence names, in cascade order
  std::vector<std::string> notes;     // what was ignored and why ("... is a placeholder")
  [[nodiscard]] bool names(std::string_view cloud) const;
  // "aws", ... when exactly one cloud is named; "qemu" for QEMU's vendor; else "unknown".
  [[nodiscard]] std::string platform() const;
};

// The clouds the evidence points at (pure: table-tested).
std::vector<std::string> clouds_from_dmi(const DmiStrings& dmi);

// True when `text` (a UUID as the kernel prints it, any case) begins with "ec2", or with
// its first field byte-swapped ("45e12aec-..." for ec2ae145): how EC2's Xen instances mark
// their system UUID (AWS, "Identify EC2 Linux instances").
bool has_ec2_uuid_prefix(std::string_view text);

// Reads <root>/sys/class/dmi/id/{sys_vendor,product_name,chassis_asset_tag,bios_vendor,
// bios_version,product_serial,product_uuid} and <root>/sys/hypervisor/uuid. Missing or
// unreadable files are empty: a hint never fails.
PlatformHint read_platform_hint(const Root& root);

}  // namespace cairn::identity
