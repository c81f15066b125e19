#include "identity/platform_hint.hpp"

#include <algorithm>
#include <cctype>
#include <initializer_list>

#include "common/fs.hpp"
#include "identity/placeholders.hpp"
#include "identity/text.hpp"

namespace cairn::identity {
namespace {

constexpr std::size_t kDmiMaxBytes = 4096;

std::string trimmed(std::string_view s) {
  constexpr std::string_view kSpace = std::string_view(" \t\r\n\0", 5);
  const auto first = s.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(kSpace);
  return std::string(s.substr(first, last - first + 1));
}

std::string read_host_file(const Root& root, const std::string& host_path) {
  auto content = read_file_if_exists(root / host_path, kDmiMaxBytes);
  if (!content || !*content) return {};
  return valid_utf8(trimmed(**content));
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool starts_with_nocase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && lower(s.substr(0, prefix.size())) == prefix;
}

bool contains_nocase(std::string_view s, std::string_view needle) {
  return lower(s).find(needle) != std::string::npos;
}

bool any_of(std::string_view value, std::initializer_list<std::string_view> options) {
  return std::find(options.begin(), options.end(), value) != options.end();
}

// EC2 (cloud-init ds-identify, ec2_identify_platform; AWS, "Identify EC2 Linux instances").
bool is_aws(const DmiStrings& dmi) {
  // Nitro: sys_vendor and bios_vendor "Amazon EC2".
  if (dmi.sys_vendor.starts_with("Amazon") || dmi.bios_vendor.starts_with("Amazon")) return true;
  // Xen: the BIOS version is "4.2.amazon", "4.11.amazon", ...
  if (contains_nocase(dmi.bios_version, "amazon")) return true;
  // Xen: /sys/hypervisor/uuid begins with "ec2" (ds-identify's first test).
  if (starts_with_nocase(dmi.hypervisor_uuid, "ec2")) return true;
  // Xen: product_uuid begins with "ec2" (or its byte-swapped form). ds-identify wants the
  // product_serial to agree; a Xen sys_vendor is as strong, and is what EC2 Xen shows.
  if (has_ec2_uuid_prefix(dmi.product_uuid)) {
    return starts_with_nocase(dmi.product_serial, "ec2") || dmi.sys_vendor == "Xen";
  }
  return false;
}

// GCE (ds-identify dscheck_GCE): product_name, or the serial when the name is missing.
bool is_gcp(const DmiStrings& dmi) {
  return dmi.product_name == "Google Compute Engine" || dmi.sys_vendor == "Google" ||
         dmi.bios_vendor == "Google" || dmi.product_serial.starts_with("GoogleCloud-");
}

// OpenStack (ds-identify dscheck_OpenStack): Nova's product name, or the asset tag that
// OpenStack-derived public clouds set instead.
bool is_openstack(const DmiStrings& dmi) {
  return any_of(dmi.product_name, {"OpenStack Nova", "OpenStack Compute"}) ||
         any_of(dmi.chassis_asset_tag, {"OpenStack Nova", "OpenStack Compute", "OpenTelekomCloud",
                                        "SAP CCloud VM", "HUAWEICLOUD"});
}

}  // namespace

bool is_cloud_name(std::string_view name) {
  return std::find(kClouds.begin(), kClouds.end(), name) != kClouds.end();
}

bool PlatformHint::names(std::string_view cloud) const {
  return std::find(clouds.begin(), clouds.end(), cloud) != clouds.end();
}

std::string PlatformHint::platform() const {
  if (clouds.size() == 1) return clouds.front();
  if (dmi.sys_vendor.starts_with("QEMU")) return "qemu";
  return "unknown";
}

bool has_ec2_uuid_prefix(std::string_view text) {
  if (text.size() < 8) return false;
  const auto first = lower(text.substr(0, 8));
  // ec2xxxxx stored little-endian reads xxxx2xec: bytes "ec" last, "2x" before them.
  return first.starts_with("ec2") || (first[4] == '2' && first.substr(6, 2) == "ec");
}

// The strings and tests are those of cloud-init's tools/ds-identify (dscheck_Ec2,
// dscheck_GCE, dscheck_Azure, dscheck_DigitalOcean, dscheck_Hetzner, dscheck_OpenStack):
// https://github.com/canonical/cloud-init/blob/main/tools/ds-identify
std::vector<std::string> clouds_from_dmi(const DmiStrings& dmi) {
  std::vector<std::string> out;
  if (is_aws(dmi)) out.emplace_back("aws");
  if (is_gcp(dmi)) out.emplace_back("gcp");
  // Azure: every VM carries this chassis asset tag (Microsoft's documented Azure marker).
  if (dmi.chassis_asset_tag == "7783-7084-3265-9085-8269-3286-77") out.emplace_back("azure");
  if (dmi.sys_vendor == "DigitalOcean") out.emplace_back("digitalocean");
  if (dmi.sys_vendor == "Hetzner") out.emplace_back("hetzner");
  if (is_openstack(dmi)) out.emplace_back("openstack");
  return out;
}

PlatformHint read_platform_hint(const Root& root) {
  PlatformHint hint;
  const auto dmi = [&](const char* name, std::string& field) {
    field = read_host_file(root, std::string("sys/class/dmi/id/") + name);
    if (!field.empty() && is_placeholder_dmi_string(field)) {
      hint.notes.push_back(std::string("DMI ") + name + " '" + field +
                           "' is a firmware placeholder: ignored");
      field.clear();
    }
  };
  dmi("sys_vendor", hint.dmi.sys_vendor);
  dmi("product_name", hint.dmi.product_name);
  dmi("chassis_asset_tag", hint.dmi.chassis_asset_tag);
  dmi("bios_vendor", hint.dmi.bios_vendor);
  dmi("bios_version", hint.dmi.bios_version);
  dmi("product_serial", hint.dmi.product_serial);
  hint.dmi.product_uuid = read_host_file(root, "sys/class/dmi/id/product_uuid");
  hint.dmi.hypervisor_uuid = read_host_file(root, "sys/hypervisor/uuid");
  if (auto uuid = parse_uuid(hint.dmi.product_uuid)) {
    if (auto why = placeholder_uuid_reason(*uuid)) {
      hint.notes.push_back("DMI product_uuid " + uuid->str() + " is a firmware placeholder (" +
                           *why + "): not used as the node UUID");
    } else {
      hint.product_uuid = *uuid;
    }
  }
  hint.clouds = clouds_from_dmi(hint.dmi);
  return hint;
}

}  // namespace cairn::identity
