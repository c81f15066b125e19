// The modules' union on the real kernel: EROFS images from mkfs.erofs on real loop devices,
// stacked with overlayfs in a temp dir, switched atomically. Root + loop devices, or skipped.
#include <doctest/doctest.h>
#include <fcntl.h>

#include <atomic>
#include <thread>

#include "tests/integration/modules/modules_fixture.hpp"
#include "tests/support/skip.hpp"

namespace cairn::test {
namespace {

using namespace std::chrono_literals;

const std::string kReleaseA = "union/usr/lib/extension-release.d/extension-release.a";

// A real Mounter that fails one kind of call on demand: a failure in the middle of building
// the new union, with every other step real.
class FailingMounter final : public mod::Mounter {
 public:
  explicit FailingMounter(mod::Mounter& real) : real_(real) {}
  bool fail_overlay = false;
  bool fail_move = false;
  Status mount_image(const std::filesystem::path& i, const std::filesystem::path& t) override { return real_.mount_image(i, t); }
  Status mount_tmpfs(const std::filesystem::path& t) override { return real_.mount_tmpfs(t); }
  Status mount_overlay(const std::vector<std::filesystem::path>& l, const std::filesystem::path& u,
                       const std::filesystem::path& w, const std::filesystem::path& t) override {
    if (fail_overlay) return fail(Errc::io, "injected: mount overlay at " + t.string());
    return real_.mount_overlay(l, u, w, t);
  }
  Status make_private_mount(const std::filesystem::path& d) override { return real_.make_private_mount(d); }
  Status move_mount(const std::filesystem::path& f, const std::filesystem::path& t, bool beneath) override {
    if (fail_move) return fail(Errc::io, "injected: move mount to " + t.string());
    return real_.move_mount(f, t, beneath);
  }
  Status unmount(const std::filesystem::path& t, bool lazy) override { return real_.unmount(t, lazy); }
  Result<bool> is_mount_point(const std::filesystem::path& t) override { return real_.is_mount_point(t); }
  bool can_move_beneath() override { return real_.can_move_beneath(); }

