// The sources that read the host: kernel command line, fw-cfg, DMI, local identity.json.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "common/fs.hpp"
#include "common/json.hpp"
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

TEST_CASE("placeholder DMI UUIDs and strings are skipped with the reason, and the cascade moves on") {
  struct Case {
    std::string content;
    std::string reason;
  };
  const Case cases[] = {
      {"00000000-0000-0000-0000-000000000000", "every byte is 0x00"},
      {"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "every byte is 0xff"},
      {"03000200-0400-0500-0006-000700080009", "sequential 16-bit words, with the first three fields byte-swapped"},
      {"00020003-0004-0005-0006-000700080009", "sequential 16-bit words"},
      {"12345678-1234-5678-1234-567812345678", "repeated"},
      {"Not Settable", "is 'Not Settable', a firmware placeholder"},
      {"Not Present\n", "is 'Not Present', a firmware placeholder"},
      {"To be filled by O.E.M.", "is 'To be filled by O.E.M.', a firmware placeholder"},
      {"", "is '', a firmware placeholder"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.content);
    FakeHost host;
    host.write("sys/class/dmi/id/product_uuid", c.content);
    auto d = run_cascade(host.config());
    const auto& a = attempt_of(d, "dmi");
    CHECK(a.outcome == Outcome::skipped);
    CHECK(contains(a.reason, "DMI product_uuid"));
    CHECK(contains(a.reason, c.reason));
    REQUIRE(d.identity);
    CHECK(d.identity->source == "local");
  }
}

TEST_CASE("a malformed DMI UUID fails with the reason and falls to the local identity") {
  FakeHost host;
  host.write("sys/class/dmi/id/product_uuid", "6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3cXX");
  auto d = run_cascade(host.config());
  const auto& a = attempt_of(d, "dmi");
  CHECK(a.outcome == Outcome::failed);
  CHECK(contains(a.reason, "DMI product_uuid: not a UUID ('6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3cXX')"));
  REQUIRE(d.identity);
  CHECK(d.identity->source == "local");
}

TEST_CASE("words after -- on the kernel command line belong to init and are ignored") {
  FakeHost host;
  host.cmdline(std::string("console=ttyS0 -- cairn.id=") + kUuidA);
  host.fw_cfg(kUuidB);
  auto d = run_cascade(host.config());
  CHECK(attempt_of(d, "cmdline").outcome == Outcome::skipped);
  REQUIRE(d.identity);
  CHECK(d.identity->source == "fw_cfg");

  host.cmdline(std::string("cairn.id=") + kUuidA + " -- cairn.id=" + kUuidB);
  d = run_cascade(host.config());
  REQUIRE(d.identity);
  CHECK(d.identity->source == "cmdline");
  CHECK(d.identity->uuid.str() == kUuidA);
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

TEST_CASE("an identity.json that is a FIFO, a directory or a device is refused, never opened") {
  struct Case {
    const char* kind;
    std::function<void(const std::filesystem::path&)> make;
  };
  const Case cases[] = {
      {"a FIFO", [](const auto& p) { REQUIRE(::mkfifo(p.c_str(), 0644) == 0); }},
      {"a directory", [](const auto& p) { std::filesystem::create_directory(p); }},
      {"a character device", [](const auto& p) { std::filesystem::create_symlink("/dev/null", p); }},
  };
  for (const auto& c : cases) {
    CAPTURE(c.kind);
    FakeHost host;
    std::filesystem::create_directories(host.identity_file().parent_path());
    c.make(host.identity_file());
    // Watchdog: should the source ever open the FIFO blocking, a writer opening it after
    // 3 s lets that open return, so the test fails on the time check below instead of
    // hanging. It ends at once when the cascade returns first.
    std::mutex mutex;
    std::condition_variable done_cv;
    bool done = false;
    std::thread watchdog([&] {
      std::unique_lock lock(mutex);
      if (done_cv.wait_for(lock, std::chrono::seconds(3), [&] { return done; })) return;
      const int fd = ::open(host.identity_file().c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) ::close(fd);
    });
    const auto start = std::chrono::steady_clock::now();
    auto d = run_cascade(host.config());
    const auto took = std::chrono::steady_clock::now() - start;
    {
      std::lock_guard lock(mutex);
      done = true;
    }
    done_cv.notify_all();
    watchdog.join();
    CHECK(took < std::chrono::seconds(2));
    const auto& a = attempt_of(d, "local");
    CHECK(a.outcome == Outcome::failed);
    CHECK(contains(a.reason, "identity.json is " + std::string(c.kind) + ", not a regular file"));
    CHECK_FALSE(d.identity);
    REQUIRE(d.error);
    CHECK(contains(d.error->hint, "remove it"));
    // Nothing was renamed or replaced.
    CHECK(std::filesystem::exists(std::filesystem::symlink_status(host.identity_file())));
    CHECK_FALSE(std::filesystem::is_regular_file(std::filesystem::symlink_status(host.identity_file())));
  }
}

TEST_CASE("bytes that are not UTF-8 in DMI, fw-cfg and the command line never break the JSON") {
  FakeHost host;
  host.dmi("sys_vendor", "Vendor\xff\xfe");
  host.dmi("product_name", "\xc3\x28" "board");
  host.dmi("chassis_asset_tag", "tag\x80");
  host.cmdline("quiet cairn.id=\xff\xfe\xfd");
  host.fw_cfg("\xc0\xaf not a uuid");
  host.write("sys/class/dmi/id/product_uuid", "\xed\xa0\x80 placeholder?");
  auto d = run_cascade(host.config());
  REQUIRE(d.identity);
  CHECK(d.identity->source == "local");
  CHECK(attempt_of(d, "cmdline").outcome == Outcome::failed);
  CHECK(contains(attempt_of(d, "cmdline").reason, "not a UUID"));
  CHECK(attempt_of(d, "fw_cfg").outcome == Outcome::failed);
  CHECK(attempt_of(d, "dmi").outcome == Outcome::failed);
  const auto j = cairn::identity::discovery_to_json(d);
  // nlohmann's default dump throws on invalid UTF-8: this is the check that can fail.
  CHECK_NOTHROW((void)j.dump());
  CHECK(j["platform_hint"]["sys_vendor"] == "Vendor\xef\xbf\xbd\xef\xbf\xbd");
  for (const auto& a : d.attempts) {
    CAPTURE(a.source);
    CHECK_NOTHROW((void)cairn::Json(a.reason).dump());
  }
}
