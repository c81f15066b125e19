// The service's module reconciler (h-apply) on a ManualClock: the real modules::update with
// real signed modules in a real store behind a fake Mounter, run on the reconciler's worker
// thread; the fetch is scripted (a registry up, down, or serving a refused module). Proves: a
// new desired set is applied once; an unchanged set fetches nothing; a failure backs off
// (growing, capped for a permanent refusal) and a new digest is tried at once; a stop during an
// update leaves the old union exactly as it was.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "agent/modules/attachments.hpp"
#include "agent/runtime/module_reconciler.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/module/fsverity.hpp"
#include "common/module/manifest.hpp"
#include "common/module/signature.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/unit/agent/modules_fake_mounter.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace cairn::agent::modules;
using namespace std::chrono_literals;

namespace {

const std::string kNow = "2026-11-30T12:00:00.000Z";

std::string oci_digest(const std::string& name, const std::string& version) {
  return "sha256:" + sha256_hex("oci manifest of " + name + " " + version);
}

protocol::ModuleRef want(const std::string& name, const std::string& version) {
  return {name, oci_digest(name, version), false, false};
}

// A node's modules: a real store with signed modules, a fake mounter, a scripted registry.
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
  // What the registry serves (and verifies), by OCI digest: the module and the parts a fetch
  // puts into the store (the store's garbage collection removes what nothing attached uses).
  struct Published {
    AttachedModule module;
    std::filesystem::path image;
    std::string manifest;
    std::string signature;
  };
  std::vector<Published> registry;
  std::atomic<int> fetches{0};
  std::atomic<bool> registry_up{true};
  Errc refusal = Errc::refused;  // what a module the registry does not hold fails with

  Host() {
    log::set_min_level(log::Level::critical);
    auto pub = parse_public_key_pem(public_key_pem(key.get()).value()).value();
    const auto id = module::key_id(pub.get()).value();
    env.policy.allowed["*"].push_back(id);
    env.policy.keys.emplace(id, std::move(pub));
    fake.beneath_supported = false;
  }

  // A signed module in the store, as fetch_and_verify leaves it, served by the registry.
  AttachedModule publish(const std::string& name, const std::string& version) {
    const auto image = tmp.path() / "src" / (name + "-" + version);
    REQUIRE(write_file_atomic(image, std::string(6000, 'x') + name + version));
    auto d = module::digest_file(image).value();
    module::Manifest m{name, version, 10, d.size, d.sha256, d.fsverity, {}};
    const auto sig = module::serialize_signature(module::sign_manifest(key.get(), m).value());
    Published p{.module = {}, .image = image, .manifest = module::canonical_bytes(m), .signature = sig};
    p.module = AttachedModule{.name = name, .version = version, .priority = 10, .required = false, .depends = {},
                              .image_digest = env.store.put_file(image, 1 << 20).value(),
                              .fsverity_digest = module::fsverity_display(d.fsverity),
                              .manifest_digest = env.store.put_bytes(p.manifest).value(),
                              .signature_digest = env.store.put_bytes(sig).value(), .key_id = module::key_id(key.get()).value(),
                              .source = "127.0.0.1:5000/cairn/" + name + "@" + oci_digest(name, version),
                              .verity = "unavailable: test", .attached_at = kNow};
    registry.push_back(p);
    return p.module;
  }

  // Runs on the reconciler's worker thread.
  FetchFn fetch() {
    return [this](const protocol::ModuleRef& d) -> Result<AttachedModule> {
      ++fetches;
      if (!registry_up) return fail(Errc::unavailable, "GET 127.0.0.1:5000/v2/cairn/" + d.name + ": Connection refused");
      for (const auto& p : registry) {
        if (!p.module.source.ends_with("@" + d.digest)) continue;
        if (!env.store.put_file(p.image, 1 << 20) || !env.store.put_bytes(p.manifest) || !env.store.put_bytes(p.signature)) {
          return fail(Errc::io, "fake registry: the store refused " + d.name);
        }
        return p.module;
      }
      return fail(refusal, "module " + d.name + ": no trusted signature verifies (signed by a foreign key)");
    };
  }
  ModuleApplyFn apply() {
    return [this](const std::vector<protocol::ModuleRef>& desired, const std::string& now, const std::function<bool()>& stop) {
      return update(env, fake, fetch(), desired, now, stop);
    };
  }
  AttachedFn attached() {
    return [this] { return env.store.load_attached(); };
  }
  [[nodiscard]] std::filesystem::path record() const { return tmp.path() / "persist/cairn/modules/reconciled.json"; }

