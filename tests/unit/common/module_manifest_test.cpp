// Strict manifests and detached signatures (Ed25519 and ECDSA P-256).
#include <doctest/doctest.h>

#include <sys/stat.h>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/manifest.hpp"
#include "common/module/signature.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::module;

namespace {

Manifest sample() {
  Manifest m;
  m.name = "tools";
  m.version = "1.2.0";
  m.priority = 50;
  m.size = 8192;
  m.sha256 = std::string(64, 'a');
  m.fsverity = std::string(64, 'b');
  m.dependencies = {"base"};
  return m;
}

}  // namespace

TEST_CASE("a manifest survives its canonical form and parses back equal") {
  const Manifest m = sample();
  auto back = parse_manifest(canonical_bytes(m));
  REQUIRE(back.has_value());
  CHECK(back->name == "tools");
  CHECK(back->version == "1.2.0");
  CHECK(back->priority == 50);
  CHECK(back->size == 8192);
  CHECK(back->dependencies == std::vector<std::string>{"base"});
  CHECK(canonical_bytes(*back) == canonical_bytes(m));
  // Pretty-printed input has the same canonical bytes.
  auto pretty = parse_manifest(dump_json(manifest_to_json(m), 4));
  REQUIRE(pretty.has_value());
  CHECK(canonical_bytes(*pretty) == canonical_bytes(m));
}

TEST_CASE("manifests with bad fields are refused naming the field") {
  struct Case {
    const char* what;
    const char* key;
    Json value;
    const char* expect;
  };
  const Case cases[] = {
      {"absurd size", "size", Json(1ULL << 60), "size"},
      {"zero size", "size", Json(0), "size"},
      {"negative size", "size", Json(-5), "size"},
      {"size as text", "size", Json("8192"), "size"},
      {"priority out of range", "priority", Json(100000), "priority"},
      {"name with a slash", "name", Json("../etc"), "name"},
      {"upper-case name", "name", Json("Tools"), "name"},
      {"empty version", "version", Json(""), "version"},
      {"short sha256", "sha256", Json("abc"), "sha256"},
      {"upper-case fsverity", "fsverity", Json(std::string(64, 'A')), "fsverity"},
      {"self dependency", "dependencies", Json::array({"tools"}), "itself"},
      {"duplicate dependency", "dependencies", Json::array({"a", "a"}), "twice"},
      {"dependency not a list", "dependencies", Json("base"), "dependencies"},
      {"unknown key", "extra", Json(1), "unknown key"},
      {"other format", "format", Json("cairn.module.v9"), "format"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    Json j = manifest_to_json(sample());
    j[c.key] = c.value;
    auto m = parse_manifest(dump_json(j), "test.manifest.json");
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().code == Errc::data);
    CHECK(m.error().message.find(c.expect) != std::string::npos);
  }
  CHECK_FALSE(parse_manifest("not json").has_value());
  CHECK_FALSE(parse_manifest(std::string(kMaxManifestBytes + 1, ' ')).has_value());
  Json missing = manifest_to_json(sample());
  missing.erase("sha256");
  CHECK_FALSE(parse_manifest(dump_json(missing)).has_value());
}

TEST_CASE("check_image names the failing check") {
  const Manifest m = sample();
  CHECK(check_image(m, FileDigests{8192, m.sha256, m.fsverity}).has_value());
  auto size = check_image(m, FileDigests{8191, m.sha256, m.fsverity});
  REQUIRE_FALSE(size.has_value());
  CHECK(size.error().message.starts_with("size check failed"));
  auto sha = check_image(m, FileDigests{8192, std::string(64, 'c'), m.fsverity});
  REQUIRE_FALSE(sha.has_value());
  CHECK(sha.error().message.starts_with("sha256 check failed"));
  auto verity = check_image(m, FileDigests{8192, m.sha256, std::string(64, 'c')});
  REQUIRE_FALSE(verity.has_value());
  CHECK(verity.error().message.starts_with("fs-verity digest check failed"));
}

