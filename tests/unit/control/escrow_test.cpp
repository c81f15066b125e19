// The escrow of /persist keys (issue 15): one key per node, made on the first call, stored
// encrypted under the state dir's escrow.key and bound to the node id.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <map>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "control/service/escrow.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::control;

namespace {

// The Store's two escrow methods, in memory, with put_if_absent's "the stored one wins".
class MemoryEscrowStore final : public EscrowKeyStore {
 public:
  Result<std::string> put_if_absent(std::string_view node_id, std::string_view sealed) override {
    ++puts;
    if (failing) return fail(Errc::io, "disk full");
    auto [it, inserted] = rows.emplace(std::string(node_id), std::string(sealed));
    return it->second;
  }
  Result<std::optional<std::string>> find(std::string_view node_id) override {
    if (failing) return fail(Errc::io, "disk full");
    auto it = rows.find(std::string(node_id));
    if (it == rows.end()) return std::optional<std::string>{};
    return std::optional<std::string>(it->second);
  }
  std::map<std::string, std::string> rows;
  int puts = 0;
  bool failing = false;
};

std::string master() { return std::string(32, '\x11'); }

// RFC 4648 base64, lines of 64 (PEM's), to rebuild a PEM block around changed DER.
std::string base64_encode(std::string_view data) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (std::size_t i = 0; i < data.size(); i += 3) {
    const auto b = [&](std::size_t k) -> unsigned { return k < data.size() ? static_cast<unsigned char>(data[k]) : 0u; };
    const unsigned n = (b(i) << 16) | (b(i + 1) << 8) | b(i + 2);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < data.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += i + 2 < data.size() ? kAlphabet[n & 63] : '=';
  }
  std::string lines;
  for (std::size_t i = 0; i < out.size(); i += 64) lines += out.substr(i, 64) + "\n";
  return lines;
}

}  // namespace

TEST_CASE("a node gets the same escrow key on every call, created on the first") {
  MemoryEscrowStore store;
  EscrowKeys escrow(store, master());
  auto first = escrow.key_for("node-a");
  REQUIRE(first.has_value());
  CHECK((*first)["node_id"] == "node-a");
  const auto key = (*first)["key"].get<std::string>();
  CHECK(key.size() == 64);
  auto second = escrow.key_for("node-a");
  REQUIRE(second.has_value());
  CHECK((*second)["key"] == key);
  CHECK(store.puts == 1);

  auto other = escrow.key_for("node-b");
  REQUIRE(other.has_value());
  CHECK((*other)["key"] != key);
}

TEST_CASE("the key is stored encrypted, bound to its node, and readable only with escrow.key") {
  MemoryEscrowStore store;
  EscrowKeys escrow(store, master());
  auto answer = escrow.key_for("node-a");
  REQUIRE(answer.has_value());
  const auto key_hex = (*answer)["key"].get<std::string>();
  const auto& row = store.rows.at("node-a");
  CHECK(row.starts_with("-----BEGIN CMS-----"));
  CHECK(row.find(key_hex) == std::string::npos);

  // The row copied to another node's id does not decrypt: an error, not that node's key.
  store.rows["node-b"] = row;
  auto stolen = escrow.key_for("node-b");
  REQUIRE_FALSE(stolen.has_value());
  CHECK(stolen.error().http_status == 500);
  CHECK(stolen.error().body.message.find("another node") != std::string::npos);

  // Another master key cannot read it either.
  EscrowKeys wrong(store, std::string(32, '\x22'));
  CHECK_FALSE(wrong.key_for("node-a").has_value());
}

TEST_CASE("a sealed key opens with its master key and node id, and round-trips any 32 bytes") {
  std::string key(32, '\0');
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<char>(i * 7 + 1);
  key[5] = '\n';  // the content separator inside the key does not confuse the binding
  auto sealed = seal_escrow_key(master(), "2f1e4c3a-0000-4000-8000-000000000001", key);
  REQUIRE(sealed.has_value());
  CHECK(sealed->size() < 2048);
  auto opened = open_escrow_key(master(), "2f1e4c3a-0000-4000-8000-000000000001", *sealed);
  REQUIRE(opened.has_value());
  CHECK(*opened == key);
  // Two seals of the same key differ (fresh content key and nonce each time).
  auto again = seal_escrow_key(master(), "2f1e4c3a-0000-4000-8000-000000000001", key);
  REQUIRE(again.has_value());
  CHECK(*again != *sealed);
}