  [[nodiscard]] std::vector<std::string> attached_names() const {
    std::vector<std::string> out;
    const auto attached = env.store.load_attached().value();
    for (const auto& a : attached) out.push_back(a.name + "@" + a.version);
    return out;
  }
  [[nodiscard]] std::string file(const std::filesystem::path& p) const {
    return read_file_if_exists(p, 1 << 20).value().value_or("");
  }
  [[nodiscard]] std::string events() const { return file(env.store.dir() / "events.pending"); }
};

struct Rig {
  Host h;
  test::ManualClock clock;
  ReconcilerOptions options{.min_backoff = 1s, .max_backoff = 8s};
  std::unique_ptr<ModuleReconciler> r = make();

  // random01 = 1: the backoff is exactly min * 2^(n-1), capped at max.
  std::unique_ptr<ModuleReconciler> make() {
    return std::make_unique<ModuleReconciler>(clock, [] { return 1.0; }, options, h.apply(), h.attached(), h.record());
  }
  // The update on the worker ends: its outcome (the service's loop would tick on its own).
  ModuleReconciler::Finished finish() {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto f = r->tick()) return *f;
      std::this_thread::sleep_for(1ms);
    }
    FAIL("the reconciler's update did not end within 20 s");
    return {};
  }
  std::optional<ModuleReconciler::Finished> offer(std::vector<protocol::ModuleRef> desired, std::uint64_t policy = 0) {
    return r->offer({std::move(desired), policy});
  }
};

// The union, the attached list and the union state, to compare before and after.
struct Snapshot {
  std::map<std::filesystem::path, std::vector<std::string>> mounts;
  std::string attached;
  std::string union_state;
  bool operator==(const Snapshot&) const = default;
};
Snapshot snapshot(const Host& h) {
  return {h.fake.live(), h.file(h.env.store.dir() / "state.json"), h.file(h.env.paths.run_dir / "union.json")};
}

}  // namespace

TEST_CASE("a new desired set is applied once on the worker; the same set again fetches nothing, across a restart too") {
  Rig t;
  t.h.publish("web", "1");
  CHECK_FALSE(t.offer({want("web", "1")}));  // started, not waited for: the heartbeat goes on
  CHECK(t.r->busy());
  const auto f = t.finish();
  CHECK(f.applied);
  CHECK(f.changed);
  CHECK_FALSE(f.error);
  REQUIRE(f.outcome);
  REQUIRE(f.outcome->change.union_outcome.state.layers.size() == 1);
  CHECK(t.h.attached_names() == std::vector<std::string>{"web@1"});
  CHECK(t.h.fake.count("overlay") == 1);
  CHECK(t.h.fetches == 1);
  CHECK(t.h.file(t.h.record()).find(oci_digest("web", "1")) != std::string::npos);

  // Every later heartbeat brings the same set: nothing starts, nothing is fetched.
  for (int i = 0; i < 5; ++i) {
    CHECK_FALSE(t.offer({want("web", "1")}));
    CHECK_FALSE(t.r->busy());
    t.clock.advance(60s);
  }
  CHECK(t.r->attempts() == 1);
  CHECK(t.h.fetches == 1);
  CHECK_FALSE(t.r->retry_at());

  // The service starts again: the record says where the node was brought to.
  t.r = t.make();
  CHECK_FALSE(t.offer({want("web", "1")}));
  CHECK_FALSE(t.r->busy());
  CHECK(t.r->attempts() == 0);
  CHECK(t.h.fetches == 1);
  CHECK(t.h.fake.count("overlay") == 1);
}

