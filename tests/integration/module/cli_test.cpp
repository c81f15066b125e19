// cairn-module end to end: keygen, reproducible pack, sign, verify (and its refusals),
// inspect, digest against fsverity-utils, push to docker-registry read back by skopeo; policy
// sign with its expiry (h-polexpiry).
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <chrono>
#include <fstream>

#include "common/fs.hpp"
#include "common/json.hpp"
#include "common/module/policy.hpp"
#include "common/module/signature.hpp"
#include "tests/integration/module/registry_fixture.hpp"
#include "tests/support/skip.hpp"

using namespace cairn;
namespace fs = std::filesystem;

namespace {

std::string tool() {
  const char* p = std::getenv("CAIRN_MODULE");
  return p != nullptr ? p : "";
}

test::RunResult cm(const fs::path& dir, std::vector<std::string> args) {
  args.insert(args.begin(), tool());
  return test::run_capture(args, dir, std::chrono::seconds(120));
}

void write(const fs::path& p, const std::string& text, fs::perms perms = fs::perms(0644)) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
  fs::permissions(p, perms);
}

// The same tree, its entries created in two different orders (and at different times).
void make_tree(const fs::path& root, bool reversed) {
  std::vector<std::pair<std::string, std::string>> files = {
      {"usr/bin/hello", "#!/bin/sh\necho hello\n"}, {"usr/share/hello/a.txt", "a"},
      {"usr/share/hello/b.txt", std::string(10000, 'b')}, {"usr/lib/hello/z", "z"}};
  if (reversed) std::reverse(files.begin(), files.end());
  for (const auto& [path, text] : files) write(root / path, text, path == "usr/bin/hello" ? fs::perms(0755) : fs::perms(0644));
  fs::create_directory_symlink("hello", root / "usr/share/hello-link");
}

std::string bytes_of(const fs::path& p) {
  auto r = read_file(p, 64 << 20);
  return r ? *r : std::string();
}

void flip_byte(const fs::path& p, std::size_t offset) {
  std::string b = bytes_of(p);
  REQUIRE(offset < b.size());
  b[offset] = static_cast<char>(b[offset] ^ 0x01);
  std::ofstream(p, std::ios::binary | std::ios::trunc) << b;
}

struct Packed {
  fs::path image, manifest, sig, key, pub;
};

// keygen + pack + sign in dir.
Packed pack_and_sign(const fs::path& dir) {
  make_tree(dir / "tree", false);
  REQUIRE(cm(dir, {"keygen", (dir / "k").string()}).exit_code == 0);
  auto pack = cm(dir, {"pack", (dir / "tree").string(), "--name", "hello", "--version", "1.0", "--priority", "20",
                       "--depends", "base", "--out", (dir / "out/hello").string()});
  REQUIRE_MESSAGE(pack.exit_code == 0, pack.err);
  auto sign = cm(dir, {"sign", "--key", (dir / "k.key").string(), (dir / "out/hello.manifest.json").string()});
  REQUIRE_MESSAGE(sign.exit_code == 0, sign.err);
  return {dir / "out/hello.erofs", dir / "out/hello.manifest.json", dir / "out/hello.sig", dir / "k.key", dir / "k.pub"};
}

}  // namespace