TEST_CASE("a wrong master key is refused, naming the master key the row needs") {
  auto sealed = seal_escrow_key(master(), "node-a", std::string(32, 'k'));
  REQUIRE(sealed.has_value());
  const std::string other(32, '\x22');
  auto opened = open_escrow_key(other, "node-a", *sealed);
  REQUIRE_FALSE(opened.has_value());
  CHECK(opened.error().code == Errc::data);
  CHECK(opened.error().message.find(escrow_master_key_id(master())) != std::string::npos);
  CHECK(opened.error().message.find(escrow_master_key_id(other)) != std::string::npos);
  CHECK(escrow_master_key_id(master()) != escrow_master_key_id(other));
}

TEST_CASE("a tampered envelope never yields a key: wrapped key, nonce, ciphertext and tag are all checked") {
  const std::string key(32, 'k');
  auto sealed = seal_escrow_key(master(), "node-a", key);
  REQUIRE(sealed.has_value());
  const auto begin = sealed->find('\n') + 1;
  const auto end = sealed->find("-----END");
  auto der = base64_decode(std::string_view(*sealed).substr(begin, end - begin));
  REQUIRE(der.has_value());
  // Where the protected fields are in the DER (RFC 5083 / RFC 3565 layout OpenSSL writes):
  // the wrapped content key after id-aes256-wrap, the GCM nonce after aes-256-gcm, then the
  // ciphertext ([0], 39 bytes: "node-a\n" and the key) and the 16-byte tag at the end.
  const std::string wrap_oid("\x06\x09\x60\x86\x48\x01\x65\x03\x04\x01\x2d", 11);
  const std::string gcm_oid("\x06\x09\x60\x86\x48\x01\x65\x03\x04\x01\x2e", 11);
  const auto wrap = der->find(wrap_oid);
  const auto gcm = der->find(gcm_oid);
  REQUIRE(wrap != std::string::npos);
  REQUIRE(gcm != std::string::npos);
  struct Range {
    const char* what;
    std::size_t from, size;
  };
  const Range protected_fields[] = {
      {"wrapped content key", wrap + wrap_oid.size() + 2, 40},
      {"GCM nonce", gcm + gcm_oid.size() + 4, 12},
      {"ciphertext", der->size() - 18 - 39, 39},
      {"tag", der->size() - 16, 16},
  };
  const auto open_flipped = [&](std::size_t pos, unsigned char bit) {
    std::string changed = *der;
    changed[pos] = static_cast<char>(changed[pos] ^ bit);
    return open_escrow_key(master(), "node-a", "-----BEGIN CMS-----\n" + base64_encode(changed) + "-----END CMS-----\n");
  };
  for (const auto& field : protected_fields) {
    for (std::size_t pos = field.from; pos < field.from + field.size; ++pos) {
      auto opened = open_flipped(pos, 0x01);
      if (opened.has_value()) {
        FAIL_CHECK("a bit flip in the " << field.what << " (byte " << pos << ") still opened");
      } else {
        CHECK(opened.error().code == Errc::data);
      }
    }
  }
  // Anywhere else, a flip may hit a field nothing reads (the version number): it may open,
  // but only to the same key, never to another.
  for (std::size_t pos = 0; pos < der->size(); ++pos) {
    auto opened = open_flipped(pos, 0x80);
    if (opened.has_value()) CHECK_MESSAGE(*opened == key, "byte " << pos);
  }
  CHECK_FALSE(open_escrow_key(master(), "node-a", "garbage").has_value());
  CHECK_FALSE(open_escrow_key(master(), "node-a", std::string(20000, 'A')).has_value());
}

TEST_CASE("a row sealed for one node does not open as another's (node id swapped)") {
  auto sealed = seal_escrow_key(master(), "node-a", std::string(32, 'k'));
  REQUIRE(sealed.has_value());
  auto opened = open_escrow_key(master(), "node-b", *sealed);
  REQUIRE_FALSE(opened.has_value());
  CHECK(opened.error().code == Errc::data);
  CHECK(opened.error().message.find("node node-b") != std::string::npos);
  // A prefix of the right id is not the id.
  CHECK_FALSE(open_escrow_key(master(), "node-", *sealed).has_value());
}

