// The OCI client and module artifacts against the real docker-registry 2.8 on loopback:
// push and pull, chunked uploads, the referrers tag fallback, and the bad input of issue 14
// (a registry answering 500 then 200, a truncated or altered blob, absurd sizes, a
// signature by another key, token auth).
#include <doctest/doctest.h>

#include <fstream>
#include <mutex>
#include <random>
#include <set>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/manifest.hpp"
#include "common/module/signature.hpp"
#include "common/oci/module_artifact.hpp"
#include "tests/integration/module/registry_fixture.hpp"
#include "tests/support/skip.hpp"

using namespace cairn;
using namespace std::chrono_literals;

namespace {

// Backoff without waiting: records each requested sleep and returns at once.
class RecordingClock final : public Clock {
 public:
  [[nodiscard]] WallTime now() const override { return std::chrono::system_clock::now(); }
  [[nodiscard]] MonoTime monotonic() const override { return base_; }
  bool sleep_until(MonoTime deadline, int) const override {
    std::lock_guard lock(mutex_);
    sleeps.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - base_));
    return false;
  }
  mutable std::vector<std::chrono::milliseconds> sleeps;

 private:
  MonoTime base_ = std::chrono::steady_clock::now();
  mutable std::mutex mutex_;
};

// A signed module (random image bytes standing in for an EROFS image: the registry and the
// client do not look inside) written to dir: img, manifest text, signature text, key.
struct Module {
  std::filesystem::path image;
  module::Manifest manifest;
  std::string manifest_text;
  std::string signature_text;
  EvpPkey key;
};

Module make_module(const std::filesystem::path& dir, std::size_t size, const std::string& name = "tools") {
  Module m;
  m.image = dir / (name + ".erofs");
  std::string bytes(size, '\0');
  std::mt19937 rng(static_cast<unsigned>(size));
  for (auto& c : bytes) c = static_cast<char>(rng());
  REQUIRE(write_file_atomic(m.image, bytes).has_value());
  auto d = module::digest_file(m.image);
  REQUIRE(d.has_value());
  m.manifest = module::Manifest{name, "1.0", 10, d->size, d->sha256, d->fsverity, {}};
  m.manifest_text = module::canonical_bytes(m.manifest) + "\n";
  auto key = generate_key(KeyType::ed25519);
  REQUIRE(key.has_value());
  m.key = std::move(*key);
  auto sig = module::sign_manifest(m.key.get(), m.manifest);
  REQUIRE(sig.has_value());
  m.signature_text = module::serialize_signature(*sig);
  return m;
}

oci::RegistryOptions plain(std::uint64_t chunk = 16ULL << 20) {
  oci::RegistryOptions o;
  o.scheme = "http";
  o.chunk_size = chunk;
  o.backoff = 10ms;
  return o;
}

bool is_blob_get(const test::HttpServer::Request& r) {
  return r.method == "GET" && r.path.find("/blobs/sha256:") != std::string::npos;
}

}  // namespace