TEST_CASE("keygen writes a 0600 private key and refuses to overwrite it") {
  if (tool().empty()) CAIRN_SKIP("CAIRN_MODULE is not set (run through meson)");
  test::TempDir dir;
  for (const std::string alg : {"ed25519", "ecdsa-p256"}) {
    auto r = cm(dir.path(), {"keygen", (dir.path() / alg).string(), "--algorithm", alg, "--json"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    auto j = parse_json(r.out, "keygen output");
    REQUIRE(j.has_value());
    CHECK((*j)["details"]["key_id"].get<std::string>().starts_with("sha256:"));
    struct stat st {};
    REQUIRE(::stat((dir.path() / (alg + ".key")).c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(bytes_of(dir.path() / (alg + ".pub")).find("BEGIN PUBLIC KEY") != std::string::npos);
  }
  auto again = cm(dir.path(), {"keygen", (dir.path() / "ed25519").string()});
  CHECK(again.exit_code == 64);
  CHECK(again.err.find("refusing to overwrite") != std::string::npos);
}

TEST_CASE("pack is reproducible and the image is a systemd-sysext image whose digest fsverity-utils agrees with") {
  if (tool().empty()) CAIRN_SKIP("CAIRN_MODULE is not set (run through meson)");
  if (test::which("mkfs.erofs").empty()) CAIRN_SKIP("mkfs.erofs (erofs-utils) is not installed; run tools/install-deps");
  test::TempDir dir;
  make_tree(dir.path() / "a", false);
  make_tree(dir.path() / "b", true);
  auto pack = [&](const std::string& tree, const std::string& out) {
    auto r = cm(dir.path(), {"pack", (dir.path() / tree).string(), "--name", "hello", "--version", "1.0", "--priority",
                             "20", "--out", (dir.path() / out).string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  };
  pack("a", "one");
  pack("a", "two");
  pack("b", "three");
  const std::string one = bytes_of(dir.path() / "one.erofs");
  REQUIRE_FALSE(one.empty());
  CHECK(one == bytes_of(dir.path() / "two.erofs"));
  CHECK(one == bytes_of(dir.path() / "three.erofs"));
  CHECK(bytes_of(dir.path() / "one.manifest.json") == bytes_of(dir.path() / "three.manifest.json"));
  CHECK_FALSE(fs::exists(dir.path() / "a/usr/lib/extension-release.d"));  // the source tree is untouched

  const std::string fsck = test::which("fsck.erofs");
  if (!fsck.empty()) {
    auto x = test::run_capture({fsck, "--extract=" + (dir.path() / "x").string(), (dir.path() / "one.erofs").string()}, dir.path());
    REQUIRE_MESSAGE(x.exit_code == 0, x.err);
    CHECK(bytes_of(dir.path() / "x/usr/lib/extension-release.d/extension-release.hello") == "ID=_any\n");
    CHECK(bytes_of(dir.path() / "x/usr/share/hello/b.txt") == std::string(10000, 'b'));
  }
  const std::string fsverity = test::which("fsverity");
  if (!fsverity.empty()) {
    auto theirs = test::run_capture({fsverity, "digest", (dir.path() / "one.erofs").string()}, dir.path());
    auto ours = cm(dir.path(), {"digest", (dir.path() / "one.erofs").string()});
    REQUIRE(theirs.exit_code == 0);
    REQUIRE(ours.exit_code == 0);
    CHECK(ours.out == theirs.out);
  }
}

TEST_CASE("pack --compress lz4hc is reproducible, smaller on a compressible tree, and reads back the same files") {
  if (tool().empty()) CAIRN_SKIP("CAIRN_MODULE is not set (run through meson)");
  if (test::which("mkfs.erofs").empty()) CAIRN_SKIP("mkfs.erofs (erofs-utils) is not installed; run tools/install-deps");
  test::TempDir dir;
  make_tree(dir.path() / "a", false);
  make_tree(dir.path() / "b", true);
  // 1 MiB of text, as binaries and libraries of a base are: compressible, unlike random bytes.
  std::string text;
  for (int i = 0; text.size() < (1 << 20); ++i) text += "line " + std::to_string(i % 977) + " of a compressible file\n";
  write(dir.path() / "a/usr/share/hello/big.txt", text);
  write(dir.path() / "b/usr/share/hello/big.txt", text);
  auto pack = [&](const std::string& tree, const std::string& out, const std::string& compress) {
    auto r = cm(dir.path(), {"pack", (dir.path() / tree).string(), "--name", "hello", "--version", "1.0", "--priority",
                             "20", "--compress", compress, "--out", (dir.path() / out).string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  };
  pack("a", "plain", "none");
  pack("a", "one", "lz4hc");
  pack("b", "two", "lz4hc");
  const std::string one = bytes_of(dir.path() / "one.erofs");
  REQUIRE_FALSE(one.empty());
  CHECK(one == bytes_of(dir.path() / "two.erofs"));
  CHECK(one.size() * 2 < bytes_of(dir.path() / "plain.erofs").size());
  CHECK(bytes_of(dir.path() / "one.manifest.json") != bytes_of(dir.path() / "plain.manifest.json"));  // its own digests

  auto bad = cm(dir.path(), {"pack", (dir.path() / "a").string(), "--name", "hello", "--version", "1.0", "--priority",
                             "20", "--compress", "zip", "--out", (dir.path() / "bad").string()});
  CHECK(bad.exit_code == 64);
  CHECK_FALSE(fs::exists(dir.path() / "bad.erofs"));

  const std::string fsck = test::which("fsck.erofs");
  if (!fsck.empty()) {
    auto x = test::run_capture({fsck, "--extract=" + (dir.path() / "x").string(), (dir.path() / "one.erofs").string()}, dir.path());
    REQUIRE_MESSAGE(x.exit_code == 0, x.err);
    CHECK(bytes_of(dir.path() / "x/usr/share/hello/big.txt") == text);
    CHECK(bytes_of(dir.path() / "x/usr/share/hello/b.txt") == std::string(10000, 'b'));
  }
}

TEST_CASE("verify accepts a signed module and names the check that fails for each kind of damage") {
  if (tool().empty()) CAIRN_SKIP("CAIRN_MODULE is not set (run through meson)");
  if (test::which("mkfs.erofs").empty()) CAIRN_SKIP("mkfs.erofs (erofs-utils) is not installed; run tools/install-deps");
  test::TempDir dir;
  const Packed p = pack_and_sign(dir.path());
  auto verify = [&](const fs::path& image, const fs::path& manifest, const fs::path& sig, const fs::path& key) {
    return cm(dir.path(), {"verify", "--key", key.string(), image.string(), manifest.string(), sig.string()});
  };
  auto ok = verify(p.image, p.manifest, p.sig, p.pub);
  REQUIRE_MESSAGE(ok.exit_code == 0, ok.err);
  CHECK(ok.out.find("verified hello@1.0") != std::string::npos);

  auto inspect = cm(dir.path(), {"inspect", "--json", p.manifest.string(), p.sig.string()});
  REQUIRE(inspect.exit_code == 0);
  auto j = parse_json(inspect.out, "inspect output");
  REQUIRE(j.has_value());
  CHECK((*j)["details"]["files"][0]["manifest"]["dependencies"] == Json::array({"base"}));
  CHECK((*j)["details"]["files"][1]["kind"] == "signature");

  SUBCASE("one flipped bit in the image") {
    fs::copy_file(p.image, dir.path() / "bad.erofs");
    flip_byte(dir.path() / "bad.erofs", 1500);
    auto r = verify(dir.path() / "bad.erofs", p.manifest, p.sig, p.pub);
    CHECK(r.exit_code == 65);
    CHECK(r.err.find("sha256 check failed") != std::string::npos);
  }
  SUBCASE("a changed value in the manifest") {
    std::string text = bytes_of(p.manifest);
    const auto pos = text.find("\"priority\":20");
    REQUIRE(pos != std::string::npos);
    text.replace(pos, 13, "\"priority\":21");
    write(dir.path() / "bad.manifest.json", text);
    auto r = verify(p.image, dir.path() / "bad.manifest.json", p.sig, p.pub);
    CHECK(r.exit_code == 77);
    CHECK(r.err.find("signature check failed") != std::string::npos);
  }
  SUBCASE("one flipped bit in the signature") {
    std::string text = bytes_of(p.sig);
    const auto pos = text.find("\"signature\": \"") + 20;
    text[pos] = text[pos] == 'a' ? 'b' : 'a';
    write(dir.path() / "bad.sig", text);
    auto r = verify(p.image, p.manifest, dir.path() / "bad.sig", p.pub);
    CHECK(r.exit_code == 77);
    CHECK(r.err.find("signature check failed") != std::string::npos);
  }
  SUBCASE("a signature by another key") {
    REQUIRE(cm(dir.path(), {"keygen", (dir.path() / "other").string()}).exit_code == 0);
    auto r = verify(p.image, p.manifest, p.sig, dir.path() / "other.pub");
    CHECK(r.exit_code == 77);
    CHECK(r.err.find("signed by key") != std::string::npos);
  }
  SUBCASE("a manifest claiming an absurd size") {
    std::string text = bytes_of(p.manifest);
    const auto pos = text.find("\"size\":");
    REQUIRE(pos != std::string::npos);
    text.insert(pos + 7, "99999999999999");
    write(dir.path() / "bad.manifest.json", text);
    auto r = verify(p.image, dir.path() / "bad.manifest.json", p.sig, p.pub);
    CHECK(r.exit_code == 65);
    CHECK(r.err.find("absurd") != std::string::npos);
  }
  SUBCASE("a truncated image") {
    std::string b = bytes_of(p.image);
    write(dir.path() / "short.erofs", b.substr(0, b.size() - 1));
    auto r = verify(dir.path() / "short.erofs", p.manifest, p.sig, p.pub);
    CHECK(r.exit_code == 65);
    CHECK(r.err.find("size check failed") != std::string::npos);
  }
}

// h-polexpiry
TEST_CASE("policy sign --expires puts the expiry in the signed text; a past, malformed or in-file expiry is refused") {
  if (tool().empty()) CAIRN_SKIP("CAIRN_MODULE is not set (run through meson)");
  using namespace std::chrono;
  test::TempDir dir;
  REQUIRE(cm(dir.path(), {"keygen", (dir.path() / "policy").string()}).exit_code == 0);
  REQUIRE(cm(dir.path(), {"keygen", (dir.path() / "web").string()}).exit_code == 0);
  const auto file = dir.path() / "policy.json";
  write(file, R"({"version": 3, "trust": {"web-*": ["web.pub"]}})");
  const auto signed_file = dir.path() / "policy.signed.json";
  const auto sign = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"policy", "sign", file.string(), "--key", (dir.path() / "policy.key").string(), "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    return cm(dir.path(), args);
  };
  const auto details = [](const test::RunResult& r) {
    auto j = parse_json(r.out, "policy output");
    REQUIRE_MESSAGE(j, r.out << r.err);
    return (*j)["details"];
  };
  // The signed text itself, as control and the nodes read it.
  const auto signed_policy = [&]() {
    auto p = module::parse_signed_policy(bytes_of(signed_file));
    REQUIRE(p);
    auto policy = module::parse_policy(p->policy_text);
    REQUIRE(policy);
    return *policy;
  };

  const auto before = floor<seconds>(system_clock::now());
  auto r = sign({"--expires", "30d"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err << r.out);
  const auto after = floor<seconds>(system_clock::now());
  auto p = signed_policy();
  REQUIRE(p.expires);
  CHECK(*p.expires >= before + days(30));
  CHECK(*p.expires <= after + days(30));
  CHECK(p.version == 3);
  CHECK(details(r)["expires"] == module::format_policy_expiry(*p.expires));
  auto verified = cm(dir.path(), {"policy", "verify", signed_file.string(), "--key", (dir.path() / "policy.pub").string(), "--json"});
  REQUIRE_MESSAGE(verified.exit_code == 0, verified.err);
  CHECK(details(verified)["expires"] == module::format_policy_expiry(*p.expires));

  r = sign({"--expires", "12h", "--version", "4"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err << r.out);
  p = signed_policy();
  CHECK(p.version == 4);
  CHECK(*p.expires >= before + hours(12));
  CHECK(*p.expires <= floor<seconds>(system_clock::now()) + hours(12));
  r = sign({"--expires", "2099-01-31T00:00:00Z"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err << r.out);
  CHECK(module::format_policy_expiry(*signed_policy().expires) == "2099-01-31T00:00:00Z");
  r = sign({});  // none: as before, and the output says what that means
  REQUIRE(r.exit_code == 0);
  CHECK_FALSE(signed_policy().expires);
  CHECK(details(r)["expires"].is_null());
  CHECK(bytes_of(signed_file).find("expires") == std::string::npos);

  struct Refusal {
    std::vector<std::string> args;
    const char* message;
  };
  const Refusal refusals[] = {
      {{"--expires", "2020-01-31T00:00:00Z"}, "is not after now"},
      {{"--expires", "0d"}, "not between 1d and 3660d"},
      {{"--expires", "9999h"}, ""},  // within the cap: accepted (checked below)
      {{"--expires", "100000d"}, "not between 1d and 3660d"},
      {{"--expires", "30"}, "neither a duration (30d, 12h) nor a time"},
      {{"--expires", "2099-01-31T00:00:00+01:00"}, "not UTC"},
      {{"--expires", "2099-02-30T00:00:00Z"}, "no such date"},
      {{"--expires", "30d", "--version", "0"}, "--version 0"},
  };
  for (const auto& c : refusals) {
    CAPTURE(c.args[1]);
    write(signed_file, "untouched");
    r = sign(c.args);
    if (std::string(c.message).empty()) {
      CHECK_MESSAGE(r.exit_code == 0, r.out);
      continue;
    }
    CHECK(r.exit_code == 64);
    CHECK_MESSAGE(r.out.find(c.message) != std::string::npos, r.out);
    CHECK(bytes_of(signed_file) == "untouched");
  }

  // The policy file may not carry its own: the expiry belongs to each signing.
  write(file, R"({"version": 3, "expires": "2099-01-31T00:00:00Z", "trust": {"web-*": ["web.pub"]}})");
  r = sign({"--expires", "30d"});
  CHECK(r.exit_code == 65);
  CHECK_MESSAGE(r.out.find("is set by the signing, not the policy file") != std::string::npos, r.out);

  // verify says what a node would: a policy past its expiry is refused, naming it.
  auto key = module::load_private_key(dir.path() / "policy.key");
  REQUIRE(key);
  module::ModulePolicy old;
  old.version = 2;
  old.expires = module::parse_policy_expiry("2020-01-31T00:00:00Z").value();
  auto expired = module::sign_policy(key->get(), module::policy_text(old));
  REQUIRE(expired);
  write(signed_file, module::serialize_signed_policy(*expired));
  auto refused = cm(dir.path(), {"policy", "verify", signed_file.string(), "--key", (dir.path() / "policy.pub").string()});
  CHECK(refused.exit_code == 77);
  CHECK_MESSAGE(refused.err.find("verifies but expired at 2020-01-31T00:00:00Z") != std::string::npos, refused.err);
}

TEST_CASE("push writes an OCI artifact that skopeo reads and copies whole, and pull brings it back verified") {
  if (tool().empty()) CAIRN_SKIP("CAIRN_MODULE is not set (run through meson)");
  if (test::which("mkfs.erofs").empty()) CAIRN_SKIP("mkfs.erofs (erofs-utils) is not installed; run tools/install-deps");
  const std::string skopeo = test::which("skopeo");
  if (skopeo.empty()) CAIRN_SKIP("skopeo is not installed; run tools/install-deps");
  test::RegistryProcess reg;
  if (!reg.error().empty()) CAIRN_SKIP(reg.error());
  test::TempDir dir;
  const Packed p = pack_and_sign(dir.path());
  const std::string ref = reg.host() + "/cairn/hello:1.0";
  auto push = cm(dir.path(), {"push", ref, "--plain-http", "--image", p.image.string(), "--manifest",
                              p.manifest.string(), "--signature", p.sig.string(), "--json"});
  REQUIRE_MESSAGE(push.exit_code == 0, std::string(push.out + push.err));
  auto pushed = parse_json(push.out, "push output");
  REQUIRE(pushed.has_value());
  const std::string digest = (*pushed)["details"]["manifest_digest"].get<std::string>();

  auto raw = test::run_capture({skopeo, "inspect", "--tls-verify=false", "--raw", "docker://" + ref}, dir.path());
  REQUIRE_MESSAGE(raw.exit_code == 0, raw.err);
  auto manifest = parse_json(raw.out, "skopeo inspect --raw");
  REQUIRE(manifest.has_value());
  CHECK((*manifest)["artifactType"] == "application/vnd.cairn.module.v1");
  CHECK((*manifest)["config"]["mediaType"] == "application/vnd.cairn.module.config.v1+json");
  CHECK((*manifest)["layers"][0]["mediaType"] == "application/vnd.cairn.module.image.v1.erofs");

  // The signature through the referrers tag fallback, as other OCI 1.1 tools look for it.
  const std::string tag = "sha256-" + digest.substr(7);
  auto index = test::run_capture({skopeo, "inspect", "--tls-verify=false", "--raw", "docker://" + reg.host() + "/cairn/hello:" + tag}, dir.path());
  REQUIRE_MESSAGE(index.exit_code == 0, index.err);
  CHECK(index.out.find("application/vnd.cairn.module.signature.v1") != std::string::npos);

  const fs::path oci_dir = dir.path() / "oci";
  auto copy = test::run_capture({skopeo, "copy", "--src-tls-verify=false", "docker://" + ref, "oci:" + oci_dir.string()},
                                dir.path(), std::chrono::seconds(120));
  REQUIRE_MESSAGE(copy.exit_code == 0, copy.err);
  CHECK(fs::exists(oci_dir / "index.json"));
  const std::string image_digest = (*manifest)["layers"][0]["digest"].get<std::string>();
  CHECK(bytes_of(oci_dir / "blobs/sha256" / image_digest.substr(7)) == bytes_of(p.image));
  CHECK(bytes_of(oci_dir / "blobs/sha256" / digest.substr(7)) == raw.out);

  auto pull = cm(dir.path(), {"pull", ref, "--plain-http", "--out", (dir.path() / "pulled/hello").string()});
  REQUIRE_MESSAGE(pull.exit_code == 0, pull.err);
  auto verify = cm(dir.path(), {"verify", "--key", p.pub.string(), (dir.path() / "pulled/hello.erofs").string(),
                                (dir.path() / "pulled/hello.manifest.json").string(),
                                (dir.path() / "pulled/hello.sig").string()});
  CHECK_MESSAGE(verify.exit_code == 0, verify.err);

  auto nothing = cm(dir.path(), {"pull", reg.host() + "/cairn/hello:2.0", "--plain-http", "--out", (dir.path() / "none").string()});
  CHECK(nothing.exit_code == 69);
}