TEST_CASE("an unauthenticated EnvelopedData with the right KEK and content is refused") {
  // `openssl cms -encrypt -secretkey` makes an EnvelopedData (AES-CBC, no tag) with a KEK
  // recipient: it would unwrap with escrow.key and decrypt, but proves nothing about who made it.
  test::TempDir dir;
  const auto plain = dir.path() / "content";
  REQUIRE(write_file_atomic(plain, "node-a\n" + std::string(32, 'k'), 0600).has_value());
  const std::string id = escrow_master_key_id(master());
  if (!std::filesystem::exists("/usr/bin/openssl")) CAIRN_SKIP("no /usr/bin/openssl");
  auto r = test::run_capture({"/usr/bin/openssl", "cms", "-encrypt", "-binary", "-aes256", "-in", plain.string(), "-outform",
                              "PEM", "-secretkey", hex_encode(reinterpret_cast<const unsigned char*>(master().data()), 32),
                              "-secretkeyid", hex_encode(reinterpret_cast<const unsigned char*>(id.data()), id.size())},
                             dir.path());
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  REQUIRE(r.out.starts_with("-----BEGIN CMS-----"));
  auto opened = open_escrow_key(master(), "node-a", r.out);
  REQUIRE_FALSE(opened.has_value());
  CHECK(opened.error().code == Errc::data);
  CHECK(opened.error().message.find("not AuthEnvelopedData") != std::string::npos);
}

TEST_CASE("rows of the retired v1 format are refused with what to do, never read") {
  MemoryEscrowStore store;
  store.rows["node-a"] = "v1:000102030405060708090a0b:00112233";
  EscrowKeys escrow(store, master());
  auto answer = escrow.key_for("node-a");
  REQUIRE_FALSE(answer.has_value());
  CHECK(answer.error().http_status == 500);
  CHECK(answer.error().body.message.find("retired v1 format") != std::string::npos);
  auto opened = open_escrow_key(master(), "node-a", store.rows["node-a"]);
  REQUIRE_FALSE(opened.has_value());
  CHECK(opened.error().hint.find("escrow_keys") != std::string::npos);
}

TEST_CASE("two first calls racing: the stored key wins for both") {
  MemoryEscrowStore store;
  EscrowKeys escrow(store, master());
  auto sealed = seal_escrow_key(master(), "node-a", std::string(32, 'k'));
  REQUIRE(sealed.has_value());
  // The other replica's put lands between our find and our put: emulate by pre-filling after find.
  class Racing final : public EscrowKeyStore {
   public:
    Racing(MemoryEscrowStore& inner, std::string theirs) : inner_(inner), theirs_(std::move(theirs)) {}
    Result<std::string> put_if_absent(std::string_view node_id, std::string_view sealed) override {
      (void)inner_.put_if_absent(node_id, theirs_);
      return inner_.put_if_absent(node_id, sealed);
    }
    Result<std::optional<std::string>> find(std::string_view node_id) override { return inner_.find(node_id); }
   private:
    MemoryEscrowStore& inner_;
    std::string theirs_;
  } racing(store, *sealed);
  EscrowKeys raced(racing, master());
  auto answer = raced.key_for("node-a");
  REQUIRE(answer.has_value());
  CHECK((*answer)["key"] == hex_encode(reinterpret_cast<const unsigned char*>(std::string(32, 'k').data()), 32));
}

TEST_CASE("a store failure is a 500 naming the node") {
  MemoryEscrowStore store;
  store.failing = true;
  EscrowKeys escrow(store, master());
  auto answer = escrow.key_for("node-a");
  REQUIRE_FALSE(answer.has_value());
  CHECK(answer.error().http_status == 500);
  CHECK(answer.error().body.message.find("node-a") != std::string::npos);
}

TEST_CASE("escrow.key is made once, 0600, and read back the same") {
  test::TempDir dir;
  const auto file = dir.path() / "escrow.key";
  auto made = load_or_create_escrow_master_key(file);
  REQUIRE(made.has_value());
  CHECK(made->size() == 32);
  struct stat st{};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto again = load_or_create_escrow_master_key(file);
  REQUIRE(again.has_value());
  CHECK(*again == *made);

  REQUIRE(write_file_atomic(file, "not hex\n", 0600).has_value());
  auto bad = load_or_create_escrow_master_key(file);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().code == Errc::config);
}