TEST_CASE("a module pushed to docker-registry pulls back whole, with its signature found by the referrers tag") {
  test::RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  test::TempDir dir;
  const Module m = make_module(dir.path(), 3 * 1024 * 1024 + 17);
  auto http = make_http_client();
  // A 1 MiB chunk size sends the 3 MiB image as chunked PATCHes.
  oci::Registry registry(*http, reg.host(), plain(1 << 20));
  auto ref = oci::parse_reference(reg.host() + "/cairn/tools:1.0");
  REQUIRE(ref.has_value());

  auto pushed = oci::push_module(registry, *ref, m.image, m.manifest_text, m.signature_text);
  REQUIRE_MESSAGE(pushed.has_value(), pushed.error().message);
  CHECK(pushed->referrers_tag);  // registry 2.8 has no referrers API
  REQUIRE(pushed->signature.has_value());
  auto index = registry.get_manifest("cairn/tools", oci::referrers_tag(pushed->manifest.digest));
  REQUIRE(index.has_value());
  REQUIRE(index->has_value());
  CHECK((*index)->bytes.find(pushed->signature->digest) != std::string::npos);

  auto resolved = oci::resolve_module(registry, *ref);
  REQUIRE_MESSAGE(resolved.has_value(), resolved.error().message);
  CHECK(resolved->manifest_digest == pushed->manifest.digest);
  CHECK(resolved->module_manifest == m.manifest_text);
  REQUIRE(resolved->signatures.size() == 1);
  CHECK(resolved->signatures[0] == m.signature_text);

  const auto dest = dir.path() / "pulled.erofs";
  REQUIRE(oci::fetch_image(registry, *ref, *resolved, dest).has_value());
  auto d = module::digest_file(dest);
  REQUIRE(d.has_value());
  auto parsed = module::parse_manifest(resolved->module_manifest);
  REQUIRE(parsed.has_value());
  CHECK(module::check_image(*parsed, *d).has_value());
  auto sig = module::parse_signature(resolved->signatures[0]);
  REQUIRE(sig.has_value());
  CHECK(module::verify_manifest(*parsed, *sig, m.key.get()).has_value());
  CHECK_FALSE(std::filesystem::exists(dest.string() + ".partial"));

  // A second push of the same module uploads no blob again and keeps one index entry.
  auto again = oci::push_module(registry, *ref, m.image, m.manifest_text, m.signature_text);
  REQUIRE_MESSAGE(again.has_value(), again.error().message);
  auto sigs = oci::find_signatures(registry, "cairn/tools", pushed->manifest.digest);
  REQUIRE(sigs.has_value());
  CHECK(sigs->size() == 1);

  // Pull by digest works too.
  auto by_digest = oci::parse_reference(reg.host() + "/cairn/tools@" + pushed->manifest.digest);
  REQUIRE(by_digest.has_value());
  CHECK(oci::resolve_module(registry, *by_digest).has_value());
}

TEST_CASE("a second signer's signature is listed beside the first; a module without any has none") {
  test::RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  test::TempDir dir;
  Module m = make_module(dir.path(), 10000);
  auto http = make_http_client();
  oci::Registry registry(*http, reg.host(), plain());
  auto ref = oci::parse_reference(reg.host() + "/cairn/two:1");
  REQUIRE(ref.has_value());
  auto unsigned_push = oci::push_module(registry, *ref, m.image, m.manifest_text, "");
  REQUIRE(unsigned_push.has_value());
  auto none = oci::resolve_module(registry, *ref);
  REQUIRE(none.has_value());
  CHECK(none->signatures.empty());

  auto other = generate_key(KeyType::p256);
  REQUIRE(other.has_value());
  auto sig2 = module::sign_manifest(other->get(), m.manifest);
  REQUIRE(sig2.has_value());
  REQUIRE(oci::attach_signature(registry, "cairn/two", unsigned_push->manifest, m.signature_text).has_value());
  REQUIRE(oci::attach_signature(registry, "cairn/two", unsigned_push->manifest, module::serialize_signature(*sig2)).has_value());
  auto both = oci::resolve_module(registry, *ref);
  REQUIRE(both.has_value());
  CHECK(both->signatures.size() == 2);
}

