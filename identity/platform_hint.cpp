#include "identity/platform_hint.hpp"

#include <algorithm>

#include "common/fs.hpp"

namespace cairn::identity {
namespace {

constexpr std::size_t kDmiMaxBytes = 4096;

std::string trimmed(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n";
  const auto first = s.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(kSpace);
  return std::string(s.substr(first, last - first + 1));
}

std::string read_dmi(const Root& root, std::string_view name) {
  auto content = read_file_if_exists(root / ("sys/class/dmi/id/" + std::string(name)), kDmiMaxBytes);
  if (!content || !*content) return {};
  return trimmed(**content);
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.starts_with(prefix); }

}  // namespace

bool is_cloud_name(std::string_view name) {
  return std::find(kClouds.begin(), kClouds.end(), name) != kClouds.end();
}

bool PlatformHint::names(std::string_view cloud) const {
  return std::find(clouds.begin(), clouds.end(), cloud) != clouds.end();
}

std::string PlatformHint::platform() const {
  if (clouds.size() == 1) return clouds.front();
  if (starts_with(dmi.sys_vendor, "QEMU")) return "qemu";
  return "unknown";
}

// The strings are those cloud-init's tools/ds-identify matches (dscheck_Ec2, dscheck_GCE,
// dscheck_Azure, dscheck_DigitalOcean, dscheck_Hetzner, dscheck_OpenStack):
// https://github.com/canonical/cloud-init/blob/main/tools/ds-identify
std::vector<std::string> clouds_from_dmi(const DmiStrings& dmi) {
  std::vector<std::string> out;
  // EC2: Nitro reports sys_vendor "Amazon EC2"; Xen-era instances bios_vendor "Amazon" or
  // a BIOS version string with "amazon" (AWS: "Identify EC2 Linux instances").
  if (starts_with(dmi.sys_vendor, "Amazon") || starts_with(dmi.bios_vendor, "Amazon")) {
    out.emplace_back("aws");
  }
  // GCE: product_name "Google Compute Engine", sys_vendor and bios_vendor "Google".
  if (dmi.product_name == "Google Compute Engine" || dmi.sys_vendor == "Google" ||
      dmi.bios_vendor == "Google") {
    out.emplace_back("gcp");
  }
  // Azure: every VM carries this chassis asset tag (Microsoft's documented Azure marker).
  if (dmi.chassis_asset_tag == "7783-7084-3265-9085-8269-3286-77") out.emplace_back("azure");
  if (dmi.sys_vendor == "DigitalOcean") out.emplace_back("digitalocean");
  if (dmi.sys_vendor == "Hetzner") out.emplace_back("hetzner");
  // OpenStack Nova sets product_name; some public OpenStack clouds only the asset tag.
  if (dmi.product_name == "OpenStack Nova" || dmi.product_name == "OpenStack Compute" ||
      dmi.chassis_asset_tag == "OpenStack Nova" || dmi.chassis_asset_tag == "OpenTelekomCloud" ||
      dmi.chassis_asset_tag == "HUAWEICLOUD") {
    out.emplace_back("openstack");
  }
  return out;
}

PlatformHint read_platform_hint(const Root& root) {
  PlatformHint hint;
  hint.dmi.sys_vendor = read_dmi(root, "sys_vendor");
  hint.dmi.product_name = read_dmi(root, "product_name");
  hint.dmi.chassis_asset_tag = read_dmi(root, "chassis_asset_tag");
  hint.dmi.bios_vendor = read_dmi(root, "bios_vendor");
  if (auto uuid = parse_identity_uuid(read_dmi(root, "product_uuid"))) hint.product_uuid = *uuid;
  hint.clouds = clouds_from_dmi(hint.dmi);
  return hint;
}

}  // namespace cairn::identity
