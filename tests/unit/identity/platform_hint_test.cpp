// The platform hint on cloud-init ds-identify's evidence: DMI strings, product_serial,
// /sys/hypervisor/uuid and product_uuid prefixes.
#include <doctest/doctest.h>

#include "common/json.hpp"
#include "identity/platform_hint.hpp"
#include "tests/unit/identity/fake_host.hpp"
#include "tests/unit/identity/helpers.hpp"

using cairn::identity::clouds_from_dmi;
using cairn::identity::DmiStrings;
using cairn::test::contains;

namespace {

// The evidence a row of the table sets, by field name; the rest is empty.
using Dmi = std::vector<std::pair<std::string, std::string>>;

DmiStrings dmi_of(const Dmi& fields) {
  DmiStrings d;
  for (const auto& [name, value] : fields) {
    std::string* field = name == "sys_vendor"          ? &d.sys_vendor
                         : name == "product_name"      ? &d.product_name
                         : name == "chassis_asset_tag" ? &d.chassis_asset_tag
                         : name == "bios_vendor"       ? &d.bios_vendor
                         : name == "bios_version"      ? &d.bios_version
                         : name == "product_serial"    ? &d.product_serial
                         : name == "product_uuid"      ? &d.product_uuid
                         : name == "hypervisor_uuid"   ? &d.hypervisor_uuid
                                                       : nullptr;
    REQUIRE_MESSAGE(field != nullptr, "no DMI field " << name);
    *field = value;
  }
  return d;
}

}  // namespace