 private:
  mod::Mounter& real_;
};

// After teardown nothing of the test is mounted and no loop device points into it (autoclear
// may finish a moment after the unmount: polled with a deadline).
void check_no_leaks(ModulesHost& host) {
  REQUIRE(host.manager().teardown());
  CHECK(wait_for([&] { return mounts_under(host.tmp.path()).empty(); }, 5s));
  CHECK(wait_for([&] { return loops_under(host.tmp.path()).empty(); }, 5s));
  const auto mounts = mounts_under(host.tmp.path());
  for (const auto& m : mounts) INFO("still mounted: " << m.string());
  for (const auto& l : loops_under(host.tmp.path())) INFO("still attached: " << l);
}

TEST_CASE("modules stack by priority: the higher one wins a shared path, the union is writable") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  ModulesHost host;
  auto a = host.module("a", 10, {{"etc/shared", "from a"}, {"opt/a/only", "a"}});
  auto b = host.module("b", 5, {{"etc/shared", "from b"}, {"opt/b/only", "b"}});
  auto m = host.manager();
  auto out = m.apply({b, a}, ModulesHost::checks());
  REQUIRE_MESSAGE(out, (out ? "" : out.error().message));
  CHECK(out->excluded.empty());
  REQUIRE(out->state.layers.size() == 2);
  CHECK(out->state.layers[0].name == "a");  // top-most first
  CHECK(read_text(host.paths.mount_point / "etc/shared") == "from a");
  CHECK(read_text(host.paths.mount_point / "opt/a/only") == "a");
  CHECK(read_text(host.paths.mount_point / "opt/b/only") == "b");
  CHECK(loops_under(host.tmp.path()).size() == 2);
  write_text(host.paths.mount_point / "var/note", "written");  // lands in the tmpfs upper
  CHECK(read_text(host.paths.mount_point / "var/note") == "written");
  auto state = m.load_state();
  REQUIRE(state);
  CHECK(state->generation == 1);
  CHECK(state->layers.size() == 2);
  check_no_leaks(host);
}

TEST_CASE("a change of the set is atomic: a reader of the union never finds it empty") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  bool beneath = true;
  SUBCASE("moved beneath the old union (Linux 6.5+)") {
    if (!mod::make_linux_mounter(Root("/"))->can_move_beneath()) CAIRN_SKIP("this kernel has no MOVE_MOUNT_BENEATH");
  }
  SUBCASE("generation directories and a symlink swapped by rename (Linux < 6.5, forced here)") { beneath = false; }
  CAPTURE(beneath);
  ModulesHost host(mod::UpperMode::tmpfs, beneath);
  auto a = host.module("a", 10, {{"etc/a", "a"}});
  auto b = host.module("b", 5, {{"etc/b", "b"}});
  auto m = host.manager();
  REQUIRE(m.apply({a}, ModulesHost::checks()));
  // An open file of the old union stays readable after the switch (the old one is detached, not torn away).
  const int old_fd = ::open((host.tmp.path() / "union/etc/a").c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(old_fd >= 0);

  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, misses{0};
  std::thread reader([&] {
    while (!stop) {
      if (std::filesystem::exists(host.tmp.path() / kReleaseA)) ++reads;
      else ++misses;
    }
  });
  for (int i = 0; i < 6; ++i) {
    auto out = m.apply(i % 2 == 0 ? std::vector<mod::Layer>{a, b} : std::vector<mod::Layer>{a}, ModulesHost::checks());
    REQUIRE_MESSAGE(out, (out ? "" : out.error().message));
  }
  stop = true;
  reader.join();
  CHECK(reads > 0);
  CHECK(misses == 0);
  CHECK(std::filesystem::exists(host.paths.mount_point / "etc/a"));
  CHECK_FALSE(std::filesystem::exists(host.paths.mount_point / "etc/b"));  // the last set was {a}
  char buf[8] = {};
  CHECK(::pread(old_fd, buf, sizeof buf, 0) == 1);
  CHECK(std::string(buf) == "a");
  ::close(old_fd);
  auto state = m.load_state();
  REQUIRE(state);
  CHECK(state->generation == 7);
  if (!beneath) {
    // The mount point is a symlink to the newest generation; the one before stays mounted
    // until the next change (h-modpolicy), the older ones are gone.
    CHECK(std::filesystem::is_symlink(host.paths.mount_point));
    CHECK(state->merged == host.paths.run_dir / "gen-7");
    CHECK(state->previous == host.paths.run_dir / "gen-6");
    CHECK(std::filesystem::equivalent(host.paths.mount_point, host.paths.run_dir / "gen-7"));
    int generations = 0;
    for (const auto& e : std::filesystem::directory_iterator(host.paths.run_dir)) {
      if (e.path().filename().string().starts_with("gen-")) ++generations;
    }
    CHECK(generations == 2);
    CHECK(mounts_under(host.paths.run_dir / "gen-5").empty());
    CHECK(read_text(host.paths.run_dir / "gen-6/etc/b") == "b");
    // Unchanged layers kept their mount: a's loop device, and b's for the kept gen-6.
    CHECK(wait_for([&] { return loops_under(host.tmp.path()).size() == 2; }, 5s));
  } else {
    CHECK(state->merged.empty());
    CHECK_FALSE(std::filesystem::is_symlink(host.paths.mount_point));
    // Unchanged layers kept their mount: one loop device for a, none left for b.
    CHECK(wait_for([&] { return loops_under(host.tmp.path()).size() == 1; }, 5s));
  }
  check_no_leaks(host);
}

TEST_CASE("without MOVE_MOUNT_BENEATH a reader that resolved the old link keeps its files until the next change") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  ModulesHost host(mod::UpperMode::tmpfs, false);
  auto a = host.module("a", 10, {{"etc/a", "a1"}});
  auto b = host.module("b", 5, {{"etc/b", "b"}});
  auto m = host.manager();
  REQUIRE(m.apply({a, b}, ModulesHost::checks()));
  // What a reader holds between resolving the link and opening the file: the generation dir.
  const auto resolved = std::filesystem::canonical(host.paths.mount_point);
  CHECK(resolved.filename() == "gen-1");
  REQUIRE(m.apply({a}, ModulesHost::checks()));  // b leaves the set
  CHECK_FALSE(std::filesystem::exists(host.paths.mount_point / "etc/b"));
  // The old generation is still whole: not an empty dir (the race of a lazy unmount right after
  // the rename), b's layer included.
  CHECK(read_text(resolved / "etc/a") == "a1");
  CHECK(read_text(resolved / "etc/b") == "b");
  CHECK(loops_under(host.tmp.path()).size() == 2);
  // The next change retires it, and b's layer with it.
  REQUIRE(m.apply({a}, ModulesHost::checks()));
  CHECK_FALSE(std::filesystem::exists(resolved));
  CHECK(mounts_under(resolved).empty());
  CHECK(wait_for([&] { return loops_under(host.tmp.path()).size() == 1; }, 5s));