TEST_CASE("a failed update is retried after a growing backoff, not on every heartbeat; a new digest is tried at once") {
  Rig t;
  t.h.publish("web", "1");
  t.h.publish("web", "2");
  t.h.registry_up = false;
  t.offer({want("web", "1")});
  auto f = t.finish();
  CHECK_FALSE(f.applied);
  REQUIRE(f.error);
  CHECK(f.error->code == Errc::unavailable);
  CHECK(f.retry_in == 1s);
  CHECK(t.h.fetches == 1);
  REQUIRE(t.r->retry_at());
  CHECK(*t.r->retry_at() == t.clock.monotonic() + 1s);

  // Heartbeats before the backoff passed: no fetch.
  t.clock.advance(400ms);
  CHECK_FALSE(t.offer({want("web", "1")}));
  t.clock.advance(599ms);
  CHECK_FALSE(t.r->tick());
  CHECK_FALSE(t.r->busy());
  CHECK(t.h.fetches == 1);

  // The backoff passed: tried again, and the next wait doubles.
  t.clock.advance(1ms);
  CHECK_FALSE(t.r->tick());
  CHECK(t.r->busy());
  f = t.finish();
  CHECK(t.h.fetches == 2);
  CHECK(f.retry_in == 2s);
  CHECK(t.r->failures() == 2);
  t.clock.advance(2s);
  t.r->tick();
  f = t.finish();
  CHECK(f.retry_in == 4s);
  t.clock.advance(4s);
  t.r->tick();
  f = t.finish();
  CHECK(f.retry_in == 8s);
  t.clock.advance(8s);
  t.r->tick();
  f = t.finish();
  CHECK(f.retry_in == 8s);  // the cap
  CHECK(t.h.fetches == 5);

  // Control assigns another version: tried at once, whatever the backoff.
  t.clock.advance(1s);
  CHECK_FALSE(t.offer({want("web", "2")}));
  CHECK(t.r->busy());
  f = t.finish();
  CHECK(t.h.fetches == 6);
  CHECK(f.retry_in == 1s);  // a new set, a new episode
  CHECK(t.r->failures() == 1);

  // The registry is back: the retry lands and the backoff is over.
  t.h.registry_up = true;
  t.clock.advance(1s);
  t.r->tick();
  f = t.finish();
  CHECK(f.applied);
  CHECK(t.r->failures() == 0);
  CHECK_FALSE(t.r->retry_at());
  CHECK(t.h.attached_names() == std::vector<std::string>{"web@2"});
}

TEST_CASE("a module refused for a permanent reason is fetched again only after the capped backoff or for a new digest") {
  Rig t;
  t.h.publish("web", "1");
  t.offer({want("web", "1")});
  REQUIRE(t.finish().applied);
  const auto before = snapshot(t.h);

  // web 2 is signed by a foreign key (the registry fetch fails as verification would).
  t.offer({want("web", "2")});
  auto f = t.finish();
  CHECK_FALSE(f.applied);
  CHECK_FALSE(f.changed);  // web 1 stays: the union is the same set
  REQUIRE(f.error);
  CHECK(f.error->code == Errc::refused);
  CHECK(f.retry_in == 8s);  // the cap at once: the same bytes would be refused again
  CHECK(t.h.fetches == 2);
  CHECK(t.h.attached_names() == std::vector<std::string>{"web@1"});
  CHECK(t.h.events().find("module.refused.web.") != std::string::npos);

  for (int i = 0; i < 7; ++i) {
    t.clock.advance(1s);
    CHECK_FALSE(t.offer({want("web", "2")}));
    CHECK_FALSE(t.r->busy());
  }
  CHECK(t.h.fetches == 2);
  t.clock.advance(999ms);
  t.r->tick();
  CHECK(t.h.fetches == 2);
  t.clock.advance(1ms);
  t.r->tick();
  CHECK(t.r->busy());
  f = t.finish();
  CHECK(t.h.fetches == 3);
  CHECK(f.retry_in == 8s);
  CHECK(t.h.attached_names() == std::vector<std::string>{"web@1"});
  CHECK(snapshot(t.h).attached == before.attached);

  // A fixed version 3 is assigned: fetched at once.
  t.h.publish("web", "3");
  t.offer({want("web", "3")});
  f = t.finish();
  CHECK(f.applied);
  CHECK(t.h.fetches == 4);
  CHECK(t.h.attached_names() == std::vector<std::string>{"web@3"});
}

