// `cairn-agent update` and the required flag (h-modpolicy): the desired set carries
// "required"; a required module that fails to fetch or verify, or one another module depends
// on, fails the whole change and leaves the old union exactly as it was (same mounts, same
// attached list, same union state) with module.update_failed naming it; a module that is
// neither is left out, the rest mounted, module.refused. Against a fake Mounter, with real
// signed modules in a real store (the re-verification before mounting runs).
#include <doctest/doctest.h>

#include <algorithm>

#include "agent/boot/sealed_base.hpp"
#include "agent/modules/attachments.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/fsverity.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/unit/agent/modules_fake_mounter.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace cairn::agent::modules;

namespace {

const std::string kNow = "2026-11-30T12:00:00.000Z";

std::string oci_digest(const std::string& name, const std::string& version) {
  return "sha256:" + sha256_hex("oci manifest of " + name + " " + version);
}

struct Host {
  test::TempDir tmp;
  FakeMounter fake;
  EvpPkey key = std::move(generate_key(KeyType::ed25519).value());
  ModulesEnv env{.store = ModuleStore(tmp.path() / "persist/cairn/modules"),
                 .paths = UnionPaths{.mount_point = tmp.path() / "union", .run_dir = tmp.path() / "run",
                                     .persist_upper = tmp.path() / "persist/upper", .upper_mode = UpperMode::tmpfs},
                 .policy = {},
                 .registry = std::nullopt,
                 .inspect_mounts = false};
  Host() {
    auto pub = parse_public_key_pem(public_key_pem(key.get()).value()).value();
    const auto id = module::key_id(pub.get()).value();
    env.policy.allowed["*"].push_back(id);
    env.policy.keys.emplace(id, std::move(pub));
    fake.beneath_supported = false;  // this machine's kernel: generation dirs and a symlink
  }

  // A signed module in the store, as fetch_and_verify leaves it.
  AttachedModule module(const std::string& name, const std::string& version, std::vector<std::string> depends = {}) {
    const auto image = tmp.path() / "src" / (name + "-" + version);
    REQUIRE(write_file_atomic(image, std::string(6000, 'x') + name + version));
    auto d = module::digest_file(image).value();
    module::Manifest m{name, version, 10, d.size, d.sha256, d.fsverity, depends};
    const auto manifest_text = module::canonical_bytes(m);
    const auto sig = module::serialize_signature(module::sign_manifest(key.get(), m).value());
    auto image_digest = env.store.put_file(image, 1 << 20);
    REQUIRE(image_digest);
    AttachedModule a{.name = name, .version = version, .priority = 10, .required = false, .depends = std::move(depends),
                     .image_digest = *image_digest, .fsverity_digest = module::fsverity_display(d.fsverity),
                     .manifest_digest = env.store.put_bytes(manifest_text).value(),
                     .signature_digest = env.store.put_bytes(sig).value(), .key_id = module::key_id(key.get()).value(),
                     .source = "127.0.0.1:5000/cairn/" + name + "@" + oci_digest(name, version), .verity = "unavailable: test",
                     .attached_at = kNow};
    return a;
  }

  [[nodiscard]] std::string file(const std::filesystem::path& p) const {
    return read_file_if_exists(p, 1 << 20).value().value_or("");
  }
  [[nodiscard]] std::string events() const { return file(env.store.dir() / "events.pending"); }
};

protocol::ModuleRef want(const std::string& name, const std::string& version, bool required = false) {
  return {name, oci_digest(name, version), false, required};
}

// Fetches from `available` (by OCI digest); anything else fails as a refused signature would.
FetchFn fetch_from(std::vector<AttachedModule> available, int* calls = nullptr) {
  return [available = std::move(available), calls](const protocol::ModuleRef& d) -> Result<AttachedModule> {
    if (calls != nullptr) ++*calls;
    for (const auto& a : available) {
      if (a.source.ends_with("@" + d.digest)) return a;
    }
    return fail(Errc::refused, "module " + d.name + ": no trusted signature verifies (signed by a foreign key)");
  };
}

// The union, the attached list and the union state, to compare before and after.
struct Snapshot {
  std::map<std::filesystem::path, std::vector<std::string>> mounts;
  std::string attached;
  std::string union_state;
  std::filesystem::path link;
  bool operator==(const Snapshot&) const = default;
};
Snapshot snapshot(Host& h) {
  return {h.fake.live(), h.file(h.env.store.dir() / "state.json"), h.file(h.env.paths.run_dir / "union.json"),
          std::filesystem::read_symlink(h.env.paths.mount_point)};
}

}  // namespace

TEST_CASE("the desired set's required flag reaches the node and is kept for update") {
  test::TempDir tmp;
  AgentConfig config;
  config.persist_dir = tmp.path() / "persist";
  REQUIRE(save_desired(config, {want("web", "1", true), want("api", "1")}));
  auto loaded = load_desired(config);
  REQUIRE(loaded);
  REQUIRE(*loaded);
  REQUIRE((*loaded)->size() == 2);
  CHECK((**loaded)[0].required);
  CHECK_FALSE((**loaded)[1].required);
}

