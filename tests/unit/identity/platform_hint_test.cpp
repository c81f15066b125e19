#include <doctest/doctest.h>

#include "identity/platform_hint.hpp"
#include "tests/unit/identity/fake_host.hpp"

using cairn::identity::clouds_from_dmi;
using cairn::identity::DmiStrings;

TEST_CASE("DMI strings name the clouds that can be present") {
  struct Case {
    DmiStrings dmi;
    std::vector<std::string> clouds;
  };
  const Case cases[] = {
      {{"", "", "", ""}, {}},
      {{"QEMU", "Standard PC (Q35 + ICH9, 2009)", "", "SeaBIOS"}, {}},
      {{"Dell Inc.", "PowerEdge R640", "", "Dell Inc."}, {}},
      {{"Amazon EC2", "m5.large", "Amazon EC2", "Amazon EC2"}, {"aws"}},
      {{"Xen", "HVM domU", "", "Amazon"}, {"aws"}},
      {{"Google", "Google Compute Engine", "", "Google"}, {"gcp"}},
      {{"Microsoft Corporation", "Virtual Machine", "7783-7084-3265-9085-8269-3286-77",
        "Microsoft Corporation"},
       {"azure"}},
      {{"Microsoft Corporation", "Virtual Machine", "", ""}, {}},  // Hyper-V on premises
      {{"DigitalOcean", "Droplet", "", "DigitalOcean"}, {"digitalocean"}},
      {{"Hetzner", "vServer", "", "Hetzner"}, {"hetzner"}},
      {{"OpenStack Foundation", "OpenStack Nova", "", "SeaBIOS"}, {"openstack"}},
      {{"RDO", "OpenStack Compute", "", ""}, {"openstack"}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.dmi.sys_vendor);
    CAPTURE(c.dmi.product_name);
    CHECK(clouds_from_dmi(c.dmi) == c.clouds);
  }
}

TEST_CASE("the platform hint reads a fake sysfs tree and keeps only a real product_uuid") {
  cairn::test::FakeHost host;
  auto empty = cairn::identity::read_platform_hint(host.root());
  CHECK(empty.clouds.empty());
  CHECK_FALSE(empty.product_uuid);
  CHECK(empty.platform() == "unknown");

  host.dmi("sys_vendor", "Amazon EC2");
  host.dmi("product_uuid", "EC2E1916-9099-7CAF-FD21-012345678901");
  auto hint = cairn::identity::read_platform_hint(host.root());
  CHECK(hint.clouds == std::vector<std::string>{"aws"});
  CHECK(hint.platform() == "aws");
  REQUIRE(hint.product_uuid);
  CHECK(hint.product_uuid->str() == "ec2e1916-9099-7caf-fd21-012345678901");

  host.dmi("product_uuid", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF");
  CHECK_FALSE(cairn::identity::read_platform_hint(host.root()).product_uuid);
}
