// The union's rules without root: select_layers (bad modules, dependencies, order) and the
// UnionManager against a fake Mounter that keeps a mount table (each target a stack).
#include <doctest/doctest.h>

#include <map>

#include "agent/modules/union.hpp"
#include "tests/unit/agent/modules_fake_mounter.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent::modules;

namespace {

Layer layer(std::string name, std::int64_t priority, std::vector<std::string> depends = {}) {
  Layer l;
  l.name = name;
  l.version = "1";
  l.priority = priority;
  l.image = "/images/" + name;
  l.image_digest = "sha256:" + std::string(64, static_cast<char>('a' + (name[0] % 6)));
  l.depends = std::move(depends);
  return l;
}

UnionChecks pass_all() {
  UnionChecks c;
  c.before_mount = [](const Layer&) -> Status { return {}; };
  c.mounted_layer = [](const Layer&, const std::filesystem::path&) -> Status { return {}; };
  c.merged = [](const std::filesystem::path&, const std::vector<Layer>&) -> Status { return {}; };
  return c;
}

struct Host {
  test::TempDir tmp;
  FakeMounter fake;
  UnionPaths paths{.mount_point = tmp.path() / "union", .run_dir = tmp.path() / "run", .persist_upper = tmp.path() / "persist",
                   .upper_mode = UpperMode::tmpfs};
  UnionManager manager{fake, paths};
};

}  // namespace

TEST_CASE("layers are stacked by priority, then name; the highest on top") {
  std::vector<Exclusion> excluded;
  auto s = select_layers({layer("b", 5), layer("a", 5), layer("top", 90), layer("base", 0)}, {}, excluded);
  REQUIRE(s);
  std::vector<std::string> names;
  for (const auto& l : *s) names.push_back(l.name);
  CHECK(names == std::vector<std::string>{"top", "a", "b", "base"});
  CHECK(excluded.empty());
}

TEST_CASE("the bad-module rules: left out with the reason, unless required or depended on") {
  std::vector<Exclusion> excluded;
  SUBCASE("a bad module is left out, the others stay") {
    auto s = select_layers({layer("a", 1), layer("b", 2)}, {{"b", "sha256 mismatch"}}, excluded);
    REQUIRE(s);
    REQUIRE(s->size() == 1);
    CHECK((*s)[0].name == "a");
    REQUIRE(excluded.size() == 1);
    CHECK(excluded[0].reason == "sha256 mismatch");
  }
  SUBCASE("a required bad module refuses the change") {
    auto b = layer("b", 2);
    b.required = true;
    auto s = select_layers({layer("a", 1), b}, {{"b", "sha256 mismatch"}}, excluded);
    REQUIRE_FALSE(s);
    CHECK(s.error().code == Errc::refused);
  }
  SUBCASE("a bad module another one depends on refuses the change") {
    auto s = select_layers({layer("a", 1, {"b"}), layer("b", 2)}, {{"b", "bad signature"}}, excluded);
    REQUIRE_FALSE(s);
    CHECK(s.error().message == "module b is bad (bad signature) and module a depends on it");
  }
  SUBCASE("a missing dependency leaves its dependant out, and what depends on that one too") {
    auto s = select_layers({layer("a", 1, {"gone"}), layer("c", 3)}, {}, excluded);
    REQUIRE(s);
    CHECK(s->size() == 1);
    REQUIRE(excluded.size() == 1);
    CHECK(excluded[0].name == "a");
    auto t = select_layers({layer("a", 1, {"gone"}), layer("b", 2, {"a"})}, {}, excluded);
    REQUIRE_FALSE(t);  // b depends on a, which is bad
  }
  SUBCASE("a name twice is refused") {
    CHECK_FALSE(select_layers({layer("a", 1), layer("a", 2)}, {}, excluded));
  }
}