TEST_CASE("the evidence names the clouds that can be present, as ds-identify reads it") {
  struct Case {
    const char* what;
    Dmi dmi;
    std::vector<std::string> clouds;
  };
  const Case cases[] = {
      {"nothing", {}, {}},
      {"QEMU", {{"sys_vendor", "QEMU"}, {"product_name", "Standard PC (Q35 + ICH9, 2009)"}, {"bios_vendor", "SeaBIOS"}}, {}},
      {"bare metal", {{"sys_vendor", "Dell Inc."}, {"product_name", "PowerEdge R640"}, {"bios_vendor", "Dell Inc."}}, {}},
      // AWS
      {"EC2 Nitro", {{"sys_vendor", "Amazon EC2"}, {"product_name", "m5.large"}, {"chassis_asset_tag", "Amazon EC2"}, {"bios_vendor", "Amazon EC2"}}, {"aws"}},
      {"EC2 Xen, BIOS version", {{"sys_vendor", "Xen"}, {"product_name", "HVM domU"}, {"bios_vendor", "Xen"}, {"bios_version", "4.2.amazon"}}, {"aws"}},
      {"EC2 Xen, hypervisor uuid only", {{"hypervisor_uuid", "ec2e1916-9099-7caf-fd21-012345678901"}}, {"aws"}},
      {"EC2 Xen, product_uuid and serial", {{"product_serial", "ec2e1916-9099-7caf-fd21-012345678901"}, {"product_uuid", "EC2E1916-9099-7CAF-FD21-012345678901"}}, {"aws"}},
      {"EC2 Xen, byte-swapped product_uuid", {{"sys_vendor", "Xen"}, {"product_name", "HVM domU"}, {"product_uuid", "45E12AEC-DCD1-B213-94ED-012345ABCDEF"}}, {"aws"}},
      {"EC2 Xen, uuid prefix on Xen", {{"sys_vendor", "Xen"}, {"product_uuid", "EC2AE145-D1DC-13B2-94ED-012345ABCDEF"}}, {"aws"}},
      {"Xen elsewhere", {{"sys_vendor", "Xen"}, {"product_name", "HVM domU"}, {"bios_version", "4.11.2"}, {"product_uuid", "6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3c4d"}}, {}},
      {"ec2 prefix alone is chance", {{"sys_vendor", "Dell Inc."}, {"product_uuid", "EC2E1916-9099-7CAF-FD21-012345678901"}}, {}},
      {"non-ec2 hypervisor uuid", {{"hypervisor_uuid", "6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3c4d"}}, {}},
      // GCE
      {"GCE", {{"sys_vendor", "Google"}, {"product_name", "Google Compute Engine"}, {"bios_vendor", "Google"}}, {"gcp"}},
      {"GCE by serial only", {{"product_serial", "GoogleCloud-5B1C9F6E2A4D7C3B"}}, {"gcp"}},
      // Azure
      {"Azure", {{"sys_vendor", "Microsoft Corporation"}, {"product_name", "Virtual Machine"}, {"chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77"}, {"bios_vendor", "Microsoft Corporation"}}, {"azure"}},
      {"Hyper-V on premises", {{"sys_vendor", "Microsoft Corporation"}, {"product_name", "Virtual Machine"}}, {}},
      {"DigitalOcean", {{"sys_vendor", "DigitalOcean"}, {"product_name", "Droplet"}, {"bios_vendor", "DigitalOcean"}}, {"digitalocean"}},
      {"Hetzner", {{"sys_vendor", "Hetzner"}, {"product_name", "vServer"}, {"bios_vendor", "Hetzner"}}, {"hetzner"}},
      // OpenStack and the clouds derived from it
      {"OpenStack Nova", {{"sys_vendor", "OpenStack Foundation"}, {"product_name", "OpenStack Nova"}, {"bios_vendor", "SeaBIOS"}}, {"openstack"}},
      {"RDO", {{"sys_vendor", "RDO"}, {"product_name", "OpenStack Compute"}}, {"openstack"}},
      {"Nova by asset tag", {{"sys_vendor", "QEMU"}, {"chassis_asset_tag", "OpenStack Nova"}}, {"openstack"}},
      {"Compute by asset tag", {{"sys_vendor", "QEMU"}, {"chassis_asset_tag", "OpenStack Compute"}}, {"openstack"}},
      {"Open Telekom Cloud", {{"sys_vendor", "QEMU"}, {"chassis_asset_tag", "OpenTelekomCloud"}}, {"openstack"}},
      {"SAP Converged Cloud", {{"sys_vendor", "QEMU"}, {"chassis_asset_tag", "SAP CCloud VM"}}, {"openstack"}},
      {"Huawei Cloud", {{"sys_vendor", "QEMU"}, {"chassis_asset_tag", "HUAWEICLOUD"}}, {"openstack"}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    CHECK(clouds_from_dmi(dmi_of(c.dmi)) == c.clouds);
  }
}

TEST_CASE("an EC2 UUID prefix is read as printed or with its first field byte-swapped") {
  using cairn::identity::has_ec2_uuid_prefix;
  CHECK(has_ec2_uuid_prefix("ec2e1916-9099-7caf-fd21-012345678901"));
  CHECK(has_ec2_uuid_prefix("EC2E1916-9099-7CAF-FD21-012345678901"));
  CHECK(has_ec2_uuid_prefix("45E12AEC-DCD1-B213-94ED-012345ABCDEF"));  // AWS's own example
  CHECK_FALSE(has_ec2_uuid_prefix("45E12AED-DCD1-B213-94ED-012345ABCDEF"));
  CHECK_FALSE(has_ec2_uuid_prefix("6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3c4d"));
  CHECK_FALSE(has_ec2_uuid_prefix("ec2"));
}

TEST_CASE("the platform hint reads a fake sysfs tree and keeps only a real product_uuid") {
  cairn::test::FakeHost host;
  auto empty = cairn::identity::read_platform_hint(host.root());
  CHECK(empty.clouds.empty());
  CHECK_FALSE(empty.product_uuid);
  CHECK(empty.platform() == "unknown");
  CHECK(empty.notes.empty());

  host.dmi("sys_vendor", "Amazon EC2");
  host.dmi("product_uuid", "EC2E1916-9099-7CAF-FD21-012345678901");
  auto hint = cairn::identity::read_platform_hint(host.root());
  CHECK(hint.clouds == std::vector<std::string>{"aws"});
  CHECK(hint.platform() == "aws");
  REQUIRE(hint.product_uuid);
  CHECK(hint.product_uuid->str() == "ec2e1916-9099-7caf-fd21-012345678901");

  for (const char* placeholder : {"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
                                  "03000200-0400-0500-0006-000700080009"}) {
    CAPTURE(placeholder);
    host.dmi("product_uuid", placeholder);
    auto h = cairn::identity::read_platform_hint(host.root());
    CHECK_FALSE(h.product_uuid);
    REQUIRE(h.notes.size() == 1);
    CHECK(contains(h.notes[0], "is a firmware placeholder"));
  }
}

TEST_CASE("an older Xen-based EC2 instance gets the aws hint from /sys/hypervisor/uuid") {
  cairn::test::FakeHost host;
  host.dmi("sys_vendor", "Xen");
  host.dmi("product_name", "HVM domU");
  host.dmi("bios_vendor", "Xen");
  host.write("sys/hypervisor/uuid", "ec2e1916-9099-7caf-fd21-012345678901\n");
  auto hint = cairn::identity::read_platform_hint(host.root());
  CHECK(hint.clouds == std::vector<std::string>{"aws"});
  CHECK(hint.dmi.hypervisor_uuid == "ec2e1916-9099-7caf-fd21-012345678901");
}

TEST_CASE("placeholder DMI strings are ignored with a note, never taken as evidence") {
  cairn::test::FakeHost host;
  host.dmi("sys_vendor", "To be filled by O.E.M.");
  host.dmi("product_name", "Default string");
  host.dmi("chassis_asset_tag", "Not Specified");
  host.dmi("product_serial", "Not Settable");
  host.dmi("bios_vendor", "American Megatrends Inc.");
  auto hint = cairn::identity::read_platform_hint(host.root());
  CHECK(hint.dmi.sys_vendor.empty());
  CHECK(hint.dmi.product_name.empty());
  CHECK(hint.dmi.chassis_asset_tag.empty());
  CHECK(hint.dmi.product_serial.empty());
  CHECK(hint.dmi.bios_vendor == "American Megatrends Inc.");
  REQUIRE(hint.notes.size() == 4);
  CHECK(hint.notes[0] == "DMI sys_vendor 'To be filled by O.E.M.' is a firmware placeholder: ignored");
  CHECK(contains(hint.notes[3], "product_serial 'Not Settable'"));
}

TEST_CASE("DMI strings that are not UTF-8 are read as valid UTF-8") {
  cairn::test::FakeHost host;
  host.dmi("sys_vendor", "Vendor \xff\xfe");
  host.dmi("product_name", "\xc3\x28 board");
  auto hint = cairn::identity::read_platform_hint(host.root());
  CHECK(hint.dmi.sys_vendor == "Vendor \xef\xbf\xbd\xef\xbf\xbd");
  CHECK(hint.dmi.product_name == "\xef\xbf\xbd( board");
  CHECK_NOTHROW((void)cairn::Json(hint.dmi.sys_vendor).dump());  // strict dump throws on bad UTF-8
}