TEST_CASE("a required module that fails to fetch or verify fails the whole change; the old union stays as it was") {
  Host h;
  auto web1 = h.module("web", "1");
  auto api1 = h.module("api", "1");
  auto first = update(h.env, h.fake, fetch_from({web1, api1}), {want("web", "1", true), want("api", "1")}, kNow);
  REQUIRE_MESSAGE(first, (first ? "" : first.error().message));
  CHECK(first->failed.empty());
  auto attached = h.env.store.load_attached().value();
  REQUIRE(attached.size() == 2);
  CHECK(std::find_if(attached.begin(), attached.end(), [](const auto& a) { return a.name == "web"; })->required);
  const auto before = snapshot(h);
  CHECK(h.fake.count("overlay") == 1);

  // web 2 is refused by the node (a foreign signature) and web is required; api 2 verifies.
  auto api2 = h.module("api", "2");
  auto r = update(h.env, h.fake, fetch_from({api2}), {want("web", "2", true), want("api", "2")}, kNow);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::refused);
  CHECK(r.error().message.find("required module web could not be fetched or verified") != std::string::npos);
  CHECK(r.error().message.find("foreign key") != std::string::npos);
  CHECK(snapshot(h) == before);  // same mounts, same attached list, same union state and link
  const auto events = h.events();
  CHECK(events.find("module.update_failed") != std::string::npos);
  CHECK(events.find("required module web") != std::string::npos);
  CHECK(events.find("module.refused") == std::string::npos);
}

TEST_CASE("a required module the registry did not answer for fails the change as retryable, not as refused") {
  Host h;
  auto api1 = h.module("api", "1");
  const auto registry_down = [&](const protocol::ModuleRef& d) -> Result<AttachedModule> {
    if (d.name == "web") return fail(Errc::unavailable, "registry 127.0.0.1:5000: connection refused");
    return api1;
  };
  auto r = update(h.env, h.fake, registry_down, {want("web", "1", true), want("api", "1")}, kNow);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::unavailable);  // the boot and the service try again soon
  CHECK(r.error().message.find("required module web") != std::string::npos);
  CHECK(h.fake.count("overlay") == 0);  // nothing mounted

  // The same module refused for what it is stays a refusal.
  auto refused = update(h.env, h.fake, fetch_from({api1}), {want("web", "1", true), want("api", "1")}, kNow);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::refused);
}

TEST_CASE("a failed module another one depends on fails the whole change too") {
  Host h;
  auto base1 = h.module("base", "1");
  REQUIRE(update(h.env, h.fake, fetch_from({base1}), {want("base", "1")}, kNow));
  const auto before = snapshot(h);
  auto app1 = h.module("app", "1", {"base"});
  auto r = update(h.env, h.fake, fetch_from({app1}), {want("base", "2"), want("app", "1")}, kNow);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("module base could not be fetched or verified") != std::string::npos);
  CHECK(r.error().message.find("module app depends on it") != std::string::npos);
  CHECK(snapshot(h) == before);
  CHECK(h.events().find("module.update_failed") != std::string::npos);
}

TEST_CASE("a bad module that is not required is left out; the rest is mounted and the refusal is an event") {
  Host h;
  auto web1 = h.module("web", "1");
  REQUIRE(update(h.env, h.fake, fetch_from({web1}), {want("web", "1")}, kNow));
  auto db1 = h.module("db", "1");
  int calls = 0;
  auto r = update(h.env, h.fake, fetch_from({db1}, &calls),
                  {want("web", "2"), want("db", "1"), want("extra", "1")}, kNow);
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message));
  CHECK(calls == 3);
  REQUIRE(r->failed.size() == 2);
  CHECK(r->failed[0].name == "web");
  CHECK(r->failed[1].name == "extra");
  REQUIRE(r->first_error);
  std::vector<std::string> names;
  for (const auto& a : r->change.attached) names.push_back(a.name + "@" + a.version);
  CHECK(names == std::vector<std::string>{"web@1", "db@1"});  // web 1 stays until web 2 verifies
  CHECK(h.fake.last_lowers.size() == 2);
  const auto events = h.events();
  CHECK(events.find("module.refused.web.") != std::string::npos);
  CHECK(events.find("web 1 stays attached") != std::string::npos);
  CHECK(events.find("module.refused.extra.") != std::string::npos);
  CHECK(events.find("module.update_failed") == std::string::npos);
}

// ---- sealed base (h-boothard): the order of the checks, and control naming the base ----------

