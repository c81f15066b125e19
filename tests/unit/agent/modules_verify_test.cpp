// Verification of a module: every bad input of issue 14 that verify sees is refused with a
// clear error; a good module passes, and fs-verity is reported unavailable on this kernel.
#include <doctest/doctest.h>

#include <fstream>

#include "agent/modules/store.hpp"
#include "agent/modules/verify.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/fsverity.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent::modules;

namespace {

struct SignedModule {
  test::TempDir tmp;
  std::filesystem::path image = tmp.path() / "web.erofs";
  module::Manifest manifest;
  std::string manifest_text;
  std::string signature_text;
  EvpPkey key;
  TrustPolicy policy;

  SignedModule() {
    std::string bytes(3 * 4096 + 17, '\0');
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 31 + 7);
    REQUIRE(write_file_atomic(image, bytes));
    auto d = module::digest_file(image);
    REQUIRE(d);
    manifest.name = "web";
    manifest.version = "1.0";
    manifest.priority = 10;
    manifest.size = d->size;
    manifest.sha256 = d->sha256;
    manifest.fsverity = d->fsverity;
    manifest_text = module::canonical_bytes(manifest);
    key = std::move(generate_key(KeyType::ed25519).value());
    signature_text = module::serialize_signature(module::sign_manifest(key.get(), manifest).value());
    trust(policy, "web", key.get());
  }

  static void trust(TrustPolicy& p, const std::string& name, const EVP_PKEY* k) {
    auto pub = parse_public_key_pem(public_key_pem(k).value()).value();
    const auto id = module::key_id(pub.get()).value();
    p.allowed[name].push_back(id);
    p.keys.emplace(id, std::move(pub));
  }

  [[nodiscard]] VerifyRequest request() const {
    return {.manifest_text = manifest_text, .signatures = {signature_text}, .image = image};
  }
};

void flip_bit(std::string& s, std::size_t at) { s[at] = static_cast<char>(s[at] ^ 0x01); }

}  // namespace

TEST_CASE("a module signed by an allowed key, with its image intact, verifies") {
  SignedModule m;
  auto r = m.request();
  r.expect_name = "web";
  r.expect_version = "1.0";
  auto ok = verify_module(r, m.policy);
  REQUIRE_MESSAGE(ok, (ok ? "" : ok.error().message));
  CHECK(ok->manifest.name == "web");
  CHECK(ok->key_id == module::key_id(m.key.get()).value());
  // This kernel has no fs-verity: said so, not an error (the real path is proved in a VM, issue 16).
  CHECK(ok->verity.starts_with("not enabled (read-only check)"));
}

TEST_CASE("fs-verity on a filesystem without it is reported unavailable, with the reason") {
  SignedModule m;
  auto v = kernel_verity(m.image, true);
  REQUIRE(v);
  if (v->enabled) {
    CHECK(v->measured_hex == m.manifest.fsverity);  // a kernel with fs-verity: the measurement matches
  } else {
    CHECK(v->unavailable.find("lacks fs-verity") != std::string::npos);
  }
}

TEST_CASE("one flipped bit in the image, the manifest or the signature is refused") {
  SignedModule m;
  SUBCASE("image") {
    auto bytes = read_file(m.image, 1 << 20).value();
    flip_bit(bytes, 5000);
    REQUIRE(write_file_atomic(m.image, bytes));
    auto r = verify_module(m.request(), m.policy);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::data);
    CHECK(r.error().message.find("sha256 check failed") != std::string::npos);
  }
  SUBCASE("manifest: a value changes, the signature no longer covers it") {
    auto r0 = m.request();
    const auto at = r0.manifest_text.find("\"version\":\"1.0\"");
    REQUIRE(at != std::string::npos);
    flip_bit(r0.manifest_text, at + 13);  // "1.0" -> "1.1": still a valid manifest
    auto r = verify_module(r0, m.policy);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::refused);
    CHECK(r.error().message.find("no trusted signature verifies") != std::string::npos);
  }
  SUBCASE("manifest: the JSON breaks") {
    auto r0 = m.request();
    flip_bit(r0.manifest_text, 0);  // '{' -> 'z'
    auto r = verify_module(r0, m.policy);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::data);
  }
  SUBCASE("signature") {
    auto r0 = m.request();
    const auto at = r0.signatures[0].find("\"signature\": \"");
    REQUIRE(at != std::string::npos);
    auto& s = r0.signatures[0];
    s[at + 15] = s[at + 15] == '0' ? '1' : '0';  // one bit of the first hex digit's value
    auto r = verify_module(r0, m.policy);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::refused);
  }
}