TEST_CASE("a registry answering 500 before 200 is retried with backoff, for push and pull") {
  test::RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  test::TempDir dir;
  const Module m = make_module(dir.path(), 200000);
  test::RegistryProxy proxy(reg.base_url());
  std::mutex seen_mutex;
  std::set<std::string> seen;
  std::atomic<int> failed{0};
  proxy.before = [&](const test::HttpServer::Request& req) -> std::optional<test::HttpServer::Response> {
    std::lock_guard lock(seen_mutex);
    if (seen.insert(req.method + " " + req.path).second) {  // the first try of every request: 500
      ++failed;
      test::HttpServer::Response r;
      r.status = 500;
      r.body = R"({"errors":[{"code":"UNKNOWN","message":"injected"}]})";
      return r;
    }
    return std::nullopt;
  };
  RecordingClock clock;
  auto http = make_http_client();
  oci::Registry registry(*http, proxy.host(), plain(), clock);
  auto ref = oci::parse_reference(proxy.host() + "/cairn/flaky:1");
  REQUIRE(ref.has_value());
  auto pushed = oci::push_module(registry, *ref, m.image, m.manifest_text, m.signature_text);
  REQUIRE_MESSAGE(pushed.has_value(), pushed.error().message);
  auto resolved = oci::resolve_module(registry, *ref);
  REQUIRE_MESSAGE(resolved.has_value(), resolved.error().message);
  REQUIRE(oci::fetch_image(registry, *ref, *resolved, dir.path() / "out.erofs").has_value());
  CHECK(failed.load() > 5);
  CHECK(registry.retries() >= static_cast<std::size_t>(failed.load()) / 2);
  REQUIRE_FALSE(clock.sleeps.empty());
  CHECK(clock.sleeps.front() == 10ms);  // the first backoff is the configured one

  // A registry that never recovers: the error says so after the configured tries.
  proxy.before = [&](const test::HttpServer::Request&) -> std::optional<test::HttpServer::Response> {
    test::HttpServer::Response r;
    r.status = 503;
    return r;
  };
  clock.sleeps.clear();
  auto down = oci::resolve_module(registry, *ref);
  REQUIRE_FALSE(down.has_value());
  CHECK(down.error().code == Errc::unavailable);
  CHECK(down.error().message.find("after 4 tries") != std::string::npos);
  CHECK(clock.sleeps == std::vector<std::chrono::milliseconds>{10ms, 20ms, 40ms});
}

TEST_CASE("a dropped blob download resumes with Range; a truncated or altered blob is refused and removed") {
  test::RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  test::TempDir dir;
  const Module m = make_module(dir.path(), 1 << 20);
  auto http = make_http_client();
  {
    oci::Registry direct(*http, reg.host(), plain());
    auto ref = oci::parse_reference(reg.host() + "/cairn/blob:1");
    REQUIRE(ref.has_value());
    REQUIRE(oci::push_module(direct, *ref, m.image, m.manifest_text, m.signature_text).has_value());
  }
  test::RegistryProxy proxy(reg.base_url());
  auto ref = oci::parse_reference(proxy.host() + "/cairn/blob:1");
  REQUIRE(ref.has_value());
  RecordingClock clock;
  oci::Registry registry(*http, proxy.host(), plain(), clock);
  auto resolved = oci::resolve_module(registry, *ref);
  REQUIRE(resolved.has_value());

  SUBCASE("the first answer is cut short; the retry asks for the rest only") {
    std::atomic<int> image_gets{0};
    std::string second_range;
    proxy.after = [&](const test::HttpServer::Request& r, test::HttpServer::Response& out) {
      if (!is_blob_get(r) || r.path.find(resolved->image.digest) == std::string::npos) return;
      if (image_gets++ == 0) {
        out.body.resize(out.body.size() / 3);  // the connection "breaks" after a third
      } else {
        second_range = r.header("range");
      }
    };
    const auto dest = dir.path() / "resumed.erofs";
    REQUIRE(oci::fetch_image(registry, *ref, *resolved, dest).has_value());
    CHECK(second_range == "bytes=" + std::to_string((1 << 20) / 3) + "-");
    auto d = module::digest_file(dest);
    REQUIRE(d.has_value());
    CHECK(d->sha256 == m.manifest.sha256);
  }
  SUBCASE("a server that ignores Range sends the whole blob again, and the download starts over") {
    proxy.forward_range = false;
    std::atomic<int> image_gets{0};
    proxy.after = [&](const test::HttpServer::Request& r, test::HttpServer::Response& out) {
      if (is_blob_get(r) && r.path.find(resolved->image.digest) != std::string::npos && image_gets++ == 0) {
        out.body.resize(out.body.size() / 3);
      }
    };
    const auto dest = dir.path() / "restarted.erofs";
    REQUIRE(oci::fetch_image(registry, *ref, *resolved, dest).has_value());
    CHECK(image_gets.load() == 2);
    auto d = module::digest_file(dest);
    REQUIRE(d.has_value());
    CHECK(d->sha256 == m.manifest.sha256);
    CHECK(d->size == m.manifest.size);
  }
  SUBCASE("a blob the registry always serves short is refused as truncated") {
    proxy.after = [&](const test::HttpServer::Request& r, test::HttpServer::Response& out) {
      if (is_blob_get(r) && r.path.find(resolved->image.digest) != std::string::npos) out.body.resize(out.body.size() / 2);
    };
    const auto dest = dir.path() / "short.erofs";
    auto s = oci::fetch_image(registry, *ref, *resolved, dest);
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().code == Errc::data);
    CHECK(s.error().message.find("truncated") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dest));
    CHECK_FALSE(std::filesystem::exists(dest.string() + ".partial"));
  }
  SUBCASE("one flipped bit in the blob fails the streaming sha256") {
    proxy.after = [&](const test::HttpServer::Request& r, test::HttpServer::Response& out) {
      if (is_blob_get(r) && r.path.find(resolved->image.digest) != std::string::npos) out.body[4242] ^= 0x01;
    };
    const auto dest = dir.path() / "flipped.erofs";
    auto s = oci::fetch_image(registry, *ref, *resolved, dest);
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().code == Errc::data);
    CHECK(s.error().message.find("hash to") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dest));
    CHECK_FALSE(std::filesystem::exists(dest.string() + ".partial"));
  }
  SUBCASE("an altered module manifest blob is refused before any image byte is fetched") {
    proxy.after = [&](const test::HttpServer::Request& r, test::HttpServer::Response& out) {
      if (is_blob_get(r) && !out.body.empty() && out.body.front() == '{') out.body[out.body.size() / 2] ^= 0x02;
    };
    auto again = oci::resolve_module(registry, *ref);
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().code == Errc::data);
  }
}