  // A generation left by a crashed change (mounted, not in union.json) is swept by the next
  // change; teardown unmounts the current and the kept one.
  const auto stray = host.paths.run_dir / "gen-99";
  std::filesystem::create_directories(stray);
  REQUIRE(host.mounter->mount_tmpfs(stray));
  REQUIRE(m.apply({a, b}, ModulesHost::checks()));
  CHECK(mounts_under(stray).empty());
  CHECK_FALSE(std::filesystem::exists(stray));
  auto state = m.load_state();
  REQUIRE(state);
  CHECK_FALSE(state->previous.empty());
  check_no_leaks(host);
  CHECK_FALSE(std::filesystem::exists(state->previous));
}

TEST_CASE("a failure while building the new union leaves the old one mounted and readable") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  bool beneath = true;
  SUBCASE("moved beneath") {
    if (!mod::make_linux_mounter(Root("/"))->can_move_beneath()) CAIRN_SKIP("this kernel has no MOVE_MOUNT_BENEATH");
  }
  SUBCASE("generation directories and a symlink") { beneath = false; }
  CAPTURE(beneath);
  ModulesHost host(mod::UpperMode::tmpfs, beneath);
  auto a = host.module("a", 10, {{"etc/a", "a"}});
  auto b = host.module("b", 5, {{"etc/b", "b"}});
  FailingMounter failing(*host.mounter);
  auto m = host.manager(failing);
  REQUIRE(m.apply({a}, ModulesHost::checks()));

  for (const bool overlay : {true, false}) {
    CAPTURE(overlay);
    if (!overlay && !beneath) continue;  // nothing is moved on the symlink path
    failing.fail_overlay = overlay;
    failing.fail_move = !overlay;
    auto out = m.apply({a, b}, ModulesHost::checks());
    REQUIRE_FALSE(out);
    CHECK(out.error().message.find("the old one stays") != std::string::npos);
    CHECK(out.error().message.find("injected") != std::string::npos);
    CHECK(read_text(host.paths.mount_point / "etc/a") == "a");
    CHECK_FALSE(std::filesystem::exists(host.paths.mount_point / "etc/b"));
    // b's layer was mounted for the attempt and is gone again, its loop device with it.
    CHECK(wait_for([&] { return loops_under(host.tmp.path()).size() == 1; }, 5s));
    auto state = m.load_state();
    REQUIRE(state);
    CHECK(state->generation == 1);
    CHECK(state->layers.size() == 1);
  }
  failing.fail_overlay = failing.fail_move = false;
  auto out = m.apply({a, b}, ModulesHost::checks());
  REQUIRE_MESSAGE(out, (out ? "" : out.error().message));
  CHECK(read_text(host.paths.mount_point / "etc/b") == "b");
  check_no_leaks(host);
  const bool link_left = std::filesystem::is_symlink(std::filesystem::symlink_status(host.paths.mount_point));
  CHECK_FALSE(link_left);  // teardown removed the symlink
}