TEST_CASE("the union is built at a staging path and moved in; a second change goes beneath, then the old one leaves") {
  Host h;
  auto first = h.manager.apply({layer("a", 1)}, pass_all());
  REQUIRE_MESSAGE(first, (first ? "" : first.error().message));
  CHECK(h.fake.top(h.paths.mount_point).starts_with("overlay"));
  CHECK(h.fake.count("erofs") == 1);
  auto second = h.manager.apply({layer("a", 1), layer("b", 9)}, pass_all());
  REQUIRE(second);
  CHECK(second->state.generation == 2);
  // b (priority 9) is the top-most lower.
  REQUIRE(h.fake.last_lowers.size() == 2);
  CHECK(h.fake.last_lowers[0].filename().string().starts_with("b-"));
  CHECK(h.fake.table[h.paths.mount_point].size() == 1);  // the old union went from the top
  CHECK(h.fake.count("erofs") == 2);                     // a's mount reused
  auto third = h.manager.apply({layer("b", 9)}, pass_all());
  REQUIRE(third);
  CHECK(h.fake.count("erofs") == 1);  // a's layer unmounted with the old union
  REQUIRE(h.manager.apply({}, pass_all()));
  CHECK_FALSE(h.fake.mounted(h.paths.mount_point));
  CHECK(h.fake.count("erofs") == 0);
  REQUIRE(h.manager.teardown());
  CHECK(h.fake.count("") == 0);
}

TEST_CASE("a failure while building the new union unmounts what it mounted and keeps the old state") {
  Host h;
  REQUIRE(h.manager.apply({layer("a", 1)}, pass_all()));
  const auto before = h.fake.live();
  for (const std::string failure : {"overlay", "move"}) {
    CAPTURE(failure);
    h.fake.fail_on = failure;
    auto r = h.manager.apply({layer("a", 1), layer("b", 2)}, pass_all());
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("the old one stays") != std::string::npos);
    CHECK(h.fake.live() == before);
    CHECK(h.manager.load_state()->generation == 1);
  }
  h.fake.fail_on = "";
  SUBCASE("the union check fails") {
    auto c = pass_all();
    c.merged = [](const std::filesystem::path&, const std::vector<Layer>&) -> Status { return fail(Errc::io, "fake: not an overlay"); };
    auto r = h.manager.apply({layer("a", 1), layer("b", 2)}, c);
    REQUIRE_FALSE(r);
    CHECK(h.fake.live() == before);
  }
  SUBCASE("a layer whose re-verification fails is left out and never mounted") {
    auto c = pass_all();
    c.before_mount = [](const Layer& l) -> Status {
      if (l.name == "b") return fail(Errc::data, "changed on disk");
      return {};
    };
    auto r = h.manager.apply({layer("a", 1), layer("b", 2)}, c);
    REQUIRE(r);
    REQUIRE(r->excluded.size() == 1);
    CHECK(r->excluded[0].reason == "changed on disk");
    CHECK(h.fake.count("erofs") == 1);
  }
  SUBCASE("an image the kernel refuses is left out") {
    h.fake.fail_on = "image:b";
    auto r = h.manager.apply({layer("a", 1), layer("b", 2)}, pass_all());
    REQUIRE(r);
    REQUIRE(r->excluded.size() == 1);
    CHECK(r->excluded[0].reason.find("fake: bad image") != std::string::npos);
  }
  SUBCASE("nothing of a non-empty set mountable: refused, the old union stays") {
    h.fake.fail_on = "image:b";
    auto r = h.manager.apply({layer("b", 2)}, pass_all());
    REQUIRE_FALSE(r);
    CHECK(h.fake.live() == before);
  }
  (void)h.manager.teardown();
}

TEST_CASE("module names that are not safe in a path or in overlayfs options are refused") {
  Host h;
  for (const char* name : {"", "..", "a/b", "a:b", "a,b", "A", "-a"}) {
    CAPTURE(name);
    CHECK_FALSE(valid_module_name(name));
    auto l = layer("a", 1);
    l.name = name;
    CHECK_FALSE(h.manager.apply({l}, pass_all()));
  }
  CHECK(valid_module_name("web-1.2_x"));
}