TEST_CASE("a registry that stalls mid-blob is given up on after the stall timeout; the next run resumes the partial file") {
  test::RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  test::TempDir dir;
  const Module m = make_module(dir.path(), 600000);
  auto http = make_http_client();
  {
    oci::Registry direct(*http, reg.host(), plain());
    REQUIRE(oci::push_module(direct, *oci::parse_reference(reg.host() + "/cairn/stall:1"), m.image, m.manifest_text,
                             m.signature_text)
                .has_value());
  }
  test::RegistryProxy proxy(reg.base_url());
  auto ref = oci::parse_reference(proxy.host() + "/cairn/stall:1");
  REQUIRE(ref.has_value());
  auto options = plain();
  options.attempts = 2;
  options.stall_timeout = std::chrono::seconds(1);
  RecordingClock clock;
  oci::Registry registry(*http, proxy.host(), options, clock);
  auto resolved = oci::resolve_module(registry, *ref);
  REQUIRE(resolved.has_value());
  std::atomic<bool> stall{true};
  std::atomic<int> image_gets{0};
  proxy.before = [&](const test::HttpServer::Request& r) -> std::optional<test::HttpServer::Response> {
    if (!is_blob_get(r) || r.path.find(resolved->image.digest) == std::string::npos) return std::nullopt;
    if (image_gets++ == 0) return std::nullopt;  // the first answer is cut short below
    if (!stall) return std::nullopt;
    test::HttpServer::Response silent;
    silent.never_answer = true;
    return silent;
  };
  proxy.after = [&](const test::HttpServer::Request& r, test::HttpServer::Response& out) {
    if (is_blob_get(r) && r.path.find(resolved->image.digest) != std::string::npos && image_gets.load() == 1) {
      out.body.resize(250000);
    }
  };
  const auto dest = dir.path() / "stalled.erofs";
  const auto started = std::chrono::steady_clock::now();
  auto s = oci::fetch_image(registry, *ref, *resolved, dest);
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().code == Errc::unavailable);
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(20));
  CHECK_FALSE(std::filesystem::exists(dest));
  REQUIRE(std::filesystem::exists(dest.string() + ".partial"));
  CHECK(std::filesystem::file_size(dest.string() + ".partial") == 250000);

  // A later run (a new client) picks up the partial file and asks only for the rest.
  stall = false;
  std::string range;
  proxy.after = [&](const test::HttpServer::Request& r, test::HttpServer::Response&) {
    if (is_blob_get(r) && r.path.find(resolved->image.digest) != std::string::npos) range = r.header("range");
  };
  oci::Registry later(*http, proxy.host(), plain());
  REQUIRE(oci::fetch_image(later, *ref, *resolved, dest).has_value());
  CHECK(range == "bytes=250000-");
  auto d = module::digest_file(dest);
  REQUIRE(d.has_value());
  CHECK(d->sha256 == m.manifest.sha256);
}