TEST_CASE("a signature by a key outside the policy, or none, is refused") {
  SignedModule m;
  SUBCASE("another key") {
    auto other = generate_key(KeyType::p256).value();
    auto r0 = m.request();
    r0.signatures = {module::serialize_signature(module::sign_manifest(other.get(), m.manifest).value())};
    auto r = verify_module(r0, m.policy);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::refused);
    CHECK(r.error().message.find("which the trust policy does not allow for module web") != std::string::npos);
  }
  SUBCASE("the key is trusted for another module only") {
    TrustPolicy p;
    SignedModule::trust(p, "db", m.key.get());
    auto r = verify_module(m.request(), p);
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("the trust policy allows no key for module web") != std::string::npos);
  }
  SUBCASE("\"*\" allows a key for every name") {
    TrustPolicy p;
    SignedModule::trust(p, "*", m.key.get());
    CHECK(verify_module(m.request(), p));
  }
  SUBCASE("unsigned") {
    auto r0 = m.request();
    r0.signatures.clear();
    auto r = verify_module(r0, m.policy);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::refused);
    CHECK(r.error().message.find("is unsigned") != std::string::npos);
  }
}

TEST_CASE("a manifest whose name or version disagrees with the assignment is refused") {
  SignedModule m;
  auto r0 = m.request();
  r0.expect_name = "db";
  auto r = verify_module(r0, m.policy);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("the assignment asks for 'db'") != std::string::npos);
  auto r1 = m.request();
  r1.expect_version = "2.0";
  auto v = verify_module(r1, m.policy);
  REQUIRE_FALSE(v);
  CHECK(v.error().message.find("the assignment asks for 2.0") != std::string::npos);
}

TEST_CASE("a truncated image and a manifest with an absurd size are refused before hashing") {
  SignedModule m;
  SUBCASE("truncated") {
    std::filesystem::resize_file(m.image, 4096);
    auto r = verify_module(m.request(), m.policy);
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("has 4096 bytes, the manifest says") != std::string::npos);
  }
  SUBCASE("absurd size in a manifest (signed, even)") {
    auto bad = m.manifest;
    bad.size = 1ULL << 50;
    auto text = module::manifest_to_json(bad).dump();
    auto r0 = m.request();
    r0.manifest_text = text;
    auto r = verify_module(r0, m.policy);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::data);
  }
}

TEST_CASE("an attached module whose store file changed on disk fails re-verification") {
  SignedModule m;
  ModuleStore store(m.tmp.path() / "store");
  auto image = store.put_file(m.image, 1 << 20);
  REQUIRE(image);
  AttachedModule a{.name = "web", .version = "1.0", .priority = 10, .required = false, .depends = {},
                   .image_digest = *image, .fsverity_digest = "", .manifest_digest = store.put_bytes(m.manifest_text).value(),
                   .signature_digest = store.put_bytes(m.signature_text).value(), .key_id = "", .source = "", .verity = "",
                   .attached_at = ""};
  REQUIRE(reverify_attached(store, a, m.policy));
  {
    std::fstream f(store.blob_path(*image).value(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x42');
  }
  auto r = reverify_attached(store, a, m.policy);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("changed since it was verified") != std::string::npos);
  // A changed manifest blob is caught by its own digest.
  REQUIRE(write_file_atomic(store.blob_path(a.manifest_digest).value(), m.manifest_text + " "));
  auto r2 = reverify_attached(store, a, m.policy);
  REQUIRE_FALSE(r2);
  CHECK(r2.error().message.find("changed on disk") != std::string::npos);
}

TEST_CASE("the store's garbage collection keeps what attached modules reference, nothing else") {
  test::TempDir tmp;
  ModuleStore store(tmp.path());
  auto kept = store.put_bytes("kept").value();
  auto gone = store.put_bytes("gone").value();
  REQUIRE(write_file_atomic(store.blob_path(gone).value().string() + ".partial", "half"));
  AttachedModule a;
  a.image_digest = kept;
  auto removed = store.collect_garbage({a});
  REQUIRE(removed);
  CHECK(*removed == 2);
  CHECK(store.has_blob(kept));
  CHECK_FALSE(store.has_blob(gone));
  CHECK_FALSE(store.blob_path("sha256:../../etc"));  // a digest is never a path
  REQUIRE(store.save_attached({a}));
  auto back = store.load_attached();
  REQUIRE(back);
  REQUIRE(back->size() == 1);
  CHECK((*back)[0].image_digest == kept);
}
