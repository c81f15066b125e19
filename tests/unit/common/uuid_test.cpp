#include <doctest/doctest.h>

#include "common/uuid.hpp"

using namespace cairn;

TEST_CASE("uuid parsing accepts the canonical form in any case and refuses the rest") {
  struct Case {
    const char* text;
    bool ok;
    const char* canonical;
  };
  const Case cases[] = {
      {"4C4C4544-0042-3510-8053-B7C04F4E4B32", true, "4c4c4544-0042-3510-8053-b7c04f4e4b32"},
      {"  4c4c4544-0042-3510-8053-b7c04f4e4b32\n", true, "4c4c4544-0042-3510-8053-b7c04f4e4b32"},
      {"abc", false, ""},
      {"", false, ""},
      {"4c4c4544004235108053b7c04f4e4b32", false, ""},
      {"4c4c4544-0042-3510-8053-b7c04f4e4b3g", false, ""},
      {"4c4c4544-0042-3510-8053_b7c04f4e4b32", false, ""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    auto r = parse_uuid(c.text);
    CHECK(static_cast<bool>(r) == c.ok);
    if (r) CHECK(r->str() == c.canonical);
    if (!r) CHECK(r.error().code == Errc::data);
  }
}

TEST_CASE("nil and all-FF UUIDs cannot be an identity") {
  CHECK(parse_uuid("00000000-0000-0000-0000-000000000000"));
  CHECK_FALSE(parse_identity_uuid("00000000-0000-0000-0000-000000000000"));
  auto ff = parse_identity_uuid("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF");
  REQUIRE_FALSE(ff);
  CHECK(ff.error().message.find("placeholder") != std::string::npos);
}

TEST_CASE("random UUIDs are version 4, RFC variant and distinct") {
  const auto a = random_uuid();
  const auto b = random_uuid();
  CHECK(a != b);
  CHECK(a.str()[14] == '4');
  CHECK((a.bytes[8] & 0xc0) == 0x80);
  CHECK(parse_identity_uuid(a.str()));
}