TEST_CASE("a stop during an update abandons it before the union changes; the old union stays exactly as it was") {
  Rig t;
  t.h.publish("web", "1");
  t.offer({want("web", "1")});
  REQUIRE(t.finish().applied);
  const auto before = snapshot(t.h);
  const auto record_before = t.h.file(t.h.record());

  // api 1 downloads until the stop (as a download aborted by the stop does).
  std::atomic<bool> downloading{false};
  t.r = std::make_unique<ModuleReconciler>(
      t.clock, [] { return 1.0; }, t.options,
      [&](const std::vector<protocol::ModuleRef>& desired, const std::string& now, const std::function<bool()>& stop) {
        const FetchFn slow = [&](const protocol::ModuleRef& d) -> Result<AttachedModule> {
          if (d.name == "web") return t.h.registry.front().module;
          downloading = true;
          const auto deadline = std::chrono::steady_clock::now() + 20s;
          while (!stop() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
          return fail(Errc::temporary, "GET blob of " + d.name + ": abandoned, the agent is stopping");
        };
        return update(t.h.env, t.h.fake, slow, desired, now, stop);
      },
      t.h.attached(), t.h.record());
  t.offer({want("web", "1"), want("api", "1")});
  REQUIRE(t.r->busy());
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!downloading && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  REQUIRE(downloading);

  t.r->request_stop();
  CHECK(t.r->wait(t.clock.monotonic() + 20s));  // it ends by itself: no time had to pass
  CHECK_FALSE(t.r->busy());
  CHECK(snapshot(t.h) == before);
  CHECK(t.h.file(t.h.record()) == record_before);
  CHECK(t.h.events().find("module.update_failed") == std::string::npos);
  CHECK(t.h.events().find("module.refused") == std::string::npos);
  // Stopping: nothing new starts.
  CHECK_FALSE(t.offer({want("web", "1"), want("api", "1")}));
  CHECK_FALSE(t.r->busy());
}

TEST_CASE("a stopping update that does not end by the deadline is reported, and can be left to the exit") {
  Rig t;
  // Shared with the worker, which may outlive this test's frame once abandoned.
  struct Stuck {
    std::atomic<bool> release{false};
    std::atomic<bool> exited{false};
  };
  auto stuck = std::make_shared<Stuck>();
  t.r = std::make_unique<ModuleReconciler>(
      t.clock, [] { return 1.0; }, t.options,
      [stuck](const std::vector<protocol::ModuleRef>&, const std::string&, const std::function<bool()>&)
          -> Result<UpdateOutcome> {
        // A registry request that ignores the stop until it times out.
        const auto deadline = std::chrono::steady_clock::now() + 20s;
        while (!stuck->release && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
        stuck->exited = true;
        return fail(Errc::unavailable, "registry request timed out");
      },
      t.h.attached(), t.h.record());
  t.offer({want("web", "1")});
  REQUIRE(t.r->busy());
  t.r->request_stop();
  const auto deadline = t.clock.monotonic() + 20s;
  std::thread stepper([&] {
    // The stop timeout passes on the manual clock while the worker is stuck.
    while (t.clock.monotonic() < deadline && t.clock.advance_to_next_wake()) {
    }
  });
  const bool ended = t.r->wait(deadline);
  stepper.join();
  CHECK_FALSE(ended);
  CHECK(t.r->busy());
  CHECK_FALSE(stuck->exited);
  t.r->abandon();
  CHECK_FALSE(t.r->busy());
  t.r.reset();  // returns at once: nothing left to join
  stuck->release = true;
  const auto until = std::chrono::steady_clock::now() + 20s;
  while (!stuck->exited && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  CHECK(stuck->exited);
}

TEST_CASE("a set the node already runs is recorded without a fetch; a change made by hand stands until control's set changes") {
  Rig t;
  auto web1 = t.h.publish("web", "1");
  auto api1 = t.h.publish("api", "1");
  // `cairn-agent update` by hand, before the service's reconciler saw the set.
  REQUIRE(update(t.h.env, t.h.fake, t.h.fetch(), {want("web", "1")}, kNow));
  const int fetched = t.h.fetches;
  CHECK_FALSE(t.offer({want("web", "1")}));
  CHECK_FALSE(t.r->busy());
  CHECK(t.h.fetches == fetched);
  CHECK(t.h.file(t.h.record()).find(oci_digest("web", "1")) != std::string::npos);

  // An operator detaches web on the node: the reconciler leaves it so while control's set is
  // the one it already applied.
  REQUIRE(detach(t.h.env, t.h.fake, "web"));
  CHECK_FALSE(t.offer({want("web", "1")}));
  CHECK_FALSE(t.r->busy());
  CHECK(t.h.attached_names().empty());

  // Control's set changes: the node converges on it whole.
  t.offer({want("web", "1"), want("api", "1")});
  CHECK(t.r->busy());
  const auto f = t.finish();
  CHECK(f.applied);
  CHECK(f.changed);
  CHECK(t.h.attached_names() == std::vector<std::string>{"web@1", "api@1"});
}

TEST_CASE("a new accepted trust policy re-applies the same set: every module verified again, nothing fetched") {
  Rig t;
  t.h.publish("web", "1");
  t.offer({want("web", "1")}, 1);
  REQUIRE(t.finish().applied);
  CHECK(t.h.fake.count("overlay") == 1);
  CHECK_FALSE(t.offer({want("web", "1")}, 1));
  CHECK_FALSE(t.r->busy());

  t.offer({want("web", "1")}, 2);
  CHECK(t.r->busy());
  const auto f = t.finish();
  CHECK(f.applied);
  CHECK_FALSE(f.changed);                     // the same modules: no module.applied
  CHECK(t.h.fetches == 1);                    // attached already: not fetched again
  CHECK(t.h.fake.count("overlay") == 2);      // but remounted after re-verification
  CHECK(t.h.file(t.h.record()).find("\"policy_version\": 2") != std::string::npos);
}

TEST_CASE("desired_key: the same set in any order is one key; digest, required flag and policy version count") {
  auto a = want("web", "1");
  auto b = want("api", "1");
  CHECK(desired_key({{a, b}, 1}) == desired_key({{b, a}, 1}));
  CHECK(desired_key({{a, b}, 1}) != desired_key({{a, b}, 2}));
  CHECK(desired_key({{a}, 1}) != desired_key({{want("web", "2")}, 1}));
  auto required = a;
  required.required = true;
  CHECK(desired_key({{a}, 1}) != desired_key({{required}, 1}));
}

namespace {

// A download of `chunks` pieces; counts the requests that reached it.
class ChunkedHttp final : public HttpClient {
 public:
  int sent = 0;
  int chunks_delivered = 0;
  std::function<void()> after_chunk;
  Result<HttpResponse> send(const HttpRequest& request) override {
    ++sent;
    if (!request.body_sink) return HttpResponse{200, {}, "{}"};
    for (int i = 0; i < 10; ++i) {
      if (!request.body_sink(200, "0123456789")) return fail(Errc::io, "transfer aborted by the body sink");
      ++chunks_delivered;
      if (after_chunk) after_chunk();
    }
    return HttpResponse{200, {}, ""};
  }
};

}  // namespace

TEST_CASE("the registry connection of the service's update: a stop aborts a download at its next chunk and sends nothing more") {
  auto inner = std::make_unique<ChunkedHttp>();
  auto* chunked = inner.get();
  std::atomic<bool> stopping{false};
  auto http = stoppable_http(std::move(inner), [&] { return stopping.load(); });

  HttpRequest manifest;
  manifest.url = "http://127.0.0.1:5000/v2/cairn/web/manifests/1.0";
  REQUIRE(http->send(manifest));
  CHECK(chunked->sent == 1);

  std::string received;
  HttpRequest blob;
  blob.url = "http://127.0.0.1:5000/v2/cairn/web/blobs/sha256:x";
  blob.body_sink = [&](long, std::string_view chunk) {
    received += chunk;
    return true;
  };
  chunked->after_chunk = [&] {
    if (chunked->chunks_delivered == 3) stopping = true;  // SIGTERM arrives mid-download
  };
  auto aborted = http->send(blob);
  REQUIRE_FALSE(aborted);
  CHECK(aborted.error().code == Errc::temporary);  // not retried by the registry client
  CHECK(aborted.error().message.find("the agent is stopping") != std::string::npos);
  CHECK(chunked->chunks_delivered == 3);
  CHECK(received.size() == 30);

  auto refused = http->send(manifest);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::temporary);
  CHECK(chunked->sent == 2);  // nothing reached the registry after the stop
}