// h-modctl: Linux < 6.5 has no MOVE_MOUNT_BENEATH.
TEST_CASE("without MOVE_MOUNT_BENEATH each union has its generation dir and the mount point is a symlink swapped to it") {
  Host h;
  h.fake.beneath_supported = false;
  auto first = h.manager.apply({layer("a", 1)}, pass_all());
  REQUIRE_MESSAGE(first, (first ? "" : first.error().message));
  const auto gen1 = h.paths.run_dir / "gen-1";
  CHECK(first->state.merged == gen1);
  CHECK(h.fake.top(gen1).starts_with("overlay"));
  CHECK_FALSE(h.fake.mounted(h.paths.mount_point));  // nothing is mounted on the link itself
  REQUIRE(std::filesystem::is_symlink(h.paths.mount_point));
  CHECK(std::filesystem::read_symlink(h.paths.mount_point) == std::filesystem::path("run/gen-1"));

  auto second = h.manager.apply({layer("a", 1), layer("b", 9)}, pass_all());
  REQUIRE_MESSAGE(second, (second ? "" : second.error().message));
  const auto gen2 = h.paths.run_dir / "gen-2";
  CHECK(std::filesystem::read_symlink(h.paths.mount_point) == std::filesystem::path("run/gen-2"));
  CHECK(h.fake.top(gen2).starts_with("overlay b-"));
  // The old generation stays mounted until the next change (a reader that resolved the link
  // just before the swap still finds it whole).
  CHECK(h.fake.mounted(gen1));
  CHECK(h.fake.count("overlay") == 2);
  auto state = h.manager.load_state();
  REQUIRE(state);
  CHECK(state->merged == gen2);
  CHECK(state->live_path() == gen2);
  CHECK(state->previous == gen1);

  // A failure before the swap keeps the link on the old generation.
  h.fake.fail_on = "overlay";
  CHECK_FALSE(h.manager.apply({layer("b", 9)}, pass_all()));
  CHECK(std::filesystem::read_symlink(h.paths.mount_point) == std::filesystem::path("run/gen-2"));
  CHECK(h.fake.mounted(gen2));
  h.fake.fail_on.clear();

  REQUIRE(h.manager.apply({}, pass_all()));
  CHECK_FALSE(std::filesystem::exists(std::filesystem::symlink_status(h.paths.mount_point)));
  CHECK(h.fake.count("overlay") == 0);
  REQUIRE(h.manager.teardown());
  CHECK(h.fake.count("") == 0);
}