TEST_CASE("manifests with absurd sizes or of other artifacts are refused") {
  test::RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  auto http = make_http_client();
  oci::Registry registry(*http, reg.host(), plain());
  auto config = registry.push_blob_bytes("cairn/absurd", "{}", "application/vnd.oci.empty.v1+json");
  REQUIRE(config.has_value());
  Json manifest = {{"schemaVersion", 2},
                   {"mediaType", oci::kOciManifest},
                   {"artifactType", oci::kModuleArtifactType},
                   {"config", oci::descriptor_json(*config)},
                   {"layers", Json::array({Json{{"mediaType", oci::kModuleImageType},
                                                {"digest", config->digest},
                                                {"size", 1ULL << 60}}})}};
  auto put = registry.put_manifest("cairn/absurd", "1", dump_json(manifest), std::string(oci::kOciManifest));
  REQUIRE_MESSAGE(put.has_value(), put.error().message);
  auto ref = oci::parse_reference(reg.host() + "/cairn/absurd:1");
  REQUIRE(ref.has_value());
  auto r = oci::resolve_module(registry, *ref);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Errc::data);
  CHECK(r.error().message.find("over the cap") != std::string::npos);

  manifest["artifactType"] = "application/vnd.example.other";
  REQUIRE(registry.put_manifest("cairn/absurd", "2", dump_json(manifest), std::string(oci::kOciManifest)).has_value());
  auto other = oci::resolve_module(registry, *oci::parse_reference(reg.host() + "/cairn/absurd:2"));
  REQUIRE_FALSE(other.has_value());
  CHECK(other.error().message.find("not a Cairn module") != std::string::npos);

  auto missing = oci::resolve_module(registry, *oci::parse_reference(reg.host() + "/cairn/absurd:nope"));
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Errc::unavailable);
}

TEST_CASE("a signature by another key than the trusted one is refused after the pull") {
  test::RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  test::TempDir dir;
  const Module m = make_module(dir.path(), 5000);
  auto http = make_http_client();
  oci::Registry registry(*http, reg.host(), plain());
  auto ref = oci::parse_reference(reg.host() + "/cairn/foreign:1");
  REQUIRE(ref.has_value());
  REQUIRE(oci::push_module(registry, *ref, m.image, m.manifest_text, m.signature_text).has_value());
  auto resolved = oci::resolve_module(registry, *ref);
  REQUIRE(resolved.has_value());
  REQUIRE(resolved->signatures.size() == 1);
  auto trusted = generate_key(KeyType::ed25519);
  REQUIRE(trusted.has_value());
  auto sig = module::parse_signature(resolved->signatures[0]);
  REQUIRE(sig.has_value());
  auto verdict = module::verify_manifest(m.manifest, *sig, trusted->get());
  REQUIRE_FALSE(verdict.has_value());
  CHECK(verdict.error().code == Errc::refused);
}

