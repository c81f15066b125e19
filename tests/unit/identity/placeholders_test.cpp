// Firmware placeholders: UUIDs and DMI strings that cannot name or place a machine.
#include <doctest/doctest.h>

#include "identity/placeholders.hpp"
#include "identity/text.hpp"
#include "tests/unit/identity/helpers.hpp"

using cairn::identity::is_placeholder_dmi_string;
using cairn::identity::placeholder_uuid_reason;
using cairn::test::contains;

namespace {
cairn::Uuid uuid(const std::string& text) { return cairn::parse_uuid(text).value(); }
}  // namespace

TEST_CASE("placeholder DMI UUIDs are recognised by their shape, in either byte order") {
  struct Case {
    const char* uuid;
    const char* shape;  // a word the reason must carry
  };
  const Case cases[] = {
      {"00000000-0000-0000-0000-000000000000", "every byte is 0x00"},
      {"ffffffff-ffff-ffff-ffff-ffffffffffff", "every byte is 0xff"},
      {"fefefefe-fefe-fefe-fefe-fefefefefefe", "every byte is 0xfe"},
      {"ffffff00-ffff-ffff-ffff-ffffffffffff", "15 of 16 bytes are 0xff"},
      {"00000000-0000-0000-0000-0cc47a1b2c3d", "10 of 16 bytes are 0x00"},
      // The widely reported AMI default, as the kernel prints it and in raw byte order.
      {"03000200-0400-0500-0006-000700080009", "sequential 16-bit words, with the first three fields byte-swapped"},
      {"00020003-0004-0005-0006-000700080009", "sequential 16-bit words"},
      // The same counter with junk between the counting bytes.
      {"03d40274-0435-05dc-8506-010700080009", "every other byte counts up, with the first three fields byte-swapped"},
      {"00010203-0405-0607-0809-0a0b0c0d0e0f", "sequential bytes"},
      {"03020100-0504-0706-0809-0a0b0c0d0e0f", "sequential bytes, with the first three fields byte-swapped"},
      {"00000001-0000-0002-0000-000300000004", "12 of 16 bytes are 0x00"},
      {"10203040-1121-3141-1222-324213233343", "sequential 32-bit words"},
      {"01234567-89ab-cdef-0123-456789abcdef", "sequential hex digits"},
      {"12345678-1234-5678-1234-567812345678", "a pattern of 8 hex digits, repeated"},
      {"deadbeef-dead-beef-dead-beefdeadbeef", "a pattern of 8 hex digits, repeated"},
      {"abababab-abab-abab-abab-abababababab", "every byte is 0xab"},
      {"12345678-1234-5678-90ab-cddeefaabbcc", "a BIOS default shipped on many boards"},
  };
  for (const auto& c : cases) {
    const std::string text = c.uuid;
    CAPTURE(text);
    const auto why = placeholder_uuid_reason(uuid(c.uuid));
    REQUIRE(why);
    CHECK(*why == c.shape);
  }
}

TEST_CASE("real machine UUIDs are not mistaken for placeholders") {
  const char* real[] = {
      "6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3c4d",  // random (v4)
      "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d",
      "4c4c4544-0042-3510-8052-b3c04f4b4e32",  // Dell: "DELL" + service tag
      "ec2e1916-9099-7caf-fd21-012345678901",  // EC2 Xen
      "a4b8aa02-ef74-6e47-8182-f6d2ba4166a6",  // Azure Gen1 (a vmId, byte-swapped)
      "83679162-1378-4288-a2d4-70e13ec132aa",  // OpenStack Nova
      "4a3f0c12-0000-0000-0000-ac1f6b123456",  // six zero bytes, ten that vary
  };
  for (const std::string text : real) {
    CAPTURE(text);
    CHECK_FALSE(placeholder_uuid_reason(uuid(text)));
  }
}

TEST_CASE("SMBIOS byte swapping reverses the first three fields and is its own inverse") {
  const auto a = uuid("00020003-0004-0005-0006-000700080009");
  CHECK(cairn::identity::smbios_byte_swapped(a).str() == "03000200-0400-0500-0006-000700080009");
  CHECK(cairn::identity::smbios_byte_swapped(cairn::identity::smbios_byte_swapped(a)) == a);
}

TEST_CASE("placeholder DMI strings are recognised whatever their case and punctuation") {
  const char* placeholders[] = {
      "Not Settable", "Not Specified", "None", "Default string", "To be filled by O.E.M.",
      "To Be Filled By O.E.M.", "TO BE FILLED BY OEM", "Not Applicable", "Not Present",
      "System manufacturer", "System Product Name", "System Serial Number", "Unknown", "N/A",
      "0000000000", "xxxxxxxx", "........", "", "   ", "123456789", "Chassis Serial Number",
      "Type1ProductConfigId", "OEM", "Default_string",
  };
  for (const std::string s : placeholders) {
    CAPTURE(s);
    CHECK(is_placeholder_dmi_string(s));
  }
  const char* real[] = {
      "Amazon EC2",  "Google", "Microsoft Corporation", "DigitalOcean", "Hetzner", "QEMU",
      "OpenStack Nova", "7783-7084-3265-9085-8269-3286-77", "4.2.amazon", "GoogleCloud-1234",
      "Dell Inc.", "PowerEdge R640", "HUAWEICLOUD", "Xen", "ec2e1916-9099-7caf-fd21-012345678901",
  };
  for (const std::string s : real) {
    CAPTURE(s);
    CHECK_FALSE(is_placeholder_dmi_string(s));
  }
}

TEST_CASE("text from the host becomes valid UTF-8: invalid sequences replaced, NULs dropped") {
  using cairn::identity::valid_utf8;
  CHECK(valid_utf8("plain ascii") == "plain ascii");
  CHECK(valid_utf8("Müller GmbH") == "Müller GmbH");
  CHECK(valid_utf8("\xff\xfe vendor") == "\xef\xbf\xbd\xef\xbf\xbd vendor");
  CHECK(valid_utf8("a\xc3") == "a\xef\xbf\xbd");  // a truncated sequence at the end
  CHECK(valid_utf8(std::string("a\0b", 3)) == "ab");
  CHECK(contains(valid_utf8("\xed\xa0\x80"), "\xef\xbf\xbd"));  // a UTF-16 surrogate
  CHECK(valid_utf8("").empty());
}
