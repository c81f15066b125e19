// The sources that read the host: kernel command line, fw-cfg, DMI, local identity.json.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include "common/fs.hpp"
#include "identity/cascade.hpp"
#include "tests/unit/identity/fake_host.hpp"
#include "tests/unit/identity/helpers.hpp"

using cairn::identity::Outcome;
using cairn::test::attempt_of;
using cairn::test::contains;
using cairn::test::FakeHost;
using cairn::test::run_cascade;

namespace {
constexpr const char* kUuidA = "6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3c4d";
constexpr const char* kUuidB = "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d";
}  // namespace

TEST_CASE("cairn.id= on the kernel command line answers first") {
  FakeHost host;
  host.cmdline(std::string("console=ttyS0 cairn.id=") + kUuidA + " quiet");
  host.fw_cfg(kUuidB);
  host.dmi("product_uuid", kUuidB);
  auto d = run_cascade(host.config());
  REQUIRE(d.identity);
  CHECK(d.identity->uuid.str() == kUuidA);
  CHECK(d.identity->source == "cmdline");
  CHECK(attempt_of(d, "cmdline").outcome == Outcome::answered);
  CHECK(attempt_of(d, "fw_cfg").outcome == Outcome::skipped);
  CHECK(contains(attempt_of(d, "fw_cfg").reason, "cmdline answered first"));
  CHECK(d.attempts.size() == 10);  // every source is listed, in order
  CHECK_FALSE(std::filesystem::exists(host.identity_file()));
}

TEST_CASE("a bad cairn.id= fails with the reason and the cascade moves on") {
  struct Case {
    std::string cmdline;
    std::string reason;
  };
  const Case cases[] = {
      {"cairn.id=abc", "not a UUID ('abc')"},
      {"cairn.id=", "empty"},
      {"cairn.id=00000000-0000-0000-0000-000000000000", "nil UUID"},
      {"cairn.id=ffffffff-ffff-ffff-ffff-ffffffffffff", "all-FF"},
      {std::string("cairn.id=") + kUuidA + " cairn.id=zz", "not a UUID ('zz')"},  // last wins
  };
  for (const auto& c : cases) {
    CAPTURE(c.cmdline);
    FakeHost host;
    host.cmdline(c.cmdline);
    host.fw_cfg(kUuidB);
    auto d = run_cascade(host.config());
    const auto& a = attempt_of(d, "cmdline");
    CHECK(a.outcome == Outcome::failed);
    CHECK(contains(a.reason, c.reason));
    CHECK(contains(a.reason, "fix the boot loader entry"));
    REQUIRE(d.identity);
    CHECK(d.identity->source == "fw_cfg");
  }
}

TEST_CASE("no /proc/cmdline or no cairn.id= is a skip, not a failure") {
  FakeHost host;
  auto d = run_cascade(host.config());
  CHECK(attempt_of(d, "cmdline").outcome == Outcome::skipped);
  host.cmdline("quiet");
  d = run_cascade(host.config());
  CHECK(attempt_of(d, "cmdline").outcome == Outcome::skipped);
  CHECK(contains(attempt_of(d, "cmdline").reason, "no cairn.id="));
}

TEST_CASE("the QEMU fw-cfg entry answers, with platform qemu") {
  FakeHost host;
  host.fw_cfg(std::string(kUuidA) + "\n");
  host.dmi("product_uuid", kUuidB);
  auto d = run_cascade(host.config());
  REQUIRE(d.identity);
  CHECK(d.identity->source == "fw_cfg");
  CHECK(d.identity->platform == "qemu");
  CHECK(d.identity->uuid.str() == kUuidA);
}

TEST_CASE("a bad fw-cfg entry fails with the reason and the cascade moves on") {
  struct Case {
    std::string content;
    std::string reason;
  };
  const Case cases[] = {
      {"", "empty"},
      {"abc", "not a UUID ('abc'); fix the -fw_cfg string"},
      {"00000000-0000-0000-0000-000000000000", "nil UUID"},
      {std::string(5000, 'a'), "larger than the limit"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.reason);
    FakeHost host;
    host.fw_cfg(c.content);
    host.dmi("product_uuid", kUuidB);
    auto d = run_cascade(host.config());
    const auto& a = attempt_of(d, "fw_cfg");
    CHECK(a.outcome == Outcome::failed);
    CHECK(contains(a.reason, "fw-cfg entry opt/org.cairn/instance_uuid"));
    CHECK(contains(a.reason, c.reason));
    REQUIRE(d.identity);
    CHECK(d.identity->source == "dmi");
  }
}