TEST_CASE("a signature verifies with its key, for Ed25519 and ECDSA P-256") {
  for (const auto type : {KeyType::ed25519, KeyType::p256}) {
    auto key = generate_key(type);
    REQUIRE(key.has_value());
    const Manifest m = sample();
    auto sig = sign_manifest(key->get(), m);
    REQUIRE(sig.has_value());
    CHECK(sig->algorithm == (type == KeyType::ed25519 ? "ed25519" : "ecdsa-p256-sha256"));
    auto parsed = parse_signature(serialize_signature(*sig));
    REQUIRE(parsed.has_value());
    auto pub_pem = public_key_pem(key->get());
    REQUIRE(pub_pem.has_value());
    auto pub = parse_public_key_pem(*pub_pem);
    REQUIRE(pub.has_value());
    CHECK(*key_id(pub->get()) == sig->key_id);
    CHECK(verify_manifest(m, *parsed, pub->get()).has_value());

    // Any changed value of the manifest breaks it.
    Manifest other = m;
    other.version = "1.2.1";
    auto changed = verify_manifest(other, *parsed, pub->get());
    REQUIRE_FALSE(changed.has_value());
    CHECK(changed.error().code == Errc::refused);
    CHECK(changed.error().message.find("signature check failed") != std::string::npos);
  }
}

TEST_CASE("a flipped bit in the signature, or a signature by another key, is refused") {
  auto key = generate_key(KeyType::ed25519);
  auto other = generate_key(KeyType::ed25519);
  REQUIRE(key.has_value());
  REQUIRE(other.has_value());
  const Manifest m = sample();
  auto sig = sign_manifest(key->get(), m);
  REQUIRE(sig.has_value());

  Signature flipped = *sig;
  flipped.signature_hex[10] = flipped.signature_hex[10] == '0' ? '1' : '0';
  auto bad = verify_manifest(m, flipped, key->get());
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().code == Errc::refused);

  auto foreign = verify_manifest(m, *sig, other->get());
  REQUIRE_FALSE(foreign.has_value());
  CHECK(foreign.error().code == Errc::refused);
  CHECK(foreign.error().message.find("signed by key " + sig->key_id) != std::string::npos);

  // Another key's signature claiming this key's id still fails the math.
  auto forged = sign_manifest(other->get(), m);
  REQUIRE(forged.has_value());
  forged->key_id = sig->key_id;
  CHECK_FALSE(verify_manifest(m, *forged, key->get()).has_value());
}

TEST_CASE("signature files with bad fields are refused") {
  CHECK_FALSE(parse_signature("{}").has_value());
  CHECK_FALSE(parse_signature(R"({"format":"cairn.module.signature.v1","algorithm":"rsa","key_id":"sha256:)" +
                              std::string(64, 'a') + R"(","signature":"00"})")
                  .has_value());
  CHECK_FALSE(parse_signature(R"({"format":"cairn.module.signature.v1","algorithm":"ed25519","key_id":"abc","signature":"00"})")
                  .has_value());
  CHECK_FALSE(parse_signature(std::string(kMaxSignatureBytes + 1, ' ')).has_value());
}

TEST_CASE("a private key readable by others is refused") {
  test::TempDir dir;
  auto key = generate_key(KeyType::ed25519);
  REQUIRE(key.has_value());
  auto pem = private_key_pem(key->get());
  REQUIRE(pem.has_value());
  const auto path = dir.path() / "k.pem";
  REQUIRE(write_file_atomic(path, *pem, 0644).has_value());
  auto loose = load_private_key(path);
  REQUIRE_FALSE(loose.has_value());
  CHECK(loose.error().code == Errc::config);
  CHECK(loose.error().hint.find("chmod 600") != std::string::npos);
  ::chmod(path.c_str(), 0600);
  CHECK(load_private_key(path).has_value());
}