TEST_CASE("without MOVE_MOUNT_BENEATH the replaced generation and its own layers go with the next change, and at teardown") {
  Host h;
  h.fake.beneath_supported = false;
  const auto gen = [&](int n) { return h.paths.run_dir / ("gen-" + std::to_string(n)); };
  REQUIRE(h.manager.apply({layer("a", 1), layer("b", 9)}, pass_all()));
  REQUIRE(h.manager.apply({layer("a", 1)}, pass_all()));  // b leaves: gen-1 keeps b's layer
  CHECK(h.fake.mounted(gen(1)));
  CHECK(h.fake.count("erofs b") == 1);
  auto state = h.manager.load_state();
  REQUIRE(state);
  REQUIRE(state->previous_layers.size() == 1);
  CHECK(state->previous_layers[0].filename().string().starts_with("b-"));

  // A set that takes b back reuses the layer the kept generation holds: still one mount of it.
  REQUIRE(h.manager.apply({layer("a", 1), layer("b", 9)}, pass_all()));
  CHECK(h.fake.count("erofs b") == 1);
  CHECK_FALSE(h.fake.mounted(gen(1)));  // retired, two changes later
  CHECK_FALSE(std::filesystem::exists(gen(1)));
  CHECK(h.fake.mounted(gen(2)));
  CHECK(h.fake.count("overlay") == 2);

  REQUIRE(h.manager.apply({layer("a", 1)}, pass_all()));
  REQUIRE(h.manager.apply({layer("a", 1)}, pass_all()));  // gen-5 retires gen-3 ({a, b}), b with it
  CHECK(h.fake.count("erofs b") == 0);
  CHECK(h.fake.count("erofs a") == 1);
  CHECK(h.fake.count("overlay") == 2);

  // A generation a crashed change left mounted is swept by the next change.
  std::filesystem::create_directories(gen(42));
  REQUIRE(h.fake.mount_tmpfs(gen(42)));
  REQUIRE(h.manager.apply({layer("a", 1), layer("c", 3)}, pass_all()));
  CHECK_FALSE(h.fake.mounted(gen(42)));
  CHECK_FALSE(std::filesystem::exists(gen(42)));

  REQUIRE(h.manager.teardown());
  CHECK(h.fake.count("") == 0);  // the current generation, the kept one, their layers, the upper
  CHECK_FALSE(std::filesystem::exists(gen(5)));
  CHECK_FALSE(std::filesystem::exists(gen(6)));
}

TEST_CASE("without MOVE_MOUNT_BENEATH a union mounted on the mount point itself is not switched: the old one stays") {
  Host h;
  auto first = h.manager.apply({layer("a", 1)}, pass_all());  // mounted directly (a kernel with the flag)
  REQUIRE(first);
  h.fake.beneath_supported = false;
  auto second = h.manager.apply({layer("a", 1), layer("b", 9)}, pass_all());
  REQUIRE_FALSE(second);
  CHECK(second.error().message.find("the old one stays") != std::string::npos);
  CHECK(h.fake.top(h.paths.mount_point).starts_with("overlay a-"));
  CHECK(h.fake.count("overlay") == 1);
  CHECK(h.fake.count("erofs") == 1);  // b's layer mounted for the attempt is gone again
}

TEST_CASE("a union at / is never a symlink: without MOVE_MOUNT_BENEATH no generation dir is made for it") {
  test::TempDir tmp;
  FakeMounter fake;
  fake.beneath_supported = false;
  UnionPaths paths{.mount_point = "/", .run_dir = tmp.path() / "run", .persist_upper = tmp.path() / "persist",
                   .upper_mode = UpperMode::tmpfs};
  UnionManager manager(fake, paths);
  auto first = manager.apply({layer("a", 1)}, pass_all());  // "/" is not mounted in the fake: moved there
  REQUIRE_MESSAGE(first, (first ? "" : first.error().message));
  CHECK(first->state.merged.empty());
  CHECK(fake.top("/").starts_with("overlay"));
  CHECK_FALSE(std::filesystem::exists(tmp.path() / "run/gen-1"));
}

TEST_CASE("a direct union (the boot's /sysroot) is mounted at its mount point, never through a symlink (h-base)") {
  test::TempDir tmp;
  FakeMounter fake;
  fake.beneath_supported = false;  // Linux 6.1: elsewhere this union would be gen-N + a symlink
  UnionPaths paths{.mount_point = tmp.path() / "sysroot", .run_dir = tmp.path() / "run",
                   .persist_upper = tmp.path() / "persist", .upper_mode = UpperMode::tmpfs, .direct = true};
  UnionManager manager(fake, paths);
  auto first = manager.apply({layer("base", 0), layer("a", 10)}, pass_all());
  REQUIRE_MESSAGE(first, (first ? "" : first.error().message));
  CHECK(first->state.merged.empty());
  CHECK(fake.top(paths.mount_point).starts_with("overlay a-"));
  CHECK_FALSE(std::filesystem::is_symlink(paths.mount_point));
  CHECK_FALSE(std::filesystem::exists(tmp.path() / "run/gen-1"));
}