TEST_CASE("a corrupt image is left out with its reason and the union holds the others") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  ModulesHost host;
  auto a = host.module("a", 10, {{"etc/a", "a"}});
  const auto junk = host.tmp.path() / "images/junk.erofs";
  write_text(junk, std::string(64 * 1024, 'x'));
  auto bad = ModulesHost::layer_of("junk", 20, junk);
  auto m = host.manager();
  auto out = m.apply({a, bad}, ModulesHost::checks());
  REQUIRE_MESSAGE(out, (out ? "" : out.error().message));
  REQUIRE(out->excluded.size() == 1);
  CHECK(out->excluded[0].name == "junk");
  CHECK(out->excluded[0].reason.find("mount EROFS image") != std::string::npos);
  CHECK(read_text(host.paths.mount_point / "etc/a") == "a");
  CHECK(wait_for([&] { return loops_under(host.tmp.path()).size() == 1; }, 5s));

  SUBCASE("required: the whole change is refused and the old union stays") {
    bad.required = true;
    auto b = host.module("b", 5, {{"etc/b", "b"}});
    auto refused = m.apply({a, b, bad}, ModulesHost::checks());
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == Errc::refused);
    CHECK(refused.error().message.find("required module junk") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(host.paths.mount_point / "etc/b"));
    CHECK(read_text(host.paths.mount_point / "etc/a") == "a");
  }
  SUBCASE("depended on: the whole change is refused") {
    auto b = host.module("b", 5, {{"etc/b", "b"}}, {"junk"});
    auto refused = m.apply({a, b, bad}, ModulesHost::checks());
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message.find("module b depends on it") != std::string::npos);
    CHECK(read_text(host.paths.mount_point / "etc/a") == "a");
  }
  CHECK(wait_for([&] { return loops_under(host.tmp.path()).size() == 1; }, 5s));
  check_no_leaks(host);
}

TEST_CASE("an image changed on disk after verification is refused before it is mounted") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  ModulesHost host;
  auto a = host.module("a", 10, {{"etc/a", "a"}});
  auto b = host.module("b", 5, {{"etc/b", "b"}});
  {
    std::fstream f(b.image, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(2000);
    f.put('\x5a');  // one byte of file data changed after the digest was taken
  }
  auto m = host.manager();
  auto out = m.apply({a, b}, ModulesHost::checks());
  REQUIRE(out);
  REQUIRE(out->excluded.size() == 1);
  CHECK(out->excluded[0].reason.find("changed since it was verified") != std::string::npos);
  CHECK(loops_under(host.tmp.path()).size() == 1);
  check_no_leaks(host);
}

TEST_CASE("a module naming a missing dependency is left out; the rest mounts") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  ModulesHost host;
  auto a = host.module("a", 10, {{"etc/a", "a"}});
  auto d = host.module("d", 5, {{"etc/d", "d"}}, {"nowhere"});
  auto m = host.manager();
  auto out = m.apply({a, d}, ModulesHost::checks());
  REQUIRE(out);
  REQUIRE(out->excluded.size() == 1);
  CHECK(out->excluded[0].reason == "depends on module nowhere, which is not in the set");
  CHECK_FALSE(std::filesystem::exists(host.paths.mount_point / "etc/d"));
  CHECK(wait_for([&] { return loops_under(host.tmp.path()).size() == 1; }, 5s));
  check_no_leaks(host);
}

TEST_CASE("the upper layer keeps what was written across changes of the set (tmpfs and persist)") {
  if (auto why = mount_tests_unavailable()) CAIRN_SKIP(*why);
  for (const auto mode : {mod::UpperMode::tmpfs, mod::UpperMode::persist}) {
    CAPTURE(mod::upper_mode_name(mode));
    ModulesHost host(mode);
    auto a = host.module("a", 10, {{"etc/a", "a"}});
    auto b = host.module("b", 5, {{"etc/b", "b"}});
    auto m = host.manager();
    REQUIRE(m.apply({a}, ModulesHost::checks()));
    write_text(host.paths.mount_point / "var/lib/state", "kept");
    REQUIRE(m.apply({a, b}, ModulesHost::checks()));
    CHECK(read_text(host.paths.mount_point / "var/lib/state") == "kept");
    if (mode == mod::UpperMode::persist) {
      CHECK(read_text(host.paths.persist_upper / "upper/var/lib/state") == "kept");
    }
    // An empty set unmounts the union and its layers.
    auto none = m.apply({}, ModulesHost::checks());
    REQUIRE(none);
    CHECK(none->state.layers.empty());
    CHECK_FALSE(std::filesystem::exists(host.paths.mount_point / "etc/a"));
    CHECK(wait_for([&] { return loops_under(host.tmp.path()).empty(); }, 5s));
    check_no_leaks(host);
  }
}

}  // namespace
}  // namespace cairn::test