TEST_CASE("a bearer-token registry: the client follows the realm challenge with basic credentials") {
  test::RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  test::TempDir dir;
  const Module m = make_module(dir.path(), 3000);
  test::RegistryProxy proxy(reg.base_url());
  std::atomic<int> tokens_issued{0};
  const std::string good_basic = "Basic " + std::string("YWxpY2U6czNjcmV0");  // alice:s3cret
  proxy.before = [&](const test::HttpServer::Request& r) -> std::optional<test::HttpServer::Response> {
    test::HttpServer::Response out;
    if (r.path == "/token") {
      if (r.header("authorization") != good_basic || r.query_param("scope").empty()) {
        out.status = 401;
        return out;
      }
      ++tokens_issued;
      out.body = R"({"token":"t0ken"})";
      return out;
    }
    if (r.header("authorization") == "Bearer t0ken") return std::nullopt;
    out.status = 401;
    out.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"http://" + proxy.host() +
                                                     "/token\",service=\"test\",scope=\"repository:cairn/auth:pull,push\"");
    return out;
  };
  auto ref = oci::parse_reference(proxy.host() + "/cairn/auth:1");
  REQUIRE(ref.has_value());
  auto http = make_http_client();
  auto options = plain();
  options.username = "alice";
  options.password = "s3cret";
  oci::Registry registry(*http, proxy.host(), options);
  REQUIRE(oci::push_module(registry, *ref, m.image, m.manifest_text, m.signature_text).has_value());
  REQUIRE(oci::resolve_module(registry, *ref).has_value());
  CHECK(tokens_issued.load() == 1);  // the token is reused

  options.password = "wrong";
  oci::Registry intruder(*http, proxy.host(), options);
  auto refused = oci::resolve_module(intruder, *ref);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Errc::refused);
}

TEST_CASE("a basic-auth registry gets the user name and password, and a wrong one is refused") {
  test::RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  test::TempDir dir;
  const Module m = make_module(dir.path(), 3000);
  test::RegistryProxy proxy(reg.base_url());
  proxy.before = [&](const test::HttpServer::Request& r) -> std::optional<test::HttpServer::Response> {
    if (r.header("authorization") == "Basic Ym9iOmh1bnRlcjI=") return std::nullopt;  // bob:hunter2
    test::HttpServer::Response out;
    out.status = 401;
    out.headers.emplace_back("WWW-Authenticate", "Basic realm=\"registry\"");
    return out;
  };
  auto ref = oci::parse_reference(proxy.host() + "/cairn/basic:1");
  REQUIRE(ref.has_value());
  auto http = make_http_client();
  auto options = plain();
  options.username = "bob";
  options.password = "hunter2";
  oci::Registry registry(*http, proxy.host(), options);
  auto pushed = oci::push_module(registry, *ref, m.image, m.manifest_text, m.signature_text);
  REQUIRE_MESSAGE(pushed.has_value(), pushed.error().message);
  CHECK(oci::resolve_module(registry, *ref).has_value());

  oci::Registry anonymous(*http, proxy.host(), plain());
  auto no_credentials = oci::resolve_module(anonymous, *ref);
  REQUIRE_FALSE(no_credentials.has_value());
  CHECK(no_credentials.error().code == Errc::refused);
  CHECK(no_credentials.error().hint.find("--username") != std::string::npos);

  options.password = "wrong";
  oci::Registry wrong(*http, proxy.host(), options);
  auto refused = oci::resolve_module(wrong, *ref);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Errc::refused);
}

TEST_CASE("registry references parse strictly") {
  auto ok = oci::parse_reference("127.0.0.1:5000/cairn/tools:1.0");
  REQUIRE(ok.has_value());
  CHECK(ok->registry == "127.0.0.1:5000");
  CHECK(ok->repository == "cairn/tools");
  CHECK(ok->tag == "1.0");
  CHECK_FALSE(oci::parse_reference("cairn/tools:1.0").has_value());  // no registry host
  CHECK_FALSE(oci::parse_reference("127.0.0.1:5000/Cairn/tools:1").has_value());
  CHECK_FALSE(oci::parse_reference("127.0.0.1:5000/cairn/../x:1").has_value());
  CHECK_FALSE(oci::parse_reference("127.0.0.1:5000/cairn/tools").has_value());
  CHECK_FALSE(oci::parse_reference("127.0.0.1:5000/cairn/tools@sha256:abc").has_value());
}