TEST_CASE("DMI product_uuid answers when nothing earlier does") {
  FakeHost host;
  host.dmi("product_uuid", "6F1C1B8E-3C39-4D2B-9A51-0D8F1A2B3C4D");
  auto d = run_cascade(host.config());
  REQUIRE(d.identity);
  CHECK(d.identity->source == "dmi");
  CHECK(d.identity->uuid.str() == kUuidA);
  CHECK(attempt_of(d, "local").outcome == Outcome::skipped);
}

TEST_CASE("all-zero, all-FF, empty and malformed DMI UUIDs fail and fall to the local identity") {
  struct Case {
    std::string content;
    std::string reason;
  };
  const Case cases[] = {
      {"00000000-0000-0000-0000-000000000000", "nil UUID"},
      {"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "all-FF"},
      {"", "empty"},
      {"Not Settable", "not a UUID"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.content);
    FakeHost host;
    host.write("sys/class/dmi/id/product_uuid", c.content);
    auto d = run_cascade(host.config());
    const auto& a = attempt_of(d, "dmi");
    CHECK(a.outcome == Outcome::failed);
    CHECK(contains(a.reason, "DMI product_uuid: "));
    CHECK(contains(a.reason, c.reason));
    REQUIRE(d.identity);
    CHECK(d.identity->source == "local");
  }
}

TEST_CASE("the local identity is created once and stable across runs") {
  FakeHost host;
  auto first = run_cascade(host.config());
  REQUIRE(first.identity);
  CHECK(first.identity->source == "local");
  CHECK(contains(attempt_of(first, "local").reason, "created"));
  REQUIRE(std::filesystem::exists(host.identity_file()));
  CHECK((std::filesystem::status(host.identity_file()).permissions() & std::filesystem::perms::all) ==
        std::filesystem::perms(0644));

  auto second = run_cascade(host.config());
  REQUIRE(second.identity);
  CHECK(second.identity->uuid == first.identity->uuid);
  CHECK(contains(attempt_of(second, "local").reason, "kept in"));
  CHECK((first.identity->uuid.bytes[6] >> 4) == 4);  // a random (v4) UUID
}

TEST_CASE("an empty persist_dir means <root>/persist") {
  FakeHost host;
  auto config = host.config();
  config.persist_dir.clear();
  auto d = run_cascade(config);
  REQUIRE(d.identity);
  CHECK(std::filesystem::exists(host.identity_file()));
}

TEST_CASE("a corrupt identity.json is kept aside, never overwritten, and a new one made") {
  const std::string cases[] = {
      "",
      "{not json",
      R"({"uuid": "abc"})",
      R"({"uuid": "00000000-0000-0000-0000-000000000000"})",
      R"(["6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3c4d"])",
      std::string(70 * 1024, ' '),
  };
  for (const auto& content : cases) {
    CAPTURE(content.substr(0, 40));
    FakeHost host;
    host.write("persist/cairn/identity.json", content);
    auto d = run_cascade(host.config());
    REQUIRE(d.identity);
    CHECK(d.identity->source == "local");
    const auto& a = attempt_of(d, "local");
    CHECK(a.outcome == Outcome::answered);
    CHECK(contains(a.reason, "was corrupt"));
    CHECK(contains(a.reason, "kept aside as identity.json.corrupt-"));

    int aside = 0;
    for (const auto& e : std::filesystem::directory_iterator(host.identity_file().parent_path())) {
      if (e.path().filename().string().starts_with("identity.json.corrupt-")) {
        ++aside;
        CHECK(cairn::read_file(e.path(), 1 << 20).value() == content);  // byte for byte
      }
    }
    CHECK(aside == 1);
    // The new file is a good identity that the next run keeps.
    auto again = run_cascade(host.config());
    REQUIRE(again.identity);
    CHECK(again.identity->uuid == d.identity->uuid);
  }
}

TEST_CASE("an unwritable persist directory fails with an I/O error") {
  FakeHost host;
  host.write("persist", "a file where the directory should be");
  auto d = run_cascade(host.config());
  CHECK_FALSE(d.identity);
  REQUIRE(d.error);
  CHECK(d.error->code == cairn::Errc::io);
  CHECK(attempt_of(d, "local").outcome == Outcome::failed);
  CHECK(contains(d.error->hint, "persist"));
}