TEST_CASE("a sealed boot never mounts a base of another digest: a pinned base that does not verify fails before any mount") {
  Host h;
  // An earlier boot of this disk node attached base 1; this boot pins base 2, which the
  // registry does not have (or whose signature is foreign).
  auto base1 = h.module("base", "1");
  REQUIRE(update(h.env, h.fake, fetch_from({base1}), {want("base", "1")}, kNow));
  const auto before = snapshot(h);
  const auto overlays = h.fake.count("overlay");
  const boot::BaseRef pinned{"base", oci_digest("base", "2")};
  auto r = boot::attach_sealed(h.env, h.fake, fetch_from({base1}), pinned, {}, kNow);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::refused);
  CHECK_MESSAGE(r.error().message.find("sealed base " + pinned.str()) != std::string::npos, r.error().message);
  CHECK_MESSAGE(r.error().message.find("required module base could not be fetched or verified") != std::string::npos,
                r.error().message);
  CHECK(h.fake.count("overlay") == overlays);  // base 1 was not mounted again, not even briefly
  CHECK(snapshot(h) == before);

  // The registry did not answer for the pinned base: retryable, and nothing mounted either.
  const auto registry_down = [](const protocol::ModuleRef&) -> Result<AttachedModule> {
    return fail(Errc::unavailable, "registry 127.0.0.1:5000: connection refused");
  };
  auto down = boot::attach_sealed(h.env, h.fake, registry_down, pinned, {}, kNow);
  REQUIRE_FALSE(down);
  CHECK(down.error().code == Errc::unavailable);
  CHECK(h.fake.count("overlay") == overlays);

  // The pinned base that verifies is mounted.
  auto base2 = h.module("base", "2");
  auto ok = boot::attach_sealed(h.env, h.fake, fetch_from({base2}), pinned, {}, kNow);
  REQUIRE_MESSAGE(ok, (ok ? "" : ok.error().message));
  REQUIRE(ok->change.attached.size() == 1);
  CHECK(ok->change.attached[0].source.ends_with("@" + pinned.digest));
}

TEST_CASE("control's desired set naming the sealed base is refused with a module.base_override_refused event naming both refs") {
  Host h;
  auto base1 = h.module("base", "1");
  auto base2 = h.module("base", "2");
  auto hello = h.module("hello", "1");
  const boot::BaseRef pinned{"base", oci_digest("base", "1")};
  auto r = boot::attach_sealed(h.env, h.fake, fetch_from({base1, base2, hello}), pinned,
                               {want("base", "2"), want("hello", "1")}, kNow);
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message));
  std::vector<std::string> names;
  for (const auto& a : r->change.attached) names.push_back(a.name + "@" + a.version);
  CHECK(names == std::vector<std::string>{"base@1", "hello@1"});  // the sealed digest wins

  // Queued for the service as the module events are, and delivered by its drain.
  AgentConfig config;
  config.persist_dir = h.tmp.path() / "persist";
  std::vector<protocol::Event> delivered;
  auto drained = drain_events(config, [&](const protocol::Event& e) -> Status {
    delivered.push_back(e);
    return {};
  });
  REQUIRE(drained);
  const auto it = std::find_if(delivered.begin(), delivered.end(),
                               [](const protocol::Event& e) { return e.kind == "module.base_override_refused"; });
  REQUIRE(it != delivered.end());
  std::string digest2 = oci_digest("base", "2");
  std::replace(digest2.begin(), digest2.end(), ':', '-');
  CHECK(it->id == "module.base_override_refused." + digest2);
  CHECK(it->id.size() <= 128);  // control's limit for an event id
  CHECK(it->severity == "warning");
  CHECK(it->time == kNow);
  CHECK_MESSAGE(it->message.find("sealed=base@" + oci_digest("base", "1")) != std::string::npos, it->message);
  CHECK_MESSAGE(it->message.find("desired=base@" + oci_digest("base", "2")) != std::string::npos, it->message);

  // A desired set without the base (or naming the pinned digest itself) raises nothing.
  Host quiet;
  auto qbase = quiet.module("base", "1");
  REQUIRE(boot::attach_sealed(quiet.env, quiet.fake, fetch_from({qbase}), pinned, {want("base", "1"), want("hello", "9")},
                              kNow));
  CHECK(quiet.events().find("module.base_override_refused") == std::string::npos);
}

TEST_CASE("fatal_failure names the first failed module that is required or depended on") {
  AttachedModule app;
  app.name = "app";
  app.depends = {"lib"};
  CHECK_FALSE(fatal_failure({want("x", "1")}, {app}, {{"x", "bad"}}));
  CHECK(fatal_failure({want("x", "1", true)}, {app}, {{"x", "bad"}})->message.find("required module x") != std::string::npos);
  CHECK(fatal_failure({want("lib", "1")}, {app}, {{"lib", "bad"}})->message.find("module app depends on it") != std::string::npos);
  CHECK_FALSE(fatal_failure({want("lib", "1")}, {}, {}));
}
